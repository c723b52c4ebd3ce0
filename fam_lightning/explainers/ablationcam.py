"""Ablation-CAM (Desai & Ramaswamy, WACV 2020) on the similarity score, batched.

The weight of channel ``k`` is the score drop when ``A_k`` is set to zero:
``w_k = S(A) - S(A with A_k = 0)``. Only ``embed`` (pool + head) reruns, since
the ablated layer is the last feature map. The paper divides by ``S(A)``: a
per-sample positive scale that min-max removes when ``S > 0``, and a sign flip
of the whole map when a similarity is negative, so it is left out. (pytorch-
grad-cam ablates to ``min(A) - 1e7`` when activations can be negative; we
keep the paper's zero.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from fam_lightning.explainers.base import Explainer, Passes, at_least_float32, decision_scores, weighted_saliency
from fam_lightning.protocol import SimilarityModel


class AblationCAM(Explainer):
    """Score drop per ablated channel, ``batch_size`` ablated copies per head pass."""

    name = "ablationcam"

    def __init__(self, model: SimilarityModel, batch_size: int = 1024) -> None:
        super().__init__(model)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size

    def score_drops(self, feature_maps: Tensor, references: Tensor, reference_weights: Tensor | None = None) -> Tensor:
        """(B, C) ``S(A) - S(A without channel k)``."""
        refs = references.unsqueeze(1) if references.dim() == 2 else references  # (B, N, D)
        batch, channels = feature_maps.shape[:2]
        base = decision_scores(self.model, self.model.embed(feature_maps), refs, reference_weights)  # (B,)
        drops = torch.empty(batch * channels, device=feature_maps.device, dtype=base.dtype)
        for start in range(0, batch * channels, self.batch_size):
            flat = torch.arange(start, min(start + self.batch_size, batch * channels), device=feature_maps.device)
            sample, channel = flat // channels, flat % channels
            ablated = feature_maps[sample].clone()  # (n, C, h, w)
            ablated[torch.arange(flat.numel(), device=flat.device), channel] = 0
            weights = None if reference_weights is None else reference_weights[sample]
            scores = decision_scores(self.model, self.model.embed(ablated), refs[sample], weights)
            drops[start : start + flat.numel()] = base[sample] - scores
        return drops.view(batch, channels)

    def from_feature_maps(
        self,
        feature_maps: Tensor,
        references: Tensor,
        reference_weights: Tensor | None = None,
        size: tuple[int, int] | None = None,
    ) -> Tensor:
        with torch.no_grad(), torch.autocast(feature_maps.device.type, enabled=False):
            activations = at_least_float32(feature_maps.detach())
            drops = self.score_drops(activations, at_least_float32(references), reference_weights)
            return weighted_saliency(activations, drops, size)

    def forward_passes_per_image(self, channels: int) -> Passes:
        return Passes(backbone=1, head=1 + channels)
