"""A callback for subprocess tests: announces the first finished training step through a file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


class StepMarker(Callback):
    """Touch ``path`` after the first training batch; then wait ``pause`` seconds per batch (room for a signal)."""

    def __init__(self, path: str, pause: float = 0.5) -> None:
        self.path = Path(path)
        self.pause = pause

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.path.touch()
        time.sleep(self.pause)
