"""The CLI as a user meets it after the first run: run folders, resume, --ckpt_path checks, disks, flags."""

from __future__ import annotations

import multiprocessing
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from fam_lightning.checkpoint_io import AtomicCheckpointIO
from fam_lightning.runs import claim_version
from tests.helpers.cli import REPO, TINY_DATA_ARGS, run_cli
from tests.helpers.events import read_events

QUICKSTART = ["--config", str(REPO / "configs" / "quickstart.yaml"), *TINY_DATA_ARGS,
              "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


class StopAt(L.Callback):
    """Asks the run to stop (as SIGTERM does) before training batch ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if (trainer.current_epoch, idx) == (self.epoch, self.batch):
            trainer._signal_connector.received_sigterm = True


def _cli(argv: list[str], cwd: Path) -> tuple[int, str]:
    """``main(argv)`` in-process from ``cwd``: (exit code, everything it printed and logged)."""
    proc = run_cli(argv, cwd, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def _last_line(text: str) -> str:
    return [line for line in text.strip().splitlines() if line.strip()][-1]


@pytest.mark.slow
def test_a_resumed_fit_continues_in_its_run_folder_and_last_finds_it(
    tmp_path: Path, data_dir: Path
) -> None:
    data = ["--data.data_dir", str(data_dir), "--trainer.max_epochs", "3"]
    stop = ["--trainer.callbacks+=tests.e2e.test_run_folders.StopAt", "--trainer.callbacks.epoch=1",
            "--trainer.callbacks.batch=1"]
    code, printed = _cli(["fit", *QUICKSTART, *data, *stop], tmp_path)
    run = tmp_path / "logs" / "quickstart" / "version_0"
    assert code == 143, printed[-3000:]
    assert "run folder logs/quickstart/version_0" in printed
    assert (run / "checkpoints" / "interrupted.ckpt").is_file()
    stale = run / "checkpoints" / ".last.ckpt.k1ll3d.tmp"  # what a write killed half-way leaves
    stale.write_bytes(b"\0" * 100)

    code, printed = _cli(["fit", *QUICKSTART, *data, "--ckpt_path", "last"], tmp_path)
    assert code == 0, printed[-3000:]
    assert "resuming from logs/quickstart/version_0/checkpoints/interrupted.ckpt" in printed
    assert "continuing logs/quickstart/version_0" in printed
    assert "tensorboard --logdir logs/quickstart --samples_per_plugin images=0" in printed
    assert _last_line(printed).endswith("(http://localhost:6006/#custom_scalars)")
    assert "weights_only` was not set" not in printed  # the resume reads the checkpoint weights-only
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]  # no second folder
    assert not stale.exists()

    scalars, images = read_events(run)
    validations = [step for step, _ in scalars["val/acc"]]
    assert len(validations) == 3 and validations == sorted(set(validations))  # one run, no repeated steps
    assert images["val/fam_probe"] == [0, *validations]  # step 0 first, then on the scalars' steps
    train_steps = [step for step, _ in scalars["train/loss_step"]] if "train/loss_step" in scalars else []
    assert train_steps == sorted(set(train_steps))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run))
    accumulator.Reload()
    assert "custom_scalars__config__" in accumulator.Tags()["tensors"]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 2
    mode = stat.S_IMODE(os.stat(run / "checkpoints" / "last.ckpt").st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_ckpt_path_last_without_a_run_says_where_it_looked(tmp_path: Path) -> None:
    code, printed = _cli(["fit", *QUICKSTART, "--ckpt_path", "last"], tmp_path)
    assert code == 2
    assert _last_line(printed) == (
        "error: --ckpt_path last: no interrupted.ckpt or last.ckpt under logs/quickstart/version_*/checkpoints/; "
        "start the run without --ckpt_path, or give a checkpoint file"
    )


def _lightning_checkpoint(path: Path, model: str, data: str, **hparams: Any) -> Path:
    torch.save({"pytorch-lightning_version": L.__version__, "state_dict": {}, "epoch": 0, "global_step": 1,
                "hyper_parameters": {"_class_path": model, **hparams},
                "datamodule_hyper_parameters": {"_class_path": data}}, path)
    return path


@pytest.mark.parametrize("case", ["empty", "lfs", "state_dict", "other_family", "conflicting_option", "missing"])
def test_bad_ckpt_path_is_one_sentence_and_exit_2(tmp_path: Path, case: str) -> None:
    path, extra = tmp_path / "model.ckpt", []
    if case == "empty":
        path.write_bytes(b"")
        expected = "the file is empty"
    elif case == "lfs":
        path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
        expected = "Git LFS pointer"
    elif case == "state_dict":
        torch.save(torch.nn.Linear(2, 2).state_dict(), path)
        expected = "is not a Lightning checkpoint"
    elif case == "other_family":
        _lightning_checkpoint(path, "fam_lightning.models.MemoryBankModel",
                              "fam_lightning.datamodules.ContrastiveDataModule", method="npid")
        expected = "holds a MemoryBankModel"
    elif case == "conflicting_option":
        _lightning_checkpoint(path, "fam_lightning.models.FewShotClassifier",
                              "fam_lightning.datamodules.FewShotDataModule", backbone="conv4")
        extra = ["--model.init_args.backbone", "resnet12"]
        expected = "--model.init_args.backbone 'resnet12' conflicts with --ckpt_path"
    else:
        path = tmp_path / "nowhere.ckpt"
        expected = "checkpoint not found"
    code, printed = _cli(["validate", *QUICKSTART, *extra, "--ckpt_path", str(path)], tmp_path)
    assert code == 2, printed[-2000:]
    last = _last_line(printed)
    assert last.startswith("error: ") and expected in last and str(path.name) in last
    assert "Traceback" not in printed


def test_abbreviated_options_are_refused(tmp_path: Path) -> None:
    code, printed = _cli(["fit", *QUICKSTART, "--trainer.max_epoch", "1"], tmp_path)
    assert code == 2
    assert "unrecognized arguments: --trainer.max_epoch 1" in printed
    assert not (tmp_path / "logs").exists()


def _claim(root: str, barrier: Any, out: Any) -> None:
    barrier.wait()
    logger = TensorBoardLogger(save_dir=root, name="runs")
    out.put(claim_version(logger))


@pytest.mark.slow
def test_runs_started_together_claim_different_folders(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")  # four real processes racing; fork spares each an import
    barrier, out = context.Barrier(4), context.Queue()
    workers = [context.Process(target=_claim, args=(str(tmp_path), barrier, out)) for _ in range(4)]
    for worker in workers:
        worker.start()
    claimed = sorted(out.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    assert claimed == [0, 1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [f"version_{v}" for v in range(4)]


@pytest.mark.slow  # a process of its own: the file size limit must not reach pytest's
def test_a_full_disk_names_the_checkpoint_the_cause_and_the_free_space(tmp_path: Path) -> None:
    script = (
        "import resource, signal, torch\n"
        "from fam_lightning.checkpoint_io import AtomicCheckpointIO\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        f"AtomicCheckpointIO().save_checkpoint({{'w': torch.zeros(1_000_000)}}, {str(tmp_path / 'last.ckpt')!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    last = _last_line(proc.stderr)
    assert "CheckpointWriteError" in last and str(tmp_path / "last.ckpt") in last
    assert "File too large" in last and "MiB free in" in last
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_checkpoints_get_the_umask_mode(tmp_path: Path) -> None:
    umask = os.umask(0o027)
    try:
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(3)}, tmp_path / "a.ckpt")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "a.ckpt").st_mode) == 0o640


def test_a_signal_during_validate_says_there_is_nothing_to_resume(capsys: pytest.CaptureFixture[str]) -> None:
    from types import SimpleNamespace

    from fam_lightning.cli import FAMLightningCLI

    guard = SimpleNamespace(saved_path=None, signal_number=15, stage="validate")
    cli = SimpleNamespace(interrupt_guard=guard, trainer=SimpleNamespace(is_global_zero=True))
    with pytest.raises(SystemExit) as stop:
        FAMLightningCLI._exit_interrupted(cli)  # type: ignore[arg-type]
    assert stop.value.code == 143
    message = capsys.readouterr().err.strip()
    assert "during validate; nothing was saved" in message and "Resume" not in message
