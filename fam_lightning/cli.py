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
from typing import Any

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

import fam_lightning.callbacks  # noqa: F401  (makes callbacks.* resolvable in configs)
import fam_lightning.datamodules  # noqa: F401
import fam_lightning.models  # noqa: F401
from fam_lightning.callbacks.guards import InterruptCheckpoint

# Our training samplers (EpochSeededSampler, ClassBalancedBatchSampler) skip the batches a mid-epoch
# checkpoint already ran, so Lightning's "dataloader is not resumable" warning does not apply to them.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


class FAMLightningCLI(LightningCLI):
    """LightningCLI that tells the user where the logs and checkpoints went.

    Every run also gets :class:`fam_lightning.callbacks.guards.InterruptCheckpoint`: SIGTERM
    or Ctrl+C during ``fit`` writes ``interrupted.ckpt`` and :func:`main` exits
    with 128 + the signal number, printing the resume command last.
    """

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        self.interrupt_guard = InterruptCheckpoint()
        return super()._instantiate_trainer(config, [*callbacks, self.interrupt_guard])

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
            else:
                message = f"Interrupted by signal {guard.signal_number} before training started; nothing to resume"
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
        checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", "") if stage == "fit" else ""
        if checkpoint:
            lines.append(f"  best checkpoint: {checkpoint}")
        if trainer.logger is not None and trainer.logger.log_dir:
            log_dir = os.path.relpath(trainer.logger.log_dir)
            lines.append(f"  TensorBoard logs: {log_dir}")
            lines.append(f"  view them with:   tensorboard --logdir {log_dir}")
        rank_zero_info("\n".join(lines))


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


def main() -> None:
    FAMLightningCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
    )
