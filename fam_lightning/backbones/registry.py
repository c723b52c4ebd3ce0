"""Backbone registry: tiny entry points by name, timm-style."""

from __future__ import annotations

from typing import Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register an entry point under its function name (``@register_backbone``)."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"backbone {fn.__name__!r} is registered twice")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`."""
    return sorted(_REGISTRY)


def create_backbone(name: str, **kwargs: object) -> nn.Module:
    """Build a registered backbone; it exposes ``forward_features`` and ``out_channels``."""
    try:
        entry = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone {name!r}; registered backbones: {', '.join(list_backbones())}"
        ) from None
    return entry(**kwargs)
