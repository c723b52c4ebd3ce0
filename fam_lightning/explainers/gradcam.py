"""Grad-CAM (Selvaraju et al. 2017) on the similarity score: ``w_k = mean_ij dS/dA_k,ij``."""

from __future__ import annotations

from torch import Tensor

from fam_lightning.explainers._gradients import GradientExplainer


class GradCAM(GradientExplainer):
    """Grad-CAM with the decision score ``S`` (mean similarity to the references) as target."""

    name = "gradcam"

    def cam_weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        return gradients.mean(dim=(2, 3))  # (B, C)
