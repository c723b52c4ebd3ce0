"""Multi-Similarity loss and its pair miner (Wang et al., CVPR 2019).

"Multi-Similarity Loss with General Pair Weighting". On cosine similarities
``S_ij`` of L2-normalised embeddings, each anchor ``i`` keeps the informative
pairs (mining, margin ``epsilon``)::

    negatives  N_i = {k : y_k != y_i,          S_ik > min_{j in P*_i} S_ij - epsilon}
    positives  P_i = {j : y_j == y_i, j != i,  S_ij < max_{k in N*_i} S_ik + epsilon}

(``P*_i`` / ``N*_i`` are all positives / negatives of ``i``), and pays::

    L_i = 1/alpha log(1 + sum_{j in P_i} exp(-alpha (S_ij - lambda)))
        + 1/beta  log(1 + sum_{k in N_i} exp( beta (S_ik - lambda)))

The loss is ``(1/B) sum_i L_i``. A term whose kept set is empty is
``log(1) = 0``, so such an anchor adds 0 for that term and still counts in
``B`` (pytorch-metric-learning's mean over anchors; the authors' code
also divides by ``B``). Defaults are the authors' CUB configuration:
alpha 2, beta 40, lambda 0.5, epsilon 0.1.

The pair helpers here (:func:`check_metric_batch`, :func:`label_pair_masks`,
:func:`require_pairs`) are shared with :mod:`fam_lightning.losses.margin`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fam_lightning.shapes import shape_of

__all__ = [
    "MultiSimilarityLoss",
    "MultiSimilarityMiner",
    "check_metric_batch",
    "cosine_similarity_matrix",
    "label_pair_masks",
    "require_pairs",
]


def check_metric_batch(embeddings: Tensor, labels: Tensor) -> None:
    """Raise ValueError unless ``embeddings`` is floating (B, D) and ``labels`` integer (B,)."""
    if not isinstance(embeddings, Tensor) or embeddings.ndim != 2 or not embeddings.is_floating_point():
        raise ValueError(f"embeddings must be a floating tensor of shape (B, D), got {shape_of(embeddings)}")
    batch = embeddings.shape[0]
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor of shape (B,) = ({batch},), got {shape_of(labels)}")
    if labels.shape[0] != batch:
        raise ValueError(f"labels must have one entry per embedding, (B,) = ({batch},), got {tuple(labels.shape)}")


def cosine_similarity_matrix(embeddings: Tensor) -> Tensor:
    """``S = z z^T`` with ``z`` the L2-normalised rows: (B, D) -> (B, B)."""
    z = F.normalize(embeddings, dim=1)
    return z @ z.t()


def label_pair_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Positive and negative pair masks of a batch.

    Args:
        labels: ``(B,)`` integer labels.

    Returns:
        ``(positive, negative)``, both ``(B, B)`` bool: ``positive[i, j]`` is
        ``y_i == y_j and i != j``, ``negative[i, j]`` is ``y_i != y_j``.
    """
    same = labels.unsqueeze(1) == labels.unsqueeze(0)  # (B, B)
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def require_pairs(positive: Tensor, negative: Tensor, labels: Tensor, loss_name: str) -> None:
    """Raise ValueError unless the batch has a positive and a negative pair (one host sync).

    A metric-learning batch needs two images of one class and two classes;
    random batches of a many-class data set rarely have the first.
    """
    has_pos, has_neg = torch.stack([positive.any(), negative.any()]).tolist()
    if has_pos and has_neg:
        return
    classes, counts = torch.unique(labels, return_counts=True)
    largest = int(counts.max()) if counts.numel() else 0
    raise ValueError(
        f"{loss_name} needs a batch with at least one positive pair (two images of one class) and one "
        f"negative pair (two classes); got {labels.shape[0]} labels in {classes.numel()} classes, the largest "
        f"class has {largest} images. Draw training batches with "
        "fam_lightning.datamodules.sampling.samplers.ClassBalancedBatchSampler (classes_per_batch >= 2, samples_per_class >= 2)."
    )


def _log1p_sum_exp(logits: Tensor, keep: Tensor) -> Tensor:
    """``log(1 + sum_{j : keep_ij} exp(logits_ij))`` per row, stable; 0 for an empty row.

    The ``1`` is an extra logit 0, so ``logsumexp`` never sees an all ``-inf``
    row (whose gradient would be NaN).
    """
    masked = logits.masked_fill(~keep, float("-inf"))  # (B, B)
    zero = logits.new_zeros(logits.shape[0], 1)
    return torch.logsumexp(torch.cat([zero, masked], dim=1), dim=1)  # (B,)


