"""The training objectives of the memory-bank models: NPID's non-parametric softmax / NCE, MoCo's InfoNCE.

A mixin of :class:`~fam_lightning.models.memory_bank.MemoryBankModel`: it reads the model's
``hparams``, ``bank`` (or NPID's separate ``memory``), ``queue`` and key encoder, and updates them as the
papers do.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fam_lightning import fam
from fam_lightning.memory import gather_from_all_ranks


class ContrastiveObjectives:
    """NPID's and MoCo's losses on one training batch, with their bank / queue / key-encoder updates."""

    def _npid_step(self, batch: dict[str, Any]) -> Tensor:
        memory = self._npid_memory()
        z = self._loss_embedding(self.forward_features(batch["image"]), self._head())  # (B, D), unit rows
        index = batch.get("instance", batch["index"])  # the memory row: the image, or one part of it
        count, negatives = memory.size, self.hparams.nce_negatives
        noise = torch.randint(0, count, (z.shape[0], negatives), device=z.device)
        samples = torch.cat([index.unsqueeze(1), noise], dim=1)  # (B, 1 + K); column 0 positive
        weights = memory.bank[samples]  # (B, 1 + K, D); indexing copies, so the update below is safe
        logits = torch.einsum("bkd,bd->bk", weights, z) / self.hparams.temperature
        if self.hparams.npid_loss == "softmax":
            # the non-parametric softmax over the positive and K sampled entries
            loss = F.cross_entropy(logits, torch.zeros(z.shape[0], dtype=torch.long, device=z.device))
            memory.update(gather_from_all_ranks(index), gather_from_all_ranks(z.detach()))
            return loss
        scores = torch.exp(logits)
        if self.nce_normalizer < 0:  # Z = mean score x N, estimated on the first batch (all ranks)
            mean = gather_from_all_ranks(scores.detach().mean().reshape(1)).mean()
            self.nce_normalizer.fill_(float(mean) * count)
        probs = scores / self.nce_normalizer
        noise_prob = negatives / count  # K x P_n with a uniform noise distribution
        positive = torch.log(probs[:, 0] / (probs[:, 0] + noise_prob))
        negative = torch.log(noise_prob / (probs[:, 1:] + noise_prob)).sum(1)
        loss = -(positive + negative).mean()
        memory.update(gather_from_all_ranks(index), gather_from_all_ranks(z.detach()))
        return loss

    def _npid_memory(self) -> Any:
        """The memory NPID's loss reads and writes: the kNN bank, or the separate one with ``refresh_bank``."""
        return self.bank if self.memory is None else self.memory

    def _head(self) -> Any:
        """The loss's head: the protocol's projection, or the separate one when the kNN reads the backbone."""
        return self.projection if self.projection is not None else self.loss_head

    def _loss_embedding(self, feature_maps: Tensor, head: Any) -> Tensor:
        """Unit (B, D) rows the loss compares: ``loss_pooling``, then the head."""
        return F.normalize(fam.embed(fam.pool(feature_maps, self.loss_pooling), head), dim=1).float()

    def _moco_step(self, batch: dict[str, Any]) -> Tensor:
        q = self._loss_embedding(self.forward_features(batch["view1"]), self._head())  # (B, D)
        with torch.no_grad():
            self._momentum_update()
            k = self._loss_embedding(self.key_backbone.forward_features(batch["view2"]), self.key_projection)
        positive = (q * k).sum(1, keepdim=True)  # (B, 1)
        negative = q @ self.queue.negatives().t()  # (B, K)
        logits = torch.cat([positive, negative], dim=1) / self.hparams.temperature
        loss = F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
        keys = gather_from_all_ranks(k)
        self.queue.enqueue(keys)
        if not self.hparams.get("refresh_bank", False):  # else the bank is recomputed before each evaluation
            self.bank.update(gather_from_all_ranks(batch["index"]), keys)  # the kNN bank: each image's latest key
        return loss

    @torch.no_grad()
    def _momentum_update(self) -> None:
        m = self.hparams.encoder_momentum
        for online, target in ((self.backbone, self.key_backbone), (self._head(), self.key_projection)):
            for p, tp in zip(online.parameters(), target.parameters()):
                tp.mul_(m).add_(p.detach(), alpha=1 - m)
            for b, tb in zip(online.buffers(), target.buffers()):
                tb.copy_(b)
