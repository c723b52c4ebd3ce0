"""Grad-CAM++ (Chattopadhay et al. 2018, eq. 19) on the similarity score.

``a_kij = g^2 / (2 g^2 + sum_ab A_kab g^3)`` (0 where ``g = 0``) and
``w_k = sum_ij a_kij relu(g_kij)`` with ``g = dS/dA``: the closed form the
paper derives for ``exp(S)``, as pytorch-grad-cam computes it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fam_lightning.explainers._gradients import GradientExplainer


class GradCAMPlusPlus(GradientExplainer):
    """Grad-CAM++ with the decision score as target."""

    name = "gradcampp"
    eps = 1e-6

    def cam_weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        g2 = gradients.square()
        total = activations.sum(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        alpha = g2 / (2 * g2 + total * g2 * gradients + self.eps)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        return (alpha * gradients.relu()).sum(dim=(2, 3))
