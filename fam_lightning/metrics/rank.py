"""Spearman rank correlation of two batches of maps, per sample (the sanity check's statistic, Adebayo et al. 2018).

Batched torch, float64, ties given their mean rank (as ``scipy.stats.spearmanr``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["average_ranks", "spearman"]


def average_ranks(values: Tensor) -> Tensor:
    """(B, n) -> (B, n) 0-based ranks per row: argsort twice, ties given their mean rank."""
    if values.dim() != 2:
        raise ValueError(f"average_ranks needs a (B, n) tensor, got shape {tuple(values.shape)}")
    batch, count = values.shape
    order = values.argsort(dim=1, stable=True)
    ordinal = order.argsort(dim=1)  # rank of each element
    ordered = values.gather(1, order)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = starts.long().cumsum(dim=1) - 1  # tie group of each sorted position
    positions = torch.arange(count, device=values.device, dtype=torch.float64).expand(batch, count)
    sums = torch.zeros(batch, count, device=values.device, dtype=torch.float64).scatter_add_(1, group, positions)
    sizes = torch.zeros_like(sums).scatter_add_(1, group, torch.ones_like(positions))
    mean_rank = (sums / sizes.clamp_min(1)).gather(1, group)  # in sorted order
    return mean_rank.gather(1, ordinal)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation of (B, ...) a and b per sample -> (B,) float64; NaN where a map is constant."""
    if a.shape != b.shape:
        raise ValueError(f"spearman needs two maps of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    ra = average_ranks(a.flatten(1).double())
    rb = average_ranks(b.flatten(1).double())
    ra = ra - ra.mean(dim=1, keepdim=True)
    rb = rb - rb.mean(dim=1, keepdim=True)
    denominator = ra.norm(dim=1) * rb.norm(dim=1)
    return torch.where(denominator > 0, (ra * rb).sum(1) / denominator.clamp_min(1e-300), math.nan)
