"""Eigen-CAM (Muhammad & Yeasin 2020): the feature maps projected on their first principal component.

Per sample, ``X`` = the (hw, C) matrix of activations with each channel
centred over positions; the map is ``X v`` with ``v`` the first right singular
vector of ``X``. The sign of ``v`` is arbitrary; we fix it so that
``sum_k v_k >= 0``, which is the same as making the map correlate positively
with the channel-mean activation (``X^T X v = s^2 v`` gives
``corr(X v, X 1) ~ s^2 v . 1``). No gradients, no reference: references are
ignored.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fam_lightning.explainers.base import Explainer, at_least_float32, normalize_saliency


def first_component_projection(feature_maps: Tensor) -> Tensor:
    """(B, C, h, w) -> (B, h, w) projection of the centred activations on the first principal axis.

    Solved as the top eigenpair of the smaller Gram matrix (``X X^T``, hw x hw,
    or ``X^T X``, C x C) with ``eigh``: the same projection ``X v = s u`` as the
    SVD, several times faster than batched SVD for these small matrices on GPU.
    """
    batch, _, height, width = feature_maps.shape
    x = feature_maps.flatten(2).transpose(1, 2)  # (B, hw, C)
    x = x - x.mean(dim=1, keepdim=True)
    if x.shape[1] <= x.shape[2]:
        values, vectors = torch.linalg.eigh(x @ x.transpose(1, 2))  # ascending eigenvalues
        u = vectors[:, :, -1]  # (B, hw), the left singular vector
        projection = u * values[:, -1:].clamp_min(0).sqrt()  # X v = s u
        axis_sum = (x.transpose(1, 2) @ u.unsqueeze(2)).sum(dim=(1, 2))  # sign of sum(v) = sign of 1^T X^T u
    else:
        _, vectors = torch.linalg.eigh(x.transpose(1, 2) @ x)
        v = vectors[:, :, -1]  # (B, C), the first principal axis
        projection = (x @ v.unsqueeze(2)).squeeze(2)
        axis_sum = v.sum(dim=1)
    projection = torch.where(axis_sum.unsqueeze(1) < 0, -projection, projection)
    return projection.view(batch, height, width)


class EigenCAM(Explainer):
    """Reference-free Eigen-CAM on the last conv feature maps."""

    name = "eigencam"
    needs_references = False

    def from_feature_maps(
        self,
        feature_maps: Tensor,
        references: Tensor | None = None,
        reference_weights: Tensor | None = None,
        size: tuple[int, int] | None = None,
    ) -> Tensor:
        with torch.no_grad(), torch.autocast(feature_maps.device.type, enabled=False):
            projection = first_component_projection(at_least_float32(feature_maps.detach()))
            return normalize_saliency(projection, size)
