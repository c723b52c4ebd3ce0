"""Margin loss with distance-weighted sampling (Wu et al., ICCV 2017).

"Sampling Matters in Deep Embedding Learning". Embeddings are L2-normalised,
``D_ij = |z_i - z_j|`` is their Euclidean distance (in ``[0, 2]``).

Sampling. On the unit sphere in ``n`` dimensions the distance between two
random points has density ``q(d) ~ d^{n-2} (1 - d^2/4)^{(n-3)/2}``. For each
anchor, negatives are drawn with probability proportional to::

    q(d)^-1 = d^{2-n} (1 - d^2/4)^{(3-n)/2},   d clipped below at ``cutoff`` (0.5)

restricted to negatives with ``D < nonzero_loss_cutoff`` (1.4: farther ones
have zero loss for ``beta ~ 1.2``), computed in log space and normalised
per row. As in the authors' code every positive pair ``(a, p)``, ``a != p``,
is used, each with one negative drawn for its anchor, so the miner returns
triplets ``(a, p, n)``.

Loss. With ``y = +1`` for ``(a, p)`` and ``y = -1`` for ``(a, n)``::

    l_ij = relu(alpha + y_ij (D_ij - beta_{c(a)}))

with margin ``alpha`` (0.2) and a learnable boundary ``beta`` per class
(initialised 1.2; the anchor's class is used). The loss is::

    L = (sum_{(a,p,n)} [l_ap + l_an] + nu sum_{(a,p,n)} beta_{c(a)}) / #{l > 0}

i.e. averaged over the pair terms with non-zero loss (1 if none), as in
the authors' reference implementation; ``nu`` (default 0) regularises beta.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fam_lightning.losses.multi_similarity import check_metric_batch, label_pair_masks, require_pairs

__all__ = ["DistanceWeightedMiner", "MarginLoss", "euclidean_distance_matrix"]

_MIN_SQUARED_DISTANCE = 1e-12  # keeps sqrt's gradient finite for coinciding embeddings


def euclidean_distance_matrix(embeddings: Tensor) -> Tensor:
    """``D_ij = |z_i - z_j|`` of the L2-normalised rows, ``sqrt(2 - 2 z_i . z_j)``: (B, D) -> (B, B)."""
    z = F.normalize(embeddings, dim=1)
    return (2.0 - 2.0 * (z @ z.t())).clamp_min(0.0).sqrt()


def _pair_distance(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise ``|x - y|``: (T, D), (T, D) -> (T,)."""
    return (x - y).square().sum(dim=1).clamp_min(_MIN_SQUARED_DISTANCE).sqrt()


