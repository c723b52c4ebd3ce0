"""Backbone registry: tiny entry points by name, timm-style, plus ``timm:<name>`` / ``torchvision:<name>``."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_backbone(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register an entry point under its function name (``@register_backbone``)."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"backbone {fn.__name__!r} is registered twice")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone` (besides ``timm:<name>`` and ``torchvision:<name>``)."""
    return sorted(_REGISTRY)


def create_backbone(name: str, pretrained_path: str | None = None, **kwargs: Any) -> nn.Module:
    """Build a backbone; it exposes ``forward_features`` and ``out_channels``.

    Args:
        name: a registered name (``list_backbones()``), ``timm:<model>`` or
            ``torchvision:<model>`` (see :mod:`fam_lightning.backbones.external`).
        pretrained_path: optional local weight file. For registered ResNets
            (``resnet18``, ``resnet50``) a torchvision-layout ResNet state_dict
            is renamed to ours; it must then be built with ``slope=0`` (ReLU).
        **kwargs: forwarded to the entry point (timm / torchvision: to their factories).
    """
    from fam_lightning.backbones.external import create_external_backbone, is_external

    if is_external(name):
        return create_external_backbone(name, pretrained_path=pretrained_path, **kwargs)
    try:
        entry = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone {name!r}; registered backbones: {', '.join(list_backbones())}, "
            "or timm:<name> / torchvision:<name>"
        ) from None
    backbone = entry(**kwargs)
    if pretrained_path is not None:
        _load_registered(backbone, name, pretrained_path)
    return backbone


def _load_registered(backbone: nn.Module, name: str, pretrained_path: str) -> None:
    from fam_lightning.backbones.weights import (
        is_torchvision_resnet, load_into, read_state_dict_file, strip_prefix, torchvision_resnet_to_ours,
    )

    state = read_state_dict_file(pretrained_path)
    if is_torchvision_resnet(state):
        state = torchvision_resnet_to_ours(state)
    else:
        state = strip_prefix(state, "backbone.")  # a LightningModule's backbone, saved on its own
    load_into(backbone, state, name, str(pretrained_path))


def build_backbone(
    backbone: str | nn.Module,
    pretrained_path: str | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    **registry_defaults: Any,
) -> nn.Module:
    """What a model's ``backbone`` argument names: a module as is, or a name built by :func:`create_backbone`.

    Args:
        backbone: an ``nn.Module`` with ``forward_features`` and ``out_channels``, or a name.
        pretrained_path: local weight file for a named backbone.
        backbone_kwargs: extra arguments for the backbone's factory.
        **registry_defaults: the model's defaults for its registered backbones
            (e.g. ``slope``); timm / torchvision backbones do not get them.
    """
    from fam_lightning.backbones.external import is_external

    if isinstance(backbone, nn.Module):
        if pretrained_path is not None or backbone_kwargs:
            raise ValueError("pretrained_path and backbone_kwargs apply to a backbone given by name, not a module")
        module = backbone
    else:
        kwargs = dict(backbone_kwargs or {})
        if not is_external(backbone):
            kwargs = {**registry_defaults, **kwargs}
        module = create_backbone(backbone, pretrained_path=pretrained_path, **kwargs)
    missing = [attr for attr in ("forward_features", "out_channels") if not hasattr(module, attr)]
    if missing:
        raise TypeError(f"backbone {type(module).__name__} has no {' and no '.join(missing)}")
    return module