class MultiSimilarityMiner(nn.Module):
    """Multi-Similarity pair mining: keep the pairs that violate the margin ``epsilon``.

    For anchor ``i`` a negative ``k`` is kept if ``S_ik > min_j S_ij - epsilon``
    (over all positives ``j != i``), and a positive ``j`` if
    ``S_ij < max_k S_ik + epsilon`` (over all negatives). An anchor without
    positives keeps no negative, one without negatives keeps no positive.
    ``epsilon = inf`` keeps every pair of anchors that have both kinds.
    The diagonal (the anchor itself) is never a positive.

    Args:
        epsilon: Mining margin, ``>= 0``.
    """

    def __init__(self, epsilon: float = 0.1) -> None:
        super().__init__()
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        self.epsilon = float(epsilon)

    def forward(self, embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Mine on the cosine similarities of L2-normalised ``embeddings`` (B, D).

        Returns:
            ``(kept_positive, kept_negative)``, ``(B, B)`` bool masks.
        """
        check_metric_batch(embeddings, labels)
        return self.mine(cosine_similarity_matrix(embeddings.detach()), labels)

    @torch.no_grad()
    def mine(self, similarities: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Mine on a precomputed similarity matrix.

        Args:
            similarities: ``(B, B)`` similarities, higher = closer.
            labels: ``(B,)`` integer labels.

        Returns:
            ``(kept_positive, kept_negative)``, ``(B, B)`` bool masks, subsets
            of :func:`label_pair_masks`.
        """
        if similarities.ndim != 2 or similarities.shape != (labels.shape[0],) * 2:
            raise ValueError(
                f"similarities must have shape (B, B) = {(labels.shape[0],) * 2}, got {tuple(similarities.shape)}"
            )
        positive, negative = label_pair_masks(labels)
        hardest_pos = similarities.masked_fill(~positive, float("inf")).amin(dim=1, keepdim=True)  # (B, 1)
        hardest_neg = similarities.masked_fill(~negative, float("-inf")).amax(dim=1, keepdim=True)  # (B, 1)
        # An empty side gives +-inf; with epsilon = inf the bound is then NaN and every comparison is False.
        kept_negative = negative & (similarities > hardest_pos - self.epsilon)
        kept_positive = positive & (similarities < hardest_neg + self.epsilon)
        return kept_positive, kept_negative

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}"


class MultiSimilarityLoss(nn.Module):
    """Multi-Similarity loss on cosine similarities (see the module docstring for the formula).

    Embeddings are L2-normalised inside, so the model may return raw
    embeddings. ``forward(embeddings (B, D), labels (B,)) -> scalar``.

    Args:
        alpha: Positive scale (2 in the paper).
        beta: Negative scale (40 in the authors' CUB configuration).
        base: Similarity offset ``lambda``.
        miner: Pair miner; None builds ``MultiSimilarityMiner()`` (epsilon
            0.1). ``MultiSimilarityMiner(epsilon=float("inf"))`` keeps every pair.

    Raises:
        ValueError: In ``forward``, on wrong shapes, or when the batch has
            no positive pair or no negative pair (use
            ``fam_lightning.datamodules.sampling.samplers.ClassBalancedBatchSampler``).
    """

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 40.0,
        base: float = 0.5,
        miner: MultiSimilarityMiner | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("alpha", alpha), ("beta", beta)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.alpha, self.beta, self.base = float(alpha), float(beta), float(base)
        self.miner = miner if miner is not None else MultiSimilarityMiner()

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Mean Multi-Similarity loss of the batch.

        Args:
            embeddings: ``(B, D)`` embeddings (normalised here).
            labels: ``(B,)`` integer class labels.

        Returns:
            Scalar tensor.
        """
        check_metric_batch(embeddings, labels)
        positive, negative = label_pair_masks(labels)
        require_pairs(positive, negative, labels, type(self).__name__)
        sims = cosine_similarity_matrix(embeddings)  # (B, B)
        kept_pos, kept_neg = self.miner.mine(sims.detach(), labels)
        pos_term = _log1p_sum_exp(-self.alpha * (sims - self.base), kept_pos) / self.alpha  # (B,)
        neg_term = _log1p_sum_exp(self.beta * (sims - self.base), kept_neg) / self.beta  # (B,)
        return (pos_term + neg_term).mean()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, base={self.base}"
