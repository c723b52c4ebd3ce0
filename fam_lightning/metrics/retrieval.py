"""Retrieval metrics: Recall@K and MAP@R, every item a query against all the others.

The standard metric-learning protocol (CUB-200-2011, Cars196, SOP): each of
the ``N`` test embeddings queries the other ``N - 1`` (itself excluded, by
index, so duplicates of it still count). With ``P_q`` the items of the
query's class other than itself and ``R_q = |P_q|``:

- Recall@K: ``1/|Q| sum_q 1[some item of P_q is among the K nearest]``.
- MAP@R (Musgrave et al., "A Metric Learning Reality Check", 2020):
  ``1/|Q| sum_q 1/R_q sum_{i=1}^{R_q} P@i * rel_i``, over the first ``R_q``
  retrieved items, ``rel_i = 1`` if the i-th is in ``P_q``, ``P@i`` the
  precision of the first i.

``Q`` holds the queries with ``R_q >= 1``: a query alone in its class cannot
retrieve anything and is left out (as in pytorch-metric-learning).

The neighbours come from a chunked matmul + ``topk`` on the embeddings'
device (exact; ties broken arbitrarily): memory ``chunk_size x N`` instead
of ``N x N``, and no full sort.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from fam_lightning.similarity import SIMILARITIES

__all__ = ["RecallAtK", "map_at_r", "recall_at_k"]


def _check_inputs(embeddings: Tensor, labels: Tensor, metric: str, chunk_size: int) -> None:
    if not isinstance(embeddings, Tensor) or embeddings.ndim != 2 or not embeddings.is_floating_point():
        shape = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
        raise ValueError(f"embeddings must be a floating tensor of shape (N, D), got {shape}")
    num = embeddings.shape[0]
    if not isinstance(labels, Tensor) or labels.shape != (num,) or labels.is_floating_point():
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer tensor of shape (N,) = ({num},), got {shape}")
    if num < 2:
        raise ValueError(f"retrieval needs at least 2 embeddings (each queries the others), got N={num}")
    if metric not in SIMILARITIES:
        raise ValueError(f"metric must be one of {SIMILARITIES}, got {metric!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _check_ks(ks: Sequence[int], num: int) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1 or max(ks) > num - 1:
        raise ValueError(f"ks must be a non-empty sequence of integers in [1, N - 1] = [1, {num - 1}], got {ks}")
    return ks


def _scoring(embeddings: Tensor, metric: str) -> tuple[Tensor, Tensor | None]:
    """Rows and an optional per-item offset; ``score = 2 q.x + offset`` (Euclidean) or ``q.x`` ranks as ``metric``.

    Euclidean: ``-|q - x|^2 = 2 q.x - |x|^2 - |q|^2``; ``|q|^2`` is constant
    per query and cannot change its ranking, so it is dropped.
    """
    if metric == "cosine":
        return F.normalize(embeddings, dim=1), None
    if metric == "euclidean":
        return embeddings, -embeddings.square().sum(dim=1)
    return embeddings, None


def _retrieval_sums(
    embeddings: Tensor, labels: Tensor, ks: tuple[int, ...], metric: str, chunk_size: int, with_map: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Hit counts per k (len(ks),), the sum of AP@R, and the number of valid queries, on device.

    One host sync: the largest ``R`` (the top-k width MAP@R needs).
    """
    num = embeddings.shape[0]
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    num_relevant = counts[inverse] - 1  # (N,) R_q
    width = max(ks)
    if with_map:
        width = max(width, int(num_relevant.max()))
    rows, offset = _scoring(embeddings, metric)
    k_index = torch.tensor(ks, device=embeddings.device) - 1  # (len(ks),)
    hits = torch.zeros(len(ks), dtype=torch.long, device=embeddings.device)
    ap_sum = torch.zeros((), dtype=torch.float64, device=embeddings.device)
    for start in range(0, num, chunk_size):
        stop = min(start + chunk_size, num)
        scores = rows[start:stop] @ rows.t()  # (c, N)
        if offset is not None:
            scores = torch.add(offset, scores, alpha=2.0)  # 2 q.x - |x|^2
        local = torch.arange(stop - start, device=scores.device)
        scores[local, local + start] = float("-inf")  # exclude self
        neighbours = scores.topk(width, dim=1).indices  # (c, width), nearest first
        relevant = inverse[neighbours] == inverse[start:stop].unsqueeze(1)  # (c, width)
        r = num_relevant[start:stop]  # (c,)
        valid = r > 0
        found_by = relevant.cummax(dim=1).values  # (c, width): a hit at or before rank i
        hits += (found_by[:, k_index] & valid.unsqueeze(1)).sum(dim=0)
        if with_map:
            ranks = torch.arange(1, width + 1, device=scores.device)  # (width,)
            within_r = ranks <= r.unsqueeze(1)  # (c, width)
            rel = (relevant & within_r).double()
            precision = rel.cumsum(dim=1) / ranks  # (c, width) P@i over the first R
            ap = (precision * rel).sum(dim=1) / r.clamp_min(1)
            ap_sum += ap[valid].sum()
    return hits, ap_sum, (num_relevant > 0).sum()


