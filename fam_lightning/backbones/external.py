"""Backbones from timm and torchvision: ``timm:<name>`` and ``torchvision:<name>``.

Both are built without weights (nothing is downloaded at run time); weights
come from a local file (``pretrained_path``), loaded into the full model
before its classifier is cut off, so a file saved from the full classifier
loads as is. What FAM sees is the protocol, not the model:

- timm: ``forward_features`` is timm's own (the last feature maps before
  ``forward_head``); the classifier is removed (``reset_classifier(0)``) and
  parameters ``forward_features`` never reaches (e.g. a pre-logits conv of
  ``forward_head``) are frozen, so DDP and optimisers see only the used ones.
- torchvision: the model cut before global pooling. Models with a
  ``features`` block (VGG, AlexNet, DenseNet, MobileNet, EfficientNet,
  ConvNeXt, SqueezeNet) use it (DenseNet plus the ReLU its forward applies
  after it; ConvNeXt's LayerNorm sits after the pooling, in the head, and is
  left out); the others (ResNet, ResNeXt, Wide ResNet, RegNet, GoogLeNet,
  Inception v3) keep their children before the ``avgpool`` child, auxiliary
  classifiers skipped. Anything else gets an error naming the model.

``out_channels`` comes from one dry run, which also checks that the output is
a (B, C, h, w) feature map: token sequences (ViT) are refused by name.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fam_lightning.backbones.weights import load_into, read_state_dict_file

log = logging.getLogger(__name__)

PREFIXES = ("timm", "torchvision")
DRY_RUN_SIDES = (64, 224, 299)


def is_external(name: str) -> bool:
    """Whether ``name`` names a timm / torchvision model (``timm:<name>``, ``torchvision:<name>``)."""
    return name.split(":", 1)[0] in PREFIXES and ":" in name


class ExternalBackbone(nn.Module):
    """A model from another library, seen through ``forward_features`` and ``out_channels``.

    Args:
        out_channels: C of the (B, C, h, w) feature maps.
        name: ``<library>:<model>``, for messages.
    """

    def __init__(self, out_channels: int, name: str) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.name = name

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)

    def extra_repr(self) -> str:
        return f"{self.name}, out_channels={self.out_channels}"


class TimmBackbone(ExternalBackbone):
    """A timm model (its classifier removed) used through its own ``forward_features``."""

    def __init__(self, model: nn.Module, out_channels: int, name: str) -> None:
        super().__init__(out_channels, name)
        self.model = model

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C, h, w)."""
        return self.model.forward_features(x)


