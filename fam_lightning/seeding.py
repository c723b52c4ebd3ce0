"""Seeds as pure functions of integers: the run's seed, mixed with the epoch, the rank, the item.

No Lightning here (data samplers import it): ``global_seed`` reads the seed ``seed_everything`` put in
the environment, and ``seed_epoch`` reseeds torch, numpy and python ``random`` from it.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

__all__ = ["global_seed", "mix_seed", "seed_epoch"]

_MASK64 = (1 << 64) - 1


def mix_seed(*values: int) -> int:
    """Mix integers into one well-spread 63-bit seed (SplitMix64 steps).

    Neighbouring inputs such as (seed, 0) and (seed, 1) give unrelated seeds,
    unlike ``seed + i``, which makes (seed, i + 1) and (seed + 1, i) collide.
    """
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (value & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & _MASK64
        state ^= state >> 29
    return state >> 1


def global_seed() -> int:
    """The run's seed as set by ``seed_everything`` (``PL_GLOBAL_SEED``), 0 when none was set.

    Read from the environment, not ``torch.initial_seed()``, which every reseed changes.
    """
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def seed_epoch(epoch: int, rank: int = 0) -> int:
    """Reseed torch (CPU and CUDA), numpy and python ``random`` from ``(global seed, epoch, rank)``.

    Returns:
        The seed used.
    """
    seed = mix_seed(global_seed(), epoch, rank)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    return seed
