"""CF-CAM (He et al. 2025, "Cluster Filter Class Activation Map") on the similarity score.

A gradient CAM that clusters channels and smooths gradients per cluster, as the
authors' reference implementation (github.com/jerryp-hfut/CF-CAM) does, here
batched in torch:

1. Hierarchical split: channels whose activation L2 norm is >= the 75th
   percentile are *important* and keep their own weight ``mean_ij g_k``.
2. The other channels are clustered with DBSCAN on their flattened activations
   (eps = 25th percentile of their pairwise distances, min_samples =
   max(2, floor(0.05 n))); DBSCAN's noise channels are dropped.
3. Per cluster, the mean gradient map is filtered with the authors'
   "bilateral" kernel (a centred Gaussian, sigma_spatial = 5, times
   ``exp(-(g - mean g)^2 / (2 sigma_range^2))``, sigma_range = 0.1, normalised,
   convolved with padding "same"); every channel of the cluster gets the
   spatial mean of the filtered map as its weight.
4. ``w = softmax`` over the kept channels (0 for noise), ``map = relu(sum w_k A_k)``.

DBSCAN here equals scikit-learn's: core points have >= min_samples neighbours
within eps (themselves included); clusters are the connected components of
core points, labelled by their lowest channel index; a border point joins the
cluster with the lowest label among its core neighbours (the cluster
scikit-learn's index-order expansion reaches first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fam_lightning.explainers._gradients import GradientExplainer
from fam_lightning.protocol import SimilarityModel


def masked_quantile(values: Tensor, mask: Tensor, q: float) -> Tensor:
    """(B, ...) values -> (B,) q-quantile (linear interpolation, as numpy) over ``mask``; inf if empty."""
    flat = values.flatten(1).masked_fill(~mask.flatten(1), float("inf"))
    ordered = flat.sort(dim=1).values
    count = mask.flatten(1).sum(dim=1)
    position = q * (count - 1).clamp_min(0).to(values.dtype)
    low = position.floor().long()
    high = position.ceil().long()
    lo_value = ordered.gather(1, low.unsqueeze(1)).squeeze(1)
    hi_value = ordered.gather(1, high.unsqueeze(1)).squeeze(1)
    fraction = position - low.to(values.dtype)
    return torch.where(high > low, lo_value + fraction * (hi_value - lo_value), lo_value)


def dbscan(distances: Tensor, candidate: Tensor, eps: Tensor, min_samples: Tensor) -> Tensor:
    """Batched DBSCAN over the ``candidate`` points of each sample.

    Args:
        distances: (B, C, C) symmetric pairwise distances between C points.
        candidate: (B, C) bool, the rows that take part.
        eps: (B,) neighbourhood radius (distance <= eps).
        min_samples: (B,) neighbours (self included) that make a core point.

    Returns:
        (B, C) long: cluster label (the lowest core index of the cluster), -1 for
        noise and for rows that do not take part.
    """
    batch, count, _ = distances.shape
    pair = candidate.unsqueeze(2) & candidate.unsqueeze(1)
    neighbours = pair & (distances <= eps.view(batch, 1, 1))
    core = candidate & (neighbours.sum(dim=2) >= min_samples.view(batch, 1))
    links = neighbours & core.unsqueeze(2) & core.unsqueeze(1)
    index = torch.arange(count, device=distances.device)
    none = torch.full_like(core, count, dtype=torch.long)
    labels = torch.where(core, index.expand(batch, count), none)
    # Min-label propagation converges to each component's lowest index within its
    # diameter; test convergence every few rounds (one host sync each).
    for step in range(count):
        labels_next = torch.where(links, labels.unsqueeze(1), count).amin(dim=2)
        labels_next = torch.where(core, labels_next, none)
        if step % 4 == 3 and bool((labels_next == labels).all()):
            break
        labels = labels_next
    reach = neighbours & core.unsqueeze(1)  # (i, j): j is a core neighbour of i
    border = torch.where(reach, labels.unsqueeze(1), count).amin(dim=2)
    labels = torch.where(core, labels, torch.where(candidate & ~core, border, none))
    return torch.where(labels < count, labels, torch.full_like(labels, -1))


class CFCAM(GradientExplainer):
    """CF-CAM with the decision score as target.

    Args:
        model: implements :class:`SimilarityModel`.
        important_quantile: channel-norm quantile above which channels are important.
        eps_quantile: quantile of pairwise channel distances used as DBSCAN's eps.
        sigma_spatial, sigma_range: the gradient filter's widths.
    """

    name = "cfcam"

    def __init__(
        self,
        model: SimilarityModel,
        important_quantile: float = 0.75,
        eps_quantile: float = 0.25,
        sigma_spatial: float = 5.0,
        sigma_range: float = 0.1,
    ) -> None:
        super().__init__(model)
        self.important_quantile = important_quantile
        self.eps_quantile = eps_quantile
        self.sigma_spatial = sigma_spatial
        self.sigma_range = sigma_range

    def channel_clusters(self, activations: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, h, w) -> important (B, C) bool and DBSCAN labels (B, C) of the other channels."""
        points = activations.flatten(2)  # (B, C, hw)
        norms = points.norm(dim=2)
        important = norms >= torch.quantile(norms, self.important_quantile, dim=1, keepdim=True)
        rest = ~important
        count = points.shape[1]
        off_diagonal = ~torch.eye(count, dtype=torch.bool, device=points.device)
        # direct differences, not the matmul expansion: exact and symmetric, so ties with eps agree
        distances = torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist")
        pairs = rest.unsqueeze(2) & rest.unsqueeze(1) & off_diagonal
        eps = masked_quantile(distances, pairs, self.eps_quantile).clamp_min(1e-5)
        min_samples = (rest.sum(dim=1) // 20).clamp_min(2)  # max(2, int(0.05 n))
        return important, dbscan(distances, rest, eps, min_samples)

    def filter_gradients(self, gradients: Tensor) -> Tensor:
        """(B, C, h, w) -> each map convolved with its own normalised spatial x range kernel."""
        batch, channels, height, width = gradients.shape
        ys = torch.arange(height, device=gradients.device, dtype=gradients.dtype) - height / 2
        xs = torch.arange(width, device=gradients.device, dtype=gradients.dtype) - width / 2
        spatial = torch.exp(-(ys.view(-1, 1).square() + xs.view(1, -1).square()) / (2 * self.sigma_spatial**2))
        centred = gradients - gradients.mean(dim=(2, 3), keepdim=True)
        kernels = spatial * torch.exp(-centred.square() / (2 * self.sigma_range**2))
        kernels = kernels / (kernels.sum(dim=(2, 3), keepdim=True) + 1e-6)
        # padding "same" as torch pads it (left (k - 1) // 2), spelled out to allow even kernels silently
        top, left = (height - 1) // 2, (width - 1) // 2
        padded = F.pad(
            gradients.reshape(1, batch * channels, height, width),
            (left, width - 1 - left, top, height - 1 - top),
        )
        filtered = F.conv2d(padded, kernels.reshape(batch * channels, 1, height, width), groups=batch * channels)
        return filtered.view(batch, channels, height, width)

    def cam_weights(self, activations: Tensor, gradients: Tensor) -> Tensor:
        important, labels = self.channel_clusters(activations)
        clustered = labels >= 0
        members = (labels.unsqueeze(2) == labels.unsqueeze(1)) & clustered.unsqueeze(2)  # (B, C, C)
        members = members.to(gradients.dtype)
        cluster_mean = (members @ gradients.flatten(2)) / members.sum(dim=2, keepdim=True).clamp_min(1)
        filtered = self.filter_gradients(cluster_mean.view_as(gradients))
        raw = torch.where(important, gradients.mean(dim=(2, 3)), filtered.mean(dim=(2, 3)))
        kept = important | clustered
        return torch.softmax(raw.masked_fill(~kept, float("-inf")), dim=1)
