"""Template every explainer follows: a protocol model in, (B, H, W) maps in [0, 1] out.

The target everywhere is the decision score, the (weighted) mean similarity of
each image's embedding to its references
(:func:`fam_lightning.similarity.mean_similarity`); reference-free methods
(``needs_references = False``) explain the embedding itself instead.

Two kinds of explainers:

- from feature maps (FAM, the gradient CAMs, Ablation-CAM, Eigen-CAM): the
  target layer is the last conv feature map, so the map needs only ``A`` and
  the head; :meth:`Explainer.from_feature_maps` works on feature maps a
  validation step already computed. Gradients are taken w.r.t. ``A`` through
  ``embed`` only: identical to backpropagating from the image, without the
  backbone's backward pass.
- from images (``needs_images = True``: Score-CAM, Score-FAM): they perturb
  the input and run the backbone again; call ``explainer(images, references,
  feature_maps=...)``.
"""

from __future__ import annotations

from abc import ABC
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from fam_lightning.protocol import SimilarityModel, check_similarity_model
from fam_lightning.similarity import mean_similarity


class Passes(NamedTuple):
    """Network passes one explanation costs per image.

    ``backbone``: full forward passes (the decision's own pass counts as 1);
    ``head``: extra forward passes of ``embed`` only (pool + head) on
    perturbed feature maps; ``backward``: backward passes, through ``embed``
    only (gradients w.r.t. the feature maps).
    """

    backbone: int
    head: int = 0
    backward: int = 0

    def __str__(self) -> str:
        parts = [f"{self.backbone} fwd"]
        if self.head:
            parts.append(f"{self.head} head fwd")
        if self.backward:
            parts.append(f"{self.backward} head bwd")
        return " + ".join(parts)


class Explainer(ABC):
    """Explains similarity decisions of a :class:`SimilarityModel`.

    Subclasses override :meth:`from_feature_maps` (maps from ``A``) or, when
    they perturb the input, :meth:`explain` with ``needs_images = True``.
    ``__call__`` runs the backbone once (no gradients) unless the caller
    passes the feature maps it already has.

    Attributes:
        name: short registry name (``EXPLAINERS``).
        needs_references: False for reference-free methods, which explain the
            embedding itself and ignore ``references``.
        needs_images: True when the maps need the input images.
    """

    name: str = "explainer"
    needs_references: bool = True
    needs_images: bool = False

    def __init__(self, model: SimilarityModel) -> None:
        self.model = check_similarity_model(model)

    def __call__(
        self,
        images: Tensor,
        references: Tensor | None = None,
        reference_weights: Tensor | None = None,
        feature_maps: Tensor | None = None,
    ) -> Tensor:
        """Maps for a batch.

        Args:
            images: (B, 3, H, W) normalised images, on the model's device.
            references: (B, N, D) or (B, D) decision-space embeddings each image
                is compared with; may be None for reference-free explainers.
            reference_weights: optional (B, N) weights over the references.
            feature_maps: optional (B, C, h, w) ``forward_features(images)``
                the caller already has (skips one backbone pass).

        Returns:
            (B, H, W) maps in [0, 1] on the images' device.
        """
        if images.dim() != 4:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        if references is None and self.needs_references:
            raise ValueError(f"explainer {self.name!r} needs references (the decision's reference embeddings)")
        if feature_maps is None:
            with torch.no_grad():
                feature_maps = self.model.forward_features(images)
        return self.explain(images, feature_maps, references, reference_weights)

    def explain(
        self,
        images: Tensor,
        feature_maps: Tensor,
        references: Tensor | None,
        reference_weights: Tensor | None = None,
    ) -> Tensor:
        """(B, 3, H, W) images and their (B, C, h, w) feature maps -> (B, H, W) maps."""
        return self.from_feature_maps(feature_maps, references, reference_weights, size=tuple(images.shape[-2:]))

    def from_feature_maps(
        self,
        feature_maps: Tensor,
        references: Tensor | None,
        reference_weights: Tensor | None = None,
        size: tuple[int, int] | None = None,
    ) -> Tensor:
        """(B, C, h, w) feature maps + references -> (B, H, W) maps in [0, 1]."""
        raise TypeError(
            f"explainer {self.name!r} perturbs the input images: call "
            "explainer(images, references, reference_weights, feature_maps=...) instead"
        )

    def forward_passes_per_image(self, channels: int) -> Passes:
        """Passes per explained image for a backbone with ``channels`` feature maps."""
        return Passes(backbone=1)


def minmax(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Per-sample min-max to [0, 1]; a constant sample becomes zeros, never NaN."""
    low = x.amin(dim=dims, keepdim=True)
    span = x.amax(dim=dims, keepdim=True) - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (x - low) / safe, torch.zeros_like(x))


def normalize_saliency(saliency: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """(B, h, w) raw saliency -> ReLU, min-max, bilinear upsample, min-max: (B, H, W) in [0, 1].

    The same post-processing as FAM (``fam.feature_activation_map``): constancy
    is decided at feature resolution, so a constant map becomes zeros.
    """
    saliency = minmax(saliency.relu(), dims=(1, 2))
    if size is not None and tuple(size) != tuple(saliency.shape[1:]):
        saliency = F.interpolate(
            saliency.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False
        ).squeeze(1)
        saliency = minmax(saliency, dims=(1, 2))
    return saliency


def weighted_saliency(feature_maps: Tensor, weights: Tensor, size: tuple[int, int] | None = None) -> Tensor:
    """CAM: ``relu(sum_k w_k A_k)`` from (B, C, h, w) maps and raw (B, C) weights, normalised."""
    if weights.shape != feature_maps.shape[:2]:
        raise ValueError(
            f"weights must be (B, C) = {tuple(feature_maps.shape[:2])}, got {tuple(weights.shape)}"
        )
    return normalize_saliency(torch.einsum("bc,bchw->bhw", weights.to(feature_maps.dtype), feature_maps), size)


def at_least_float32(tensor: Tensor) -> Tensor:
    """Half-precision tensors to float32 (min-max and scores need more mantissa bits)."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def decision_scores(
    model: SimilarityModel, embeddings: Tensor, references: Tensor | None, reference_weights: Tensor | None = None
) -> Tensor:
    """(B, D) embeddings -> (B,) (weighted) mean similarity to their references: the target."""
    if references is None:
        raise ValueError("the decision score needs references (the decision's reference embeddings)")
    refs = references.to(embeddings.dtype)
    weights = None if reference_weights is None else reference_weights.to(embeddings.dtype)
    return mean_similarity(embeddings, refs, model.similarity, weights)
