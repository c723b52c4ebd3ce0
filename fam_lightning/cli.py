"""The fam-lightning command line (``fam-train`` / ``python train.py``): LightningCLI over every family.

``fam-train {fit,validate,test,predict} --config <yaml>``: the YAML names the model and datamodule with
``class_path`` / ``init_args``; any value can be overridden on the command line, e.g.
``--data.root /data/CUB_200_2011 --trainer.devices 4 --trainer.strategy ddp``.
"""

from __future__ import annotations

import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

import fam_lightning.callbacks  # noqa: F401  (makes callbacks.* resolvable in configs)
import fam_lightning.datamodules  # noqa: F401
import fam_lightning.models  # noqa: F401
from fam_lightning.callbacks.guards import InterruptCheckpoint
from fam_lightning.checkpoint_io import CheckpointWriteError
from fam_lightning.console import quiet_lightning
from fam_lightning.importers.safe_load import published_cause
from fam_lightning.loading import DATAMODULE_KEY, MODEL_KEY, import_class, read_checkpoint
from fam_lightning.runs import (
    RESUMABLE,
    claim_version,
    continue_run,
    latest_resumable,
    logging_step,
    tensorboard_logger,
)

# Our training samplers (EpochSeededSampler, ClassBalancedBatchSampler) skip the batches a mid-epoch
# checkpoint already ran, so Lightning's "dataloader is not resumable" warning does not apply to them.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


class RunSetupError(ValueError):
    """A command line that cannot run as given (a checkpoint of another family, a conflicting option ...).

    :func:`main` prints its one sentence as the last line and exits 2, without a traceback.
    """


