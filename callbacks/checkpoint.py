"""``ModelCheckpoint`` whose ``last.ckpt`` is always the latest end of epoch.

Lightning 2.6 writes ``last.ckpt`` (``save_last=True``) only at a step where it also wrote a
monitored top-k checkpoint: after a plateau ``last.ckpt`` is an old epoch, and a resume from it
after a hard kill silently loses the epochs since. This subclass writes it at every checkpointing
point (each validation end of a fit, or each training epoch end when validation does not run),
whatever the monitored metric did. Everything else is Lightning's ``ModelCheckpoint``.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint as _LightningModelCheckpoint


class ModelCheckpoint(_LightningModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` with ``save_last`` meaning "the latest epoch", always."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._ensure_last(trainer)

    def _ensure_last(self, trainer: L.Trainer) -> None:
        if not self.save_last or trainer.state.fn != "fit" or trainer.sanity_checking or trainer.fast_dev_run:
            return
        if self._last_global_step_saved == trainer.global_step and self._last_checkpoint_saved == self.last_model_path:
            return  # Lightning already wrote last.ckpt at this step
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
