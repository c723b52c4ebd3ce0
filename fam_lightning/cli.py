"""The fam-lightning command line (``fam-train`` / ``python train.py``): LightningCLI over every family.

``fam-train {fit,validate,test,predict} --config <yaml>``: the YAML names the model and datamodule with
``class_path`` / ``init_args``; any value can be overridden on the command line, e.g.
``--data.root /data/CUB_200_2011 --trainer.devices 4 --trainer.strategy ddp``.
"""

from __future__ import annotations

import os

from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

import callbacks  # noqa: F401  (makes callbacks.* resolvable in configs)
import datamodules  # noqa: F401
import fam_lightning.models  # noqa: F401


class FAMLightningCLI(LightningCLI):
    """LightningCLI that tells the user where the logs and checkpoints went."""

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


def main() -> None:
    FAMLightningCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
    )
