"""XGrad-CAM (Fu et al. 2020) on the similarity score: ``w_k = sum_ij A_kij g_kij / sum_ij A_kij``."""

from __future__ import annotations

from torch import Tensor

from fam_lightning.explainers._gradients import GradientExplainer


class XGradCAM(GradientExplainer):
    """Axiom-based Grad-CAM with the decision score as target (``g = dS/dA``)."""

    name = "xgradcam"
    eps = 1e-7

    def cam_weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        total = activations.sum(dim=(2, 3))  # (B, C)
        return (activations * gradients).sum(dim=(2, 3)) / (total + self.eps)