class FAMLightningCLI(LightningCLI):
    """LightningCLI that checks ``--ckpt_path``, gives every run its own folder and says where things went.

    - ``--ckpt_path`` is read like the ``fam-*`` tools read checkpoints (empty, truncated, Git LFS pointer,
      plain ``state_dict`` files: one sentence each); a checkpoint of another model or data family than the
      config builds, or an explicit ``--model.*`` option that contradicts the checkpoint's value, is an error.
    - ``--ckpt_path last`` (fit) resumes the newest ``interrupted.ckpt`` / ``last.ckpt`` of this experiment
      (``<save_dir>/<name>/version_*``), or says where it looked.
    - Each run claims its ``version_N`` folder atomically; a fit resumed from one of the experiment's
      checkpoints continues in that checkpoint's folder (:mod:`fam_lightning.runs`).
    - Every run also gets :class:`fam_lightning.callbacks.guards.InterruptCheckpoint`: SIGTERM
      or Ctrl+C during ``fit`` writes ``interrupted.ckpt`` and :func:`main` exits
      with 128 + the signal number, printing the resume command last.
    """

    def parse_arguments(self, parser: Any, args: Any) -> None:
        self._command_line = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        super().parse_arguments(parser, args)

    # -- --ckpt_path ------------------------------------------------------------------------
    def _parse_ckpt_path(self) -> None:
        self._checkpoint: dict[str, Any] | None = None
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:
            return
        if ckpt_path == "last" and subcommand == "fit":
            ckpt_path = config.ckpt_path = str(self._find_last(config))
        elif ckpt_path in ("last", "best", "hpc", "registry") or str(ckpt_path).startswith("registry:"):
            return  # Lightning's own names, resolved by the trainer
        try:
            checkpoint = read_checkpoint(ckpt_path)
        except (FileNotFoundError, ValueError) as err:
            raise RunSetupError(f"--ckpt_path: {err}") from None
        if "pytorch-lightning_version" not in checkpoint:
            raise RunSetupError(
                f"--ckpt_path: {ckpt_path} is not a Lightning checkpoint (no 'pytorch-lightning_version'); "
                "train.py takes checkpoints written by fam-train / train.py. A published NPID / MoCo file goes "
                "through --model.init_args.import_checkpoint or fam-convert"
            )
        if config.get("weights_only", "absent") is None:
            config.weights_only = True  # the trainer re-reads the file: weights-only, as read_checkpoint did
        self._check_family(checkpoint, config, ckpt_path)
        self._check_explicit_options(checkpoint, config, ckpt_path)
        self._checkpoint = checkpoint
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise

    def _find_last(self, config: Any) -> Path:
        root = _logger_root(config)
        if root is None:
            raise RunSetupError("--ckpt_path last needs a TensorBoardLogger (trainer.logger) to know where runs live")
        found = latest_resumable(_RootOnly(root))
        if found is None:
            raise RunSetupError(
                f"--ckpt_path last: no {' or '.join(RESUMABLE)} under {os.path.relpath(root)}/version_*/checkpoints/; "
                "start the run without --ckpt_path, or give a checkpoint file"
            )
        rank_zero_info(f"--ckpt_path last: resuming from {os.path.relpath(found)}")
        return found

    @staticmethod
    def _check_family(checkpoint: dict[str, Any], config: Any, ckpt_path: str) -> None:
        for key, section, what in ((MODEL_KEY, "model", "model"), (DATAMODULE_KEY, "data", "data module")):
            stored = (checkpoint.get(key) or {}).get("_class_path")
            wanted = _class_path_of(config.get(section))
            if not stored or not wanted:
                continue
            try:
                same = import_class(stored) is import_class(wanted)
            except ValueError:
                same = stored == wanted
            if not same:
                raise RunSetupError(
                    f"--ckpt_path {ckpt_path} holds a {stored.rsplit('.', 1)[-1]} ({what} {stored}), but this config "
                    f"builds {wanted}: use the config the checkpoint was trained with (the run's config.yaml is in "
                    "its version folder)"
                )

    def _check_explicit_options(self, checkpoint: dict[str, Any], config: Any, ckpt_path: str) -> None:
        stored = checkpoint.get(MODEL_KEY) or {}
        init_args = _namespace_dict((config.get("model") or {}).get("init_args") or {})
        for flag, key in _explicit_model_options(self._command_line):
            if key not in stored or key not in init_args:
                continue
            given, trained = _plain(init_args[key]), _plain(stored[key])
            if given != trained:
                raise RunSetupError(
                    f"{flag} {given!r} conflicts with --ckpt_path {ckpt_path}, which was trained with "
                    f"{key}={trained!r}; the checkpoint's value would be used, so drop {flag} (or start a new run "
                    "without --ckpt_path)"
                )

    # -- trainer, run folder, signals ---------------------------------------------------------
    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        self.interrupt_guard = InterruptCheckpoint()
        self.run_folder = self._claim_run_folder(config.get("logger"))
        return super()._instantiate_trainer(config, [*callbacks, self.interrupt_guard])

    def _claim_run_folder(self, loggers: Any) -> str | None:
        logger = tensorboard_logger(loggers)
        if logger is None:
            return None
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        continued = None
        if subcommand == "fit" and ckpt_path and self._checkpoint is not None:
            continued = continue_run(logger, ckpt_path, logging_step(self._checkpoint))
        if continued is None:
            claim_version(logger)
        else:  # its checkpoints folder is expected to hold the run's earlier checkpoints
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        folder = os.path.relpath(logger.log_dir)
        how = f"continuing {folder}" if continued is not None else f"run folder {folder}"
        rank_zero_info(f"fam-lightning: {how}; view with: {tensorboard_command(logger)}")
        return folder

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except (SystemExit, KeyboardInterrupt):
            if self.interrupt_guard.signal_number is None:
                raise
            self._exit_interrupted()

    def _exit_interrupted(self) -> None:
        """Exit 128 + signal; rank zero's last line is the command that resumes the run."""
        guard = self.interrupt_guard
        if self.trainer.is_global_zero:
            if guard.saved_path is not None:
                command = resume_command(sys.argv, os.path.relpath(guard.saved_path))
                message = f"Interrupted by signal {guard.signal_number}; checkpoint saved. Resume with:\n  {command}"
            elif guard.stage in (None, "fit"):
                message = f"Interrupted by signal {guard.signal_number} before training started; nothing to resume"
            else:
                message = (f"Interrupted by signal {guard.signal_number} during {guard.stage}; nothing was saved "
                           f"(a {guard.stage} run has no state to resume: run the same command again)")
            print(message, file=sys.stderr, flush=True)
        sys.exit(128 + guard.signal_number)

    def after_fit(self) -> None:
        self._summary("fit")

    def after_validate(self) -> None:
        self._summary("validate")

    def after_test(self) -> None:
        self._summary("test")

    def _summary(self, stage: str) -> None:
        trainer = self.trainer
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if "/" in k}
        lines = [f"\n== fam-lightning {stage} summary =="]
        for name in sorted(metrics):
            if name.startswith(("val/", "test/")):
                lines.append(f"  {name:<36s} {metrics[name]:8.3f}")
        if stage == "fit":
            best = getattr(trainer.checkpoint_callback, "best_model_path", "")
            last = getattr(trainer.checkpoint_callback, "last_model_path", "")
            if best:
                lines.append(f"  best checkpoint: {os.path.relpath(best)}")
            if last:
                lines.append(f"  last checkpoint: {os.path.relpath(last)}")
        logger = tensorboard_logger(trainer.loggers)
        if logger is not None and logger.log_dir:
            lines.append(f"  TensorBoard logs: {os.path.relpath(logger.log_dir)}")
            lines.append(f"  view them with:   {tensorboard_command(logger)}")
            lines.append("  energy vs its baselines on one chart: the Custom Scalars tab (http://localhost:6006/#custom_scalars)")
        rank_zero_info("\n".join(lines))