class TorchvisionBackbone(ExternalBackbone):
    """A torchvision classifier cut before its global pooling (``features``: the part kept)."""

    def __init__(self, features: nn.Module, out_channels: int, name: str) -> None:
        super().__init__(out_channels, name)
        self.features = features

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C, h, w)."""
        return self.features(x)


def create_external_backbone(name: str, pretrained_path: str | None = None, **kwargs: object) -> nn.Module:
    """Build ``timm:<model>`` or ``torchvision:<model>`` without downloading anything.

    Args:
        name: ``timm:<model>`` or ``torchvision:<model>``.
        pretrained_path: optional local weight file of the full model
            (see :func:`fam_lightning.backbones.weights.read_state_dict_file`).
        **kwargs: forwarded to ``timm.create_model`` / ``torchvision.models.get_model``.
    """
    library, model_name = name.split(":", 1)
    if library == "timm":
        return _timm_backbone(name, model_name, pretrained_path, kwargs)
    if library == "torchvision":
        return _torchvision_backbone(name, model_name, pretrained_path, kwargs)
    raise ValueError(f"backbone {name!r}: unknown library {library!r}; expected one of {', '.join(PREFIXES)}")


def _timm_backbone(name: str, model_name: str, pretrained_path: str | None, kwargs: dict) -> TimmBackbone:
    try:
        import timm
    except ImportError:
        raise ImportError(f"backbone {name!r} needs timm: pip install 'timm>=1.0,<2'") from None
    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name}*")[:10]
        raise ValueError(f"backbone {name!r}: timm has no model {model_name!r}; similar: {', '.join(close) or 'none'}")
    model = timm.create_model(model_name, pretrained=False, **kwargs)
    if pretrained_path is not None:
        head = model.pretrained_cfg.get("classifier") or "fc"
        heads = (head,) if isinstance(head, str) else tuple(head)
        load_into(model, read_state_dict_file(pretrained_path), name, str(pretrained_path), optional=heads)
    model.reset_classifier(0)
    input_size = model.pretrained_cfg.get("input_size", (3, 224, 224))
    channels = _dry_run(name, model.forward_features, model, sides=(64, *input_size[1:2]), freeze_unused=True)
    return TimmBackbone(model, channels, name)


def _torchvision_backbone(
    name: str, model_name: str, pretrained_path: str | None, kwargs: dict
) -> TorchvisionBackbone:
    import torchvision

    try:
        model = torchvision.models.get_model(model_name, weights=None, **kwargs)
    except ValueError:
        known = ", ".join(torchvision.models.list_models(module=torchvision.models)[:12])
        raise ValueError(
            f"backbone {name!r}: torchvision has no classification model {model_name!r} (e.g. {known}, ...)"
        ) from None
    if pretrained_path is not None:
        head = [n for n, _ in model.named_children() if n in ("fc", "classifier", "heads", "head")]
        aux = [n for n, _ in model.named_children() if n.lower().startswith("aux")]
        load_into(model, read_state_dict_file(pretrained_path), name, str(pretrained_path), optional=head + aux)
    features = torchvision_features(model, name)
    channels = _dry_run(name, features, features, sides=DRY_RUN_SIDES, freeze_unused=False)
    return TorchvisionBackbone(features, channels, name)


def torchvision_features(model: nn.Module, name: str) -> nn.Module:
    """The part of a torchvision classifier before its global pooling (see the module docstring)."""
    import torchvision.models as tvm

    if isinstance(model, tvm.SwinTransformer | tvm.VisionTransformer):
        raise ValueError(
            f"backbone {name!r} is a transformer ({type(model).__name__}): its features are tokens, "
            "not (B, C, h, w) conv feature maps; use a convolutional model or fam_lightning.adapter"
        )
    features = getattr(model, "features", None)
    if isinstance(features, nn.Module):
        if isinstance(model, tvm.DenseNet):
            return nn.Sequential(OrderedDict(features=features, relu=nn.ReLU()))  # DenseNet.forward: F.relu
        return features
    children = list(model.named_children())
    pools = [i for i, (_, child) in enumerate(children) if isinstance(child, nn.AdaptiveAvgPool2d)]
    if not pools:
        raise ValueError(
            f"backbone {name!r} ({type(model).__name__}) has neither a `features` block nor an `avgpool` "
            "child, so where its feature maps end is not known; wrap it with "
            "fam_lightning.adapter.SimilarityAdapter(model, target_layer=...) instead"
        )
    kept = [(child_name, child) for child_name, child in children[: pools[0]] if not child_name.lower().startswith("aux")]
    return nn.Sequential(OrderedDict(kept))


def _dry_run(name: str, run: object, module: nn.Module, sides: Sequence[int], freeze_unused: bool) -> int:
    """Channels of the (B, C, h, w) output of ``run`` on a blank image; the first side that works."""
    was_training = module.training
    module.eval()
    error: Exception | None = None
    try:
        for side in dict.fromkeys(sides):
            try:
                with torch.set_grad_enabled(freeze_unused):
                    out = run(torch.zeros(1, 3, side, side))  # type: ignore[operator]
            except (RuntimeError, AssertionError) as exc:  # too small / fixed-size model: try the next side
                error = exc
                continue
            if out.dim() != 4:
                raise ValueError(
                    f"backbone {name!r} returns {tuple(out.shape)} from forward_features, not (B, C, h, w) "
                    "feature maps (a token sequence?); FAM needs convolutional feature maps"
                )
            expected = getattr(module, "num_features", None)
            if expected is not None and out.shape[1] != expected and out.shape[-1] == expected:
                raise ValueError(
                    f"backbone {name!r} returns channels-last {tuple(out.shape)} from forward_features; "
                    "FAM needs (B, C, h, w): wrap it with fam_lightning.adapter.SimilarityAdapter("
                    "..., reshape_transform=lambda a: a.permute(0, 3, 1, 2))"
                )
            if freeze_unused:
                _freeze_unreached(module, out)
            return int(out.shape[1])
    finally:
        module.train(was_training)
    raise ValueError(f"backbone {name!r} failed a dry run at {', '.join(map(str, sides))} px: {error}")


def _freeze_unreached(module: nn.Module, out: Tensor) -> None:
    """Freeze parameters the output does not depend on (e.g. a timm pre-logits conv)."""
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.float().sum(), params, allow_unused=True)
    unreached = [p for p, g in zip(params, grads) if g is None]
    for p in unreached:
        p.requires_grad_(False)
    if unreached:
        log.info("frozen %d parameter tensors that forward_features does not use", len(unreached))
