"""Token FAM: the similarity of a GAP model split over positions (patch tokens), as a map.

FAM's eq. 13 combines the channels with min-max normalised weights and keeps
the positive part, ``relu(sum_k alpha_k A_k)``: made for post-ReLU CNN maps.
A transformer's token features are signed (on the few-shot ViT trained by
``configs/fewshot/vit_tiny_synthetic.yaml`` 41 % of the grid values are
positive), and there the weighted sum is often negative at every position:
59 % of that model's FAM maps (82 correct test decisions) are all zeros. With GAP
pooling the similarity decomposes over positions exactly instead
(:func:`fam_lightning.fam.position_contributions`): ``c_ij`` sums to the
same total as FAM's channel weights. The map is its positive part (the
tokens that raise the similarity), min-max normalised and upsampled like
every map.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fam_lightning import fam
from fam_lightning.explainers.base import Explainer, at_least_float32, normalize_saliency


class TokenFAM(Explainer):
    """Positions' (tokens') exact shares of the decision score of a GAP model, as a map."""

    name = "token_fam"

    def contributions(
        self, feature_maps: Tensor, references: Tensor, reference_weights: Tensor | None = None
    ) -> Tensor:
        """(B, h, w) shares of the (weighted) mean similarity; they sum to FAM's channel weights' sum."""
        if self.model.pooling != "gap":
            raise ValueError(
                f"token_fam splits a mean over positions: it needs pooling='gap', the model pools with "
                f"{self.model.pooling!r}"
            )
        return fam.position_contributions(
            feature_maps, references, self.model.similarity, self.model.projection, reference_weights
        )

    def from_feature_maps(
        self,
        feature_maps: Tensor,
        references: Tensor,
        reference_weights: Tensor | None = None,
        size: tuple[int, int] | None = None,
    ) -> Tensor:
        with torch.autocast(feature_maps.device.type, enabled=False):
            maps = at_least_float32(feature_maps.detach())
            refs = at_least_float32(references.detach())
            weights = None if reference_weights is None else reference_weights.to(maps.dtype)
            return normalize_saliency(self.contributions(maps, refs, weights), size)