def tensorboard_command(logger: Any) -> str:
    """``tensorboard --logdir <experiment folder> --samples_per_plugin images=0``.

    The experiment folder (not the version folder) names each run ``version_N`` in TensorBoard's run list;
    ``images=0`` keeps every probe grid (TensorBoard's default keeps 10 per tag, sampled, so the step-0
    grid of a long run would be dropped).
    """
    return shlex.join(["tensorboard", "--logdir", os.path.relpath(logger.root_dir), "--samples_per_plugin", "images=0"])


class _RootOnly:
    """Stands in for a logger where only ``root_dir`` is needed (before the logger exists)."""

    def __init__(self, root: Path) -> None:
        self.root_dir = str(root)


def _logger_root(config: Any) -> Path | None:
    """``<save_dir>/<name>`` of the config's TensorBoardLogger (before it is instantiated), else None."""
    logger = (config.get("trainer") or {}).get("logger")
    if isinstance(logger, (list, tuple)):
        logger = next((lg for lg in logger if "TensorBoard" in str(_class_path_of(lg))), None)
    if logger is True or logger is None:
        root = (config.get("trainer") or {}).get("default_root_dir") or os.getcwd()
        return Path(root) / "lightning_logs" if logger is True else None
    if "TensorBoard" not in str(_class_path_of(logger)):
        return None
    args = _namespace_dict(_get(logger, "init_args") or {})
    name = args.get("name", "lightning_logs")
    return Path(args.get("save_dir") or ".") / (name or "")


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if hasattr(obj, "get") else getattr(obj, key, None)


def _class_path_of(section: Any) -> str | None:
    if section is None or isinstance(section, (bool, str)):
        return section if isinstance(section, str) else None
    return _get(section, "class_path")


def _namespace_dict(value: Any) -> dict[str, Any]:
    return value.as_dict() if hasattr(value, "as_dict") else dict(value)


def _plain(value: Any) -> Any:
    """Config values as plain python (Namespaces as dicts, tuples as lists), for comparison."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _explicit_model_options(command_line: list[str]) -> list[tuple[str, str]]:
    """``(flag, init argument)`` for every ``--model.[init_args.]<arg>`` given on the command line."""
    options = []
    for token in command_line:
        flag = token.split("=", 1)[0]
        if not flag.startswith("--model."):
            continue
        parts = flag[len("--model."):].split(".")
        if parts[0] == "init_args":
            parts = parts[1:]
        if parts and parts[0] not in ("class_path", "dict_kwargs"):
            options.append((flag, parts[0]))
    return options


def resume_command(argv: list[str], ckpt_path: str) -> str:
    """The command line ``argv`` (``sys.argv``) again, with ``--ckpt_path ckpt_path`` instead of any earlier one."""
    args: list[str] = []
    skip = False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        if arg == "--ckpt_path":
            skip = True
            continue
        if arg.startswith("--ckpt_path="):
            continue
        args.append(arg)
    program = ["python", argv[0]] if argv[0].endswith(".py") else [os.path.basename(argv[0])]
    return shlex.join([*program, *args, "--ckpt_path", ckpt_path])


def main(argv: list[str] | None = None) -> None:
    """``fam-train`` / ``python train.py``; ``argv`` (without the program name) runs it in-process."""
    quiet_lightning()
    no_abbreviations = {"allow_abbrev": False}
    try:
        FAMLightningCLI(
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"allow_abbrev": False, **{name: dict(no_abbreviations) for name in SUBCOMMANDS}},
            args=argv,
        )
    except (RunSetupError, CheckpointWriteError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2 if isinstance(err, RunSetupError) else 1)
    except ValueError as err:  # a published / converted checkpoint that does not fit (jsonargparse wraps it)
        published = published_cause(err)
        if published is None:
            raise
        print(f"error: {published}", file=sys.stderr, flush=True)
        sys.exit(2)


SUBCOMMANDS = ("fit", "validate", "test", "predict")
