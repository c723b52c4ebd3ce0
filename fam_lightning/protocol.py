"""The seam between models and explainers (DESIGN.md, "The seam every model exposes").

Callbacks and explainers talk only to this protocol, never to model internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor, nn


@runtime_checkable
class SimilarityModel(Protocol):
    """A classifier that decides by similarity between embeddings, with no FC classifier.

    Attributes:
        pooling: "gap" | "gmp" | "lse": how ``embed`` pools the feature maps.
        projection: None, or the head mapping pooled (B, C) to (B, D): an
            ``nn.Linear`` or any module (FAM then linearises it).
        similarity: "cosine" | "euclidean" | "dot": how embeddings are compared.
    """

    pooling: str
    projection: nn.Module | None
    similarity: str

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) images -> (B, C, h, w) last conv feature maps."""
        ...

    def embed(self, feature_maps: Tensor) -> Tensor:
        """(B, C, h, w) feature maps -> (B, D) decision embedding (pool, then head)."""
        ...


def check_similarity_model(model: object) -> SimilarityModel:
    """Return ``model`` if it implements the protocol, else raise a TypeError naming what is missing."""
    missing = [
        name
        for name in ("forward_features", "embed", "pooling", "projection", "similarity")
        if not hasattr(model, name)
    ]
    if missing:
        raise TypeError(
            f"{type(model).__name__} does not implement the SimilarityModel protocol "
            f"(fam_lightning.protocol): missing {', '.join(missing)}"
        )
    return model  # type: ignore[return-value]


@dataclass
class ExplanationInputs:
    """What a model hands the FAM callback for one batch of decisions.

    Each model family fills it in its validation/test step from tensors it has
    already computed, so explaining costs no second backbone pass.

    Attributes:
        images: (B, 3, H, W) normalised images whose decisions are explained.
        feature_maps: (B, C, h, w) their last conv feature maps.
        embeddings: (B, D) their decision embeddings.
        references: (B, N, D) embeddings each image was compared with for its
            decision (support images of the predicted class, kNN neighbours, ...).
        correct: (B,) bool, whether the decision was right (metrics use these).
        boxes: (B, 4) or a list of (n_i, 4) ground-truth boxes, or None.
        reference_weights: optional (B, N) weights of the references.
        reference_images: optional (B, 3, H, W) one reference image per decision,
            or (B, R, 3, H, W) several (e.g. kNN neighbours), shown beside the map.
        reference_feature_maps: optional (B, C, h, w) feature maps of those
            reference images: the callback then also shows the symmetric map
            (the reference explained against the query), as for retrieval.
        labels: optional (B,) true class of each decision (shown in the probe grid).
        predictions: optional (B,) class the model decided on (shown in the probe grid).
    """

    images: Tensor
    feature_maps: Tensor
    embeddings: Tensor
    references: Tensor
    correct: Tensor
    boxes: Tensor | list[Tensor] | None = None
    reference_weights: Tensor | None = None
    reference_images: Tensor | None = None
    reference_feature_maps: Tensor | None = None
    labels: Tensor | None = None
    predictions: Tensor | None = None


@runtime_checkable
class ExplainsDecisions(Protocol):
    """A model family that can say, for any batch, which decisions to explain and against what."""

    def explanation_inputs(self, batch: dict) -> ExplanationInputs:
        """Run the model on ``batch`` and return its decisions for explanation."""
        ...