def recall_at_k(
    embeddings: Tensor,
    labels: Tensor,
    ks: Sequence[int] = (1, 2, 4, 8),
    metric: str = "cosine",
    chunk_size: int = 4096,
) -> dict[int, Tensor]:
    """Recall@K of every item against all the others, a fraction in ``[0, 1]``.

    ``R@K = 1/|Q| sum_q 1[an item of the query's class is among its K nearest others]``,
    ``Q`` the queries with at least one other item of their class (0 if none).

    Args:
        embeddings: ``(N, D)`` embeddings.
        labels: ``(N,)`` integer class labels.
        ks: Values of K, each in ``[1, N - 1]``.
        metric: "cosine" (normalised dot product), "euclidean" (smallest
            L2 distance) or "dot".
        chunk_size: Queries per matmul; memory grows as ``chunk_size x N``.

    Returns:
        ``{k: scalar float tensor}`` on the embeddings' device.
    """
    _check_inputs(embeddings, labels, metric, chunk_size)
    ks = _check_ks(ks, embeddings.shape[0])
    hits, _, num_valid = _retrieval_sums(embeddings, labels, ks, metric, chunk_size, with_map=False)
    recall = (hits.double() / num_valid.clamp_min(1)).to(_result_dtype(embeddings))
    return {k: recall[i] for i, k in enumerate(ks)}


def map_at_r(embeddings: Tensor, labels: Tensor, metric: str = "cosine", chunk_size: int = 4096) -> Tensor:
    """MAP@R of every item against all the others, a fraction in ``[0, 1]``.

    ``MAP@R = 1/|Q| sum_q 1/R_q sum_{i=1}^{R_q} P@i * rel_i`` with ``R_q``
    the number of other items of the query's class (Musgrave et al. 2020);
    ``Q`` the queries with ``R_q >= 1`` (0 if none).

    Args:
        embeddings: ``(N, D)`` embeddings.
        labels: ``(N,)`` integer class labels.
        metric: "cosine", "euclidean" or "dot".
        chunk_size: Queries per matmul.

    Returns:
        Scalar float tensor on the embeddings' device.
    """
    _check_inputs(embeddings, labels, metric, chunk_size)
    _, ap_sum, num_valid = _retrieval_sums(embeddings, labels, (1,), metric, chunk_size, with_map=True)
    return (ap_sum / num_valid.clamp_min(1)).to(_result_dtype(embeddings))


def _result_dtype(embeddings: Tensor) -> torch.dtype:
    """The embeddings' dtype, at least float32 (a fraction in half precision is too coarse)."""
    return torch.promote_types(embeddings.dtype, torch.float32)


class RecallAtK(Metric):
    """Recall@K and MAP@R in percent over the whole evaluation set.

    ``update(embeddings (B, D), labels (B,))`` stores the (detached) batch;
    ``compute()`` returns ``{"recall@1": ..., "recall@2": ..., ..., "map@r": ...}``
    (float64 scalars, percent), with every item querying all the others (see
    :func:`recall_at_k`, :func:`map_at_r`). States are lists concatenated
    across ranks, so under DDP every rank computes on the full set. A
    ``DistributedSampler`` that pads the last batch repeats items, which
    then count as extra gallery items; evaluate with a sampler that does not
    pad (or on one device) for exact numbers.

    Args:
        ks: Values of K.
        metric: "cosine", "euclidean" or "dot".
        chunk_size: Queries per matmul at ``compute()``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 100.0

    embeddings: list[Tensor] | Tensor
    labels: list[Tensor] | Tensor

    def __init__(
        self, ks: Sequence[int] = (1, 2, 4, 8), metric: str = "cosine", chunk_size: int = 4096, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        ks = tuple(int(k) for k in ks)
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be a non-empty sequence of integers >= 1, got {ks}")
        if metric not in SIMILARITIES:
            raise ValueError(f"metric must be one of {SIMILARITIES}, got {metric!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.ks, self.metric, self.chunk_size = ks, metric, chunk_size
        self.add_state("embeddings", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, embeddings: Tensor, labels: Tensor) -> None:
        """Store a batch of ``(B, D)`` embeddings and ``(B,)`` labels."""
        if not isinstance(embeddings, Tensor) or embeddings.ndim != 2 or not embeddings.is_floating_point():
            shape = tuple(embeddings.shape) if isinstance(embeddings, Tensor) else type(embeddings).__name__
            raise ValueError(f"embeddings must be a floating tensor of shape (B, D), got {shape}")
        if not isinstance(labels, Tensor) or labels.shape != embeddings.shape[:1] or labels.is_floating_point():
            shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"labels must be an integer tensor of shape (B,) = ({embeddings.shape[0]},), got {shape}")
        self.embeddings.append(embeddings.detach())
        self.labels.append(labels.detach())

    def compute(self) -> dict[str, Tensor]:
        """``{"recall@k": ..., "map@r": ...}`` in percent over everything seen."""
        if isinstance(self.embeddings, list) and not self.embeddings:
            raise ValueError("RecallAtK.compute() needs at least one update() first")
        embeddings, labels = dim_zero_cat(self.embeddings), dim_zero_cat(self.labels)
        _check_inputs(embeddings, labels, self.metric, self.chunk_size)
        ks = _check_ks(self.ks, embeddings.shape[0])
        hits, ap_sum, num_valid = _retrieval_sums(embeddings, labels, ks, self.metric, self.chunk_size, with_map=True)
        denominator = num_valid.clamp_min(1).double()
        result = {f"recall@{k}": hits[i].double() / denominator * 100.0 for i, k in enumerate(ks)}
        result["map@r"] = ap_sum / denominator * 100.0
        return result
