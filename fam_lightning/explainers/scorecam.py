"""Score-CAM (Wang et al. 2020) on the similarity score, batched.

Each channel ``A_k`` (B, C, h, w), upsampled to the image and min-max
normalised to a mask ``H_k`` in [0, 1], masks the (normalised) input; the
weight is the decision score of the masked image, ``w = softmax_k S(X * H_k)``
(softmax is shift-invariant, so subtracting the baseline score ``S(X_b)`` of
the paper changes nothing). ``B * C`` masked images run through the model
in chunks of ``batch_size`` under ``no_grad``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from fam_lightning.explainers.base import (
    Explainer,
    Passes,
    at_least_float32,
    decision_scores,
    minmax,
    weighted_saliency,
)
from fam_lightning.protocol import SimilarityModel

# (n, D) embeddings of masked images, (n,) index of the sample each came from -> (n,) scores
Scorer = Callable[[Tensor, Tensor], Tensor]


class ScoreCAM(Explainer):
    """Score-CAM with the decision score (mean similarity to the references) as target.

    Args:
        model: implements :class:`SimilarityModel`.
        batch_size: masked images per forward pass.
        align_corners: mask upsampling; False (the Score-CAM authors' code,
            and how every map here is upsampled) or True (pytorch-grad-cam's
            ``UpsamplingBilinear2d``).
    """

    name = "scorecam"
    needs_images = True

    def __init__(self, model: SimilarityModel, batch_size: int = 64, align_corners: bool = False) -> None:
        super().__init__(model)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.align_corners = align_corners

    def scorer(self, feature_maps: Tensor, references: Tensor | None, reference_weights: Tensor | None) -> Scorer:
        """The target of a masked image: its decision score against its sample's references."""
        refs = references.unsqueeze(1) if references.dim() == 2 else references  # (B, N, D)

        def score(embeddings: Tensor, sample: Tensor) -> Tensor:
            weights = None if reference_weights is None else reference_weights[sample]
            return decision_scores(self.model, embeddings, refs[sample], weights)

        return score

    def channel_scores(self, images: Tensor, feature_maps: Tensor, scorer: Scorer) -> Tensor:
        """(B, C) target scores of the images masked by each of their upsampled channels."""
        batch, channels = feature_maps.shape[:2]
        size = tuple(images.shape[-2:])
        scores = torch.empty(batch * channels, device=images.device, dtype=torch.float32)
        for start in range(0, batch * channels, self.batch_size):
            flat = torch.arange(start, min(start + self.batch_size, batch * channels), device=images.device)
            sample, channel = flat // channels, flat % channels
            masks = F.interpolate(
                feature_maps[sample, channel].unsqueeze(1), size=size, mode="bilinear",
                align_corners=self.align_corners,
            )
            masks = minmax(masks, dims=(1, 2, 3))  # (n, 1, H, W); a constant channel masks everything out
            embeddings = self.model.embed(self.model.forward_features(images[sample] * masks.to(images.dtype)))
            scores[start : start + flat.numel()] = scorer(at_least_float32(embeddings), sample).float()
        return scores.view(batch, channels)

    def explain(
        self,
        images: Tensor,
        feature_maps: Tensor,
        references: Tensor | None,
        reference_weights: Tensor | None = None,
    ) -> Tensor:
        with torch.no_grad():
            activations = at_least_float32(feature_maps.detach())
            scores = self.channel_scores(images, activations, self.scorer(activations, references, reference_weights))
            with torch.autocast(images.device.type, enabled=False):
                return weighted_saliency(activations, torch.softmax(scores, dim=1), tuple(images.shape[-2:]))

    def forward_passes_per_image(self, channels: int) -> Passes:
        return Passes(backbone=1 + channels)
