"""What error messages say about a wrong argument: a tensor's shape, or the type of anything else."""

from __future__ import annotations

from torch import Tensor

__all__ = ["shape_of"]


def shape_of(x: object) -> object:
    """``tuple(x.shape)`` for a tensor, else the name of ``x``'s type (for "got ..." in a ValueError)."""
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
