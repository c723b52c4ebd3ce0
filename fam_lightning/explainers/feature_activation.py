"""FAM: channel weights from each channel's contribution to the similarity score."""

from __future__ import annotations

import torch
from torch import Tensor

from fam_lightning import fam
from fam_lightning.explainers.base import Explainer, at_least_float32
from fam_lightning.protocol import SimilarityModel


class FAMExplainer(Explainer):
    """Feature Activation Map (Liao et al., eq. 11-18) for any protocol model.

    Args:
        model: implements :class:`SimilarityModel`.
        lse_r: sharpness used when the model pools with LSE (models may expose
            their own as ``lse_r``).
    """

    name = "fam"

    def __init__(self, model: SimilarityModel, lse_r: float = 10.0) -> None:
        super().__init__(model)
        self.lse_r = float(getattr(model, "lse_r", lse_r))

    def weights(
        self, feature_maps: Tensor, references: Tensor, reference_weights: Tensor | None = None
    ) -> Tensor:
        """(B, C) channel contribution weights; they sum to the mean similarity."""
        pooled = fam.pool(feature_maps, self.model.pooling, self.lse_r)
        return fam.contribution_weights(
            pooled,
            references,
            similarity=self.model.similarity,
            projection=self.model.projection,
            reference_weights=reference_weights,
        )

    def from_feature_maps(
        self,
        feature_maps: Tensor,
        references: Tensor,
        reference_weights: Tensor | None = None,
        size: tuple[int, int] | None = None,
    ) -> Tensor:
        # Under bf16/fp16 autocast the arithmetic still runs in float32: min-max
        # normalisation and the sum property need more than 8 mantissa bits.
        with torch.autocast(feature_maps.device.type, enabled=False):
            feature_maps, references = at_least_float32(feature_maps.detach()), at_least_float32(references.detach())
            if reference_weights is not None:
                reference_weights = reference_weights.to(feature_maps.dtype)
            weights = self.weights(feature_maps, references, reference_weights)
            return fam.feature_activation_map(feature_maps, weights, size)

