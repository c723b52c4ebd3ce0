"""Template of the gradient CAMs: channel weights from ``A`` and ``dS/dA``.

``S`` is the explained target per sample: the decision score (mean similarity
to the references) for the CAM baselines, a function of the embedding itself
for Grad-FAM. Gradients are taken w.r.t. the feature maps with
``torch.autograd.grad`` through ``embed`` only (pool + head): the same
gradients as backpropagating from the image, without a backbone backward pass,
and no parameter's ``.grad`` is touched. The graph is built under
``torch.inference_mode(False)`` on a clone, so it also works inside a
Lightning validation loop (which runs under inference mode).
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor

from fam_lightning.explainers.base import Explainer, Passes, at_least_float32, decision_scores, weighted_saliency


class GradientExplainer(Explainer):
    """``map = relu(sum_k w_k A_k)`` with ``w = cam_weights(A, dS/dA)``; subclasses set the weights."""

    def target(self, embeddings: Tensor, references: Tensor | None, reference_weights: Tensor | None) -> Tensor:
        """(B, D) embeddings -> (B,) explained scores; default: the decision score."""
        return decision_scores(self.model, embeddings, references, reference_weights)

    @abstractmethod
    def cam_weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        """(B, C, h, w) activations and gradients -> (B, C) channel weights."""

    def gradients(
        self, feature_maps: Tensor, references: Tensor | None, reference_weights: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(B, C, h, w) feature maps -> (A, dS/dA), both (B, C, h, w), float32 or wider, detached."""
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(feature_maps.device.type, enabled=False):
            # clone(): inference tensors (from a validation step) cannot be saved for backward
            activations = at_least_float32(feature_maps.detach()).clone().requires_grad_(True)
            refs = None if references is None else at_least_float32(references.detach()).clone()
            weights = None if reference_weights is None else reference_weights.detach().clone()
            scores = self.target(self.model.embed(activations), refs, weights)  # (B,)
            (grads,) = torch.autograd.grad(scores.sum(), activations)
        return activations.detach(), grads

    def from_feature_maps(
        self,
        feature_maps: Tensor,
        references: Tensor | None,
        reference_weights: Tensor | None = None,
        size: tuple[int, int] | None = None,
    ) -> Tensor:
        activations, grads = self.gradients(feature_maps, references, reference_weights)
        with torch.autocast(activations.device.type, enabled=False):
            return weighted_saliency(activations, self.cam_weights(activations, grads), size)

    def forward_passes_per_image(self, channels: int) -> Passes:
        return Passes(backbone=1, backward=1)
