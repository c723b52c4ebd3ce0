"""Grad-FAM (Wu et al., CVPR 2022, paper 001): Grad-CAM of the feature vector itself, no reference.

Paper 001 explains the embedding ``z`` (B, D) rather than a class or a
similarity; our copy of it is the abstract only, so the scalar target is our
choice: ``T = ||z||^2 / 2``. Then ``dT/dA = sum_d z_d dz_d/dA``: every
dimension's gradient weighted by its own value, i.e. Grad-CAM of the dot
self-similarity ``z . sg(z)`` with the (detached) embedding as the reference.
``sum_d z_d`` was rejected: it counts negative dimensions as evidence, and for
a GAP model without a head it gives every channel the same weight ``1 / hw``.
Weights ``w_k = mean_ij dT/dA_k,ij`` as in Grad-CAM; references are ignored.
"""

from __future__ import annotations

from torch import Tensor

from fam_lightning.explainers._gradients import GradientExplainer


class GradFAM(GradientExplainer):
    """Reference-free Grad-FAM: Grad-CAM weights of ``||z||^2 / 2``."""

    name = "grad_fam"
    needs_references = False

    def target(self, embeddings: Tensor, references: Tensor | None, reference_weights: Tensor | None) -> Tensor:
        return 0.5 * embeddings.square().sum(dim=1)

    def cam_weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return gradients.mean(dim=(2, 3))
