"""Run folders: each run claims its own ``version_N`` atomically; a resumed fit continues in its run's folder.

Lightning's TensorBoardLogger picks ``max(existing versions) + 1`` by listing the folder, so two runs
started together (a job array, a seed sweep) both take ``version_0`` and mix their checkpoints, event
files and ``config.yaml``. :func:`claim_version` creates the folder with ``os.mkdir`` (which fails if
it exists) and moves on to the next number when another run got there first.

A fit resumed from ``<save_dir>/<name>/version_N/checkpoints/x.ckpt`` writes into ``version_N`` again
(:func:`continue_run`): TensorBoard shows one run, its curves continuing, and the events the
interrupted run logged after the checkpoint's step are purged (``SummaryWriter(purge_step=...)``).
"""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

VERSION = re.compile(r"^version_(\d+)$")
RESUMABLE = ("interrupted.ckpt", "last.ckpt")


def tensorboard_logger(loggers: Any) -> TensorBoardLogger | None:
    """The first TensorBoardLogger of a logger, a list of them, or None."""
    if isinstance(loggers, TensorBoardLogger):
        return loggers
    if isinstance(loggers, (list, tuple)):
        return next((lg for lg in loggers if isinstance(lg, TensorBoardLogger)), None)
    return None


def _versions(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := VERSION.match(p.name)))


def claim_version(logger: TensorBoardLogger) -> int | None:
    """Create ``<root_dir>/version_N`` for the first free N, atomically; set it as the logger's version.

    Only on global rank zero and only when the logger has no version yet; other ranks never write
    there (Lightning broadcasts rank zero's log and checkpoint folders). Returns the version claimed.
    """
    if logger._version is not None or rank_zero_only.rank != 0:
        return None
    root = Path(logger.root_dir)
    root.mkdir(parents=True, exist_ok=True)
    existing = _versions(root)
    version = existing[-1] + 1 if existing else 0
    while True:
        try:
            os.mkdir(root / f"version_{version}")
        except FileExistsError:
            version += 1
            continue
        logger._version = version
        return version


def run_of_checkpoint(logger: TensorBoardLogger, ckpt_path: str | Path) -> int | None:
    """N if ``ckpt_path`` is ``<logger root_dir>/version_N/checkpoints/<file>``, else None."""
    path = Path(ckpt_path).resolve()
    if len(path.parents) < 3 or path.parent.name != "checkpoints":
        return None
    match = VERSION.match(path.parents[1].name)
    if match is None or path.parents[2] != Path(logger.root_dir).resolve():
        return None
    return int(match.group(1))


def continue_run(logger: TensorBoardLogger, ckpt_path: str | Path, step: int) -> int | None:
    """Log into the checkpoint's own run folder, purging its events from ``step`` on; clean stale temp files.

    Returns the version continued, or None when the checkpoint is not one of this logger's runs.
    """
    version = run_of_checkpoint(logger, ckpt_path)
    if version is None or logger._version is not None:
        return None
    logger._version = version
    logger._kwargs["purge_step"] = int(step)
    if rank_zero_only.rank == 0:
        remove_stale_temporaries(Path(ckpt_path).resolve().parent)
    return version


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the ``.<name>.ckpt.<random>.tmp`` files that checkpoint writes killed half-way left in ``folder``."""
    removed = []
    for name in glob.glob(str(folder / ".*.ckpt.*.tmp")):
        Path(name).unlink(missing_ok=True)
        removed.append(Path(name))
    return removed


def latest_resumable(logger: TensorBoardLogger) -> Path | None:
    """The newest ``interrupted.ckpt`` / ``last.ckpt`` over this experiment's ``version_*/checkpoints``."""
    root = Path(logger.root_dir)
    candidates = [
        root / f"version_{v}" / "checkpoints" / name for v in _versions(root) for name in RESUMABLE
    ]
    existing = [p for p in candidates if p.is_file()]
    return max(existing, key=lambda p: (p.stat().st_mtime_ns, p.name == RESUMABLE[0])) if existing else None


def logging_step(checkpoint: dict[str, Any]) -> int:
    """The first logger step a fit resumed from ``checkpoint`` writes (Lightning's ``_batches_that_stepped``)."""
    loops = checkpoint.get("loops") or {}
    state = (loops.get("fit_loop") or {}).get("epoch_loop.state_dict") or {}
    return int(state.get("_batches_that_stepped", checkpoint.get("global_step", 0)))


def logging_step_of_trainer(trainer: Any) -> int:
    """The step Lightning gives what is logged now: the validation scalars of a fit, or the global step.

    During a fit Lightning logs with its count of optimizer steps taken before the current batch
    (``_batches_that_stepped``), one behind ``global_step`` at an epoch-end validation: images logged
    with this step sit on the same step as the scalars of the same validation.
    """
    if trainer.state.fn == "fit":
        return int(trainer.fit_loop.epoch_loop._batches_that_stepped)
    return int(trainer.global_step)
