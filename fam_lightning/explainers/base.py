"""Template every explainer follows: a protocol model in, (B, H, W) maps in [0, 1] out."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from fam_lightning.protocol import SimilarityModel, check_similarity_model


class Explainer(ABC):
    """Explains similarity decisions of a :class:`SimilarityModel`.

    Subclasses override :meth:`from_feature_maps`; ``__call__`` runs the
    backbone once (no gradients) and delegates, so a caller that already has
    the feature maps (e.g. from a validation step) skips the forward pass.
    """

    name: str = "explainer"

    def __init__(self, model: SimilarityModel) -> None:
        self.model = check_similarity_model(model)

    def __call__(
        self,
        images: Tensor,
        references: Tensor,
        reference_weights: Tensor | None = None,
    ) -> Tensor:
        """Maps for a batch.

        Args:
            images: (B, 3, H, W) normalised images, on the model's device.
            references: (B, N, D) or (B, D) decision-space embeddings each image
                is compared with.
            reference_weights: optional (B, N) weights over the references.

        Returns:
            (B, H, W) maps in [0, 1] on the images' device.
        """
        if images.dim() != 4:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        with torch.no_grad():
            feature_maps = self.model.forward_features(images)
        return self.from_feature_maps(
            feature_maps, references, reference_weights, size=tuple(images.shape[-2:])
        )

    @abstractmethod
    def from_feature_maps(
        self,
        feature_maps: Tensor,
        references: Tensor,
        reference_weights: Tensor | None = None,
        size: tuple[int, int] | None = None,
    ) -> Tensor:
        """(B, C, h, w) feature maps + references -> (B, H, W) maps in [0, 1]."""
