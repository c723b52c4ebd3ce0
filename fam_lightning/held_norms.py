"""Norm layers held at their per-sample statistics, so that gradient x input through a head is exact.

A LayerNorm is invariant to the scale of its input: the true derivative gives FAM weights that sum to
(almost) nothing. With the standard deviation held (detached) per sample, the layer is affine in its input
and the decomposition is exact again, as cosine's norms are held fixed (DESIGN.md, "FAM arithmetic").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn

__all__ = ["held_norm_statistics"]


@contextmanager
def held_norm_statistics(head: nn.Module) -> Iterator[None]:
    """While active, every ``nn.LayerNorm`` in ``head`` (over the last dim) holds its per-sample std fixed.

    The output value is unchanged; only its derivative changes: with ``sigma``
    detached, ``LN(u) = gamma * (u - mean(u)) / sigma + b`` is affine in ``u``
    (the centring is a linear map), so gradient x input through it is exact,
    where the true LayerNorm, invariant to the scale of ``u``, would give
    weights that sum to (almost) nothing. Like cosine's norms, ``sigma`` is
    the statistic FAM holds fixed per sample.
    """
    handles = [
        module.register_forward_hook(_held_layer_norm)
        for module in head.modules()
        if isinstance(module, nn.LayerNorm)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _held_layer_norm(module: nn.LayerNorm, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    (x,) = inputs[:1]
    dims = tuple(range(-len(module.normalized_shape), 0))
    if output.shape != x.shape or tuple(x.shape[-len(dims):]) != tuple(module.normalized_shape):
        raise ValueError(
            f"{type(module).__name__} in the head does not normalise the last dims of its (B, C) input "
            f"{tuple(x.shape)}; use an nn.LayerNorm over the pooled features"
        )
    centred = x - x.mean(dim=dims, keepdim=True)
    sigma = (centred.detach().square().mean(dim=dims, keepdim=True) + module.eps).sqrt()
    held = centred / sigma
    if module.weight is not None:
        held = held * module.weight
    if module.bias is not None:
        held = held + module.bias
    return held
