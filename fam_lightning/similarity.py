"""Similarity scores the models decide with, as pure batched functions.

The decision score of a query against a set of N references is the (weighted)
mean of pairwise similarities (FAM paper, eq. 11), so FAM's contribution
weights sum exactly to the score the model used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SIMILARITIES = ("cosine", "euclidean", "dot")


def pairwise_similarity(queries: Tensor, references: Tensor, kind: str = "cosine") -> Tensor:
    """(Q, D) x (R, D) -> (Q, R) similarities ("cosine", "dot", or "euclidean" = -|q - r|^2)."""
    if kind == "cosine":
        return F.normalize(queries, dim=-1) @ F.normalize(references, dim=-1).t()
    if kind == "dot":
        return queries @ references.t()
    if kind == "euclidean":
        return -torch.cdist(queries, references).square()
    raise ValueError(f"similarity must be one of {SIMILARITIES}, got {kind!r}")


def class_scores(queries: Tensor, support: Tensor, kind: str = "cosine") -> Tensor:
    """Mean similarity of each query to each class's support set (eq. 11).

    Args:
        queries: (Q, D) query embeddings.
        support: (W, S, D) support embeddings, class-major.

    Returns:
        (Q, W) scores.
    """
    ways, shots, dim = support.shape
    pairwise = pairwise_similarity(queries, support.reshape(ways * shots, dim), kind)
    return pairwise.view(-1, ways, shots).mean(dim=2)


def mean_similarity(
    embeddings: Tensor, references: Tensor, kind: str = "cosine", weights: Tensor | None = None
) -> Tensor:
    """Each embedding's (weighted) mean similarity to its own references.

    Args:
        embeddings: (B, D).
        references: (B, N, D) or (B, D).
        weights: optional (B, N) non-negative weights (normalised here).

    Returns:
        (B,) scores, the ``Y`` / ``O`` of Average Drop and Increase in Confidence.
    """
    refs = references.unsqueeze(1) if references.dim() == 2 else references
    query = embeddings.unsqueeze(1)
    if kind == "cosine":
        pairwise = F.cosine_similarity(query, refs, dim=2)
    elif kind == "dot":
        pairwise = (query * refs).sum(2)
    elif kind == "euclidean":
        pairwise = -(query - refs).square().sum(2)
    else:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {kind!r}")
    if weights is None:
        return pairwise.mean(1)
    return (pairwise * weights).sum(1) / weights.sum(1).clamp_min(torch.finfo(weights.dtype).tiny)