class DistanceWeightedMiner(nn.Module):
    """Distance-weighted negative sampling; returns one triplet per positive pair.

    ``forward(embeddings (B, D), labels (B,), generator=None) -> (anchors,
    positives, negatives)``, three ``(T,)`` long index tensors with
    ``T`` = number of ordered positive pairs whose anchor has a negative.
    Draws use ``generator`` (on the embeddings' device) or the global RNG, so
    results repeat given a seeded ``torch.Generator``.

    An anchor whose negatives all lie at ``D >= nonzero_loss_cutoff`` draws
    uniformly among its negatives (as the authors' code falls back to
    uniform), so its positive pairs still count; an anchor without any
    negative yields no triplet.

    Args:
        cutoff: Distances are clipped below at this value before weighting
            (the weights of very close negatives would otherwise explode).
        nonzero_loss_cutoff: Only negatives closer than this are sampled.
    """

    def __init__(self, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4) -> None:
        super().__init__()
        if not 0 < cutoff < nonzero_loss_cutoff:
            raise ValueError(
                f"need 0 < cutoff < nonzero_loss_cutoff, got cutoff={cutoff}, nonzero_loss_cutoff={nonzero_loss_cutoff}"
            )
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)

    def forward(
        self, embeddings: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Sample triplets from L2-normalised ``embeddings`` (B, D); see the class docstring."""
        check_metric_batch(embeddings, labels)
        distances = euclidean_distance_matrix(embeddings.detach())
        return self.mine(distances, labels, embeddings.shape[1], generator)

    @torch.no_grad()
    def sampling_weights(self, distances: Tensor, labels: Tensor, dim: int) -> Tensor:
        """Per-anchor probabilities of drawing each item as its negative.

        ``p_ik ~ d^{2-n} (1 - d^2/4)^{(3-n)/2}`` with ``d = max(D_ik, cutoff)``,
        over negatives with ``D_ik < nonzero_loss_cutoff`` (all negatives
        uniformly when there is none), normalised per row.

        Args:
            distances: ``(B, B)`` Euclidean distances of unit vectors.
            labels: ``(B,)`` integer labels.
            dim: Embedding dimension ``n``.

        Returns:
            ``(B, B)`` probabilities; each row sums to 1, or is all 0 for an
            anchor without negatives.
        """
        if distances.ndim != 2 or distances.shape != (labels.shape[0],) * 2:
            raise ValueError(f"distances must have shape (B, B) = {(labels.shape[0],) * 2}, got {tuple(distances.shape)}")
        _, negative = label_pair_masks(labels)
        d = distances.clamp_min(self.cutoff)
        # 1 - d^2/4 reaches 0 only for antipodal points (d = 2); the clamp keeps the log finite.
        log_w = (2.0 - dim) * d.log() + ((3.0 - dim) / 2.0) * (1.0 - 0.25 * d.square()).clamp_min(1e-12).log()
        eligible = negative & (distances < self.nonzero_loss_cutoff)  # (B, B)
        has_eligible = eligible.any(dim=1, keepdim=True)  # (B, 1)
        uniform = torch.zeros_like(log_w)
        log_w = torch.where(has_eligible, log_w, uniform)
        candidates = torch.where(has_eligible, eligible, negative)
        log_w = log_w.masked_fill(~candidates, float("-inf"))
        row_max = log_w.amax(dim=1, keepdim=True)
        weights = (log_w - torch.where(row_max.isfinite(), row_max, 0.0)).exp()  # empty rows: exp(-inf) = 0
        return weights / weights.sum(dim=1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)

    @torch.no_grad()
    def mine(
        self, distances: Tensor, labels: Tensor, dim: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Triplets from a precomputed distance matrix.

        Args:
            distances: ``(B, B)`` Euclidean distances of unit vectors.
            labels: ``(B,)`` integer labels.
            dim: Embedding dimension ``n``.
            generator: Source of the draws, on ``distances``' device.

        Returns:
            ``(anchors, positives, negatives)``, ``(T,)`` long each, anchor-major.
        """
        positive, negative = label_pair_masks(labels)
        probs = self.sampling_weights(distances, labels, dim)  # (B, B)
        has_negative = negative.any(dim=1, keepdim=True)  # (B, 1)
        # multinomial rejects all-zero rows: give anchors without negatives a dummy row, dropped below.
        probs = torch.where(has_negative, probs, 1.0)
        batch = labels.shape[0]
        # draws[a, p] is the negative of pair (a, p): independent draws for every pair at once.
        draws = torch.multinomial(probs, batch, replacement=True, generator=generator)  # (B, B)
        anchors, positives = (positive & has_negative).nonzero(as_tuple=True)
        return anchors, positives, draws[anchors, positives]

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, nonzero_loss_cutoff={self.nonzero_loss_cutoff}"


class MarginLoss(nn.Module):
    """Margin loss with learnable per-class boundaries (see the module docstring).

    Embeddings are L2-normalised inside. ``forward(embeddings (B, D), labels
    (B,), generator=None) -> scalar``; ``generator`` drives the miner.

    Args:
        num_classes: Number of training classes; labels must lie in ``[0, num_classes)``.
        margin: ``alpha``, half the gap between positive and negative distances.
        beta_init: Initial value of every class's boundary ``beta`` (a
            learnable ``nn.Parameter`` of shape ``(num_classes,)``; give it
            its own learning rate in the optimiser, as the paper does).
        nu: Weight of the ``beta`` regulariser.
        miner: Triplet sampler; None builds ``DistanceWeightedMiner()``.

    Raises:
        ValueError: In ``forward``, on wrong shapes, labels out of range, or
            a batch without a positive or a negative pair (use
            ``fam_lightning.datamodules.sampling.samplers.ClassBalancedBatchSampler``).
    """

    def __init__(
        self,
        num_classes: int,
        margin: float = 0.2,
        beta_init: float = 1.2,
        nu: float = 0.0,
        miner: DistanceWeightedMiner | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        if not nu >= 0:
            raise ValueError(f"nu must be >= 0, got {nu}")
        self.num_classes = num_classes
        self.margin, self.nu = float(margin), float(nu)
        self.beta = nn.Parameter(torch.full((num_classes,), float(beta_init)))
        self.miner = miner if miner is not None else DistanceWeightedMiner()

    def forward(self, embeddings: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Margin loss of the batch, averaged over the non-zero pair terms.

        Args:
            embeddings: ``(B, D)`` embeddings (normalised here).
            labels: ``(B,)`` integer class labels in ``[0, num_classes)``.
            generator: Source of the miner's draws (global RNG if None).

        Returns:
            Scalar tensor.
        """
        check_metric_batch(embeddings, labels)
        positive, negative = label_pair_masks(labels)
        require_pairs(positive, negative, labels, type(self).__name__)
        low, high = torch.stack([labels.min(), labels.max()]).tolist()
        if low < 0 or high >= self.num_classes:
            raise ValueError(f"labels must lie in [0, num_classes) = [0, {self.num_classes}), got [{low}, {high}]")
        z = F.normalize(embeddings, dim=1)
        with torch.no_grad():
            distances = (2.0 - 2.0 * (z @ z.t())).clamp_min(0.0).sqrt()  # (B, B)
        anchors, positives, negatives = self.miner.mine(distances, labels, z.shape[1], generator)  # (T,) each
        beta = self.beta[labels[anchors]].to(z.dtype)  # (T,)
        pos_loss = F.relu(self.margin + _pair_distance(z[anchors], z[positives]) - beta)
        neg_loss = F.relu(self.margin - _pair_distance(z[anchors], z[negatives]) + beta)
        num_active = (pos_loss > 0).sum() + (neg_loss > 0).sum()
        total = pos_loss.sum() + neg_loss.sum() + self.nu * beta.sum()
        return total / num_active.clamp_min(1)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, margin={self.margin}, nu={self.nu}"
