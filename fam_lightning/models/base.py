"""What every model family shares, written once: the SimilarityModel protocol over backbone -> pool ->
projection, the reliability plumbing (seeded epochs, non-finite guards), and the cosine schedule.

A family subclasses :class:`SimilarityModule`, builds ``backbone`` (with ``forward_features`` and
``out_channels``), sets ``pooling`` / ``projection`` / ``similarity``, and writes its own steps: how it
trains and how it decides. The protocol is in :mod:`fam_lightning.protocol`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from fam_lightning import fam
from fam_lightning.reliability import ReliableTraining

__all__ = ["SimilarityModule"]


class SimilarityModule(ReliableTraining, L.LightningModule):
    """Base of the LightningModules: ``forward_features`` / ``embed`` / ``forward`` and the cosine schedule."""

    lse_r: float = 10.0  # the LSE pooling's sharpness (``pooling="lse"``)
    backbone: nn.Module
    pooling: str
    projection: nn.Module | None
    similarity: str

    # -- the SimilarityModel protocol -------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C, h, w) (NHWC memory format when the model has ``channels_last=True``)."""
        if self.hparams.get("channels_last", False):
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone.forward_features(x)

    def embed(self, feature_maps: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, D): pooled, then the projection head if any (unnormalised; cosine normalises)."""
        return fam.embed(fam.pool(feature_maps, self.pooling, self.lse_r), self.projection)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, D) embeddings."""
        return self.embed(self.forward_features(x))

    # -- optimisation -----------------------------------------------------------------
    def cosine_schedule(self, optimizer: torch.optim.Optimizer, default_epochs: int) -> dict[str, Any]:
        """``optimizer`` with a per-epoch cosine decay to zero over ``trainer.max_epochs``.

        ``default_epochs`` is the horizon outside a Trainer (or one without ``max_epochs``). Resuming with
        another horizon stops with :class:`fam_lightning.reliability.ScheduleHorizonError`.
        """
        epochs = self.trainer.max_epochs if self._trainer and self.trainer.max_epochs else default_epochs
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
