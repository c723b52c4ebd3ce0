"""Backbones from timm and torchvision: ``timm:<name>`` and ``torchvision:<name>``.

Both are built without weights (nothing is downloaded at run time); weights
come from a local file (``pretrained_path``), loaded into the full model
before its classifier is cut off, so a file saved from the full classifier
loads as is. What FAM sees is the protocol, not the model:

- timm: ``forward_features`` is timm's own (the last feature maps before
  ``forward_head``); the classifier is removed (``reset_classifier(0)``) and
  parameters ``forward_features`` never reaches (e.g. a pre-logits conv of
  ``forward_head``, a GAP ViT's ``fc_norm``) are frozen, so DDP and optimisers
  see only the used ones. Token models become grids of their patch tokens
  (:mod:`fam_lightning.backbones.tokens`): ViT / DeiT / EVA / BEiT-style
  sequences drop their ``num_prefix_tokens`` (class, distillation, registers)
  and are laid out on ``patch_embed.dynamic_feat_size`` of the actual input;
  Swin-style channels-last maps are permuted to channels first. Models whose
  constructor takes ``dynamic_img_size`` get ``True`` unless
  ``backbone_kwargs`` say otherwise, so any input size works (position
  embeddings resampled); a fixed-size model fed another size stops with an
  error naming both sizes. :meth:`TimmBackbone.pooled_head` is the model's
  own pooled head (pooling + ``fc_norm`` / ConvNeXt's norm) for
  :meth:`fam_lightning.adapter.SimilarityAdapter.from_timm`.
- torchvision: the model cut before global pooling. Models with a
  ``features`` block (VGG, AlexNet, DenseNet, MobileNet, EfficientNet,
  ConvNeXt, SqueezeNet) use it (DenseNet plus the ReLU its forward applies
  after it; ConvNeXt's LayerNorm sits after the pooling, in the head, and is
  left out); the others (ResNet, ResNeXt, Wide ResNet, RegNet, GoogLeNet,
  Inception v3) keep their children before the ``avgpool`` child, auxiliary
  classifiers skipped. Anything else gets an error naming the model.

``out_channels`` comes from one dry run (timm: at the size the model is built
for, ``img_size``), which also checks that the output is a (B, C, h, w) grid:
torchvision transformers are refused by name.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fam_lightning.backbones.tokens import tokens_to_grid
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
    """A timm model (its classifier removed) used through its own ``forward_features``, as a grid.

    Attributes:
        layout: "nchw" (CNNs), "nhwc" (Swin-style channels-last maps) or
            "tokens" (ViT-style sequences: prefix tokens, then the patch tokens).
        num_prefix_tokens: class / distillation / register tokens (0 unless "tokens").
    """

    def __init__(self, model: nn.Module, out_channels: int, name: str) -> None:
        super().__init__(out_channels, name)
        self.model = model
        self.layout = timm_layout(model)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0)) if self.layout == "tokens" else 0

    @property
    def patch_embed(self) -> nn.Module | None:
        """The patch embedding that fixes the token grid (None for CNNs)."""
        return _patch_embed(self.model)

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the patch-token grid for an (H, W) input (token models)."""
        embed = self.patch_embed
        if embed is None:
            raise ValueError(f"backbone {self.name!r} has no patch embedding: its grid is its feature map")
        if getattr(self.model, "dynamic_img_size", False) or not getattr(embed, "strict_img_size", True):
            return tuple(embed.dynamic_feat_size(tuple(image_size)))
        return tuple(embed.grid_size)

    def check_input_size(self, image_size: tuple[int, int]) -> None:
        """A fixed-size token model fed another size: an error naming both sizes."""
        embed = self.patch_embed
        if embed is None or getattr(self.model, "dynamic_img_size", False):
            return
        built = getattr(embed, "img_size", None)
        if built is not None and getattr(embed, "strict_img_size", True) and tuple(built) != tuple(image_size):
            raise ValueError(
                f"backbone {self.name!r} was built for {built[0]} x {built[1]} px inputs but got "
                f"{image_size[0]} x {image_size[1]}; build it with backbone_kwargs "
                f'{{"img_size": [{image_size[0]}, {image_size[1]}]}} or {{"dynamic_img_size": true}}'
            )

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, C, h, w): feature maps, or the patch tokens laid out as a grid."""
        image_size = (int(x.shape[-2]), int(x.shape[-1]))
        if self.layout == "nchw":
            return self.model.forward_features(x)
        self.check_input_size(image_size)
        out = self.model.forward_features(x)
        if self.layout == "nhwc":
            return tokens_to_grid(out, channels_last=True)
        return tokens_to_grid(out, self.grid_size(image_size), self.num_prefix_tokens)

    def pooled_head(self) -> tuple[str, nn.Module | None]:
        """The model's own pooled head as (pooling, projection): timm's ``forward_head(pre_logits=True)``.

        GAP / GMP over the patch tokens (or the feature map), then the
        model's norm after pooling (a GAP ViT's ``fc_norm``, ConvNeXt's head
        norm) as an ``nn.LayerNorm`` sharing the model's parameters, and a
        pre-logits MLP if the head has one. Heads that are not a pooling of
        the grid (a class-token read-out, attention pooling, avg+max) are
        refused by name.
        """
        return timm_pooled_head(self.model, self.layout, self.name)


def timm_layout(model: nn.Module) -> str:
    """"nhwc" (``output_fmt`` NHWC), "tokens" (a patch embedding and prefix tokens) or "nchw"."""
    if getattr(model, "output_fmt", "NCHW") == "NHWC":
        return "nhwc"
    if _patch_embed(model) is not None and hasattr(model, "num_prefix_tokens"):
        return "tokens"
    return "nchw"


def _patch_embed(model: nn.Module) -> nn.Module | None:
    for attr in ("patch_embed", "stem"):
        embed = getattr(model, attr, None)
        if isinstance(embed, nn.Module) and hasattr(embed, "dynamic_feat_size"):
            return embed
    return None


def _pool_type(pool: object) -> str:
    return pool if isinstance(pool, str) else str(getattr(pool, "pool_type", ""))


def timm_pooled_head(model: nn.Module, layout: str, name: str) -> tuple[str, nn.Module | None]:
    """See :meth:`TimmBackbone.pooled_head`."""
    head = getattr(model, "head", None)
    if layout == "tokens":
        if getattr(model, "attn_pool", None) is not None:
            raise ValueError(f"backbone {name!r} pools its tokens with attention (MAP), not a sum over tokens")
        if getattr(model, "pool_include_prefix", False):
            raise ValueError(f"backbone {name!r} pools its prefix tokens with the patch tokens")
        pool, norm, pre_logits = _pool_type(getattr(model, "global_pool", "")), getattr(model, "fc_norm", None), None
    elif isinstance(getattr(head, "global_pool", None), nn.Module):  # Swin, ConvNeXt (NormMlpClassifierHead)
        pool, norm, pre_logits = _pool_type(head.global_pool), getattr(head, "norm", None), getattr(head, "pre_logits", None)
    else:  # CNNs: model.global_pool
        pool, norm, pre_logits = _pool_type(getattr(model, "global_pool", "")), None, None
    poolings = {"avg": "gap", "max": "gmp"}
    if pool not in poolings:
        what = "reads out its class token" if pool == "token" else f"pools with {pool or 'nothing'!r}"
        hint = "; its own embedding: fam_lightning.class_token.decompose_class_token" if pool == "token" else ""
        raise ValueError(
            f"backbone {name!r} {what}, which is not a pooling of its patch-token grid; explain it with the "
            f"family's own pooling (pooling='gap' over the patch tokens) or a model with global_pool='avg'{hint}"
        )
    layers: list[nn.Module] = []
    if isinstance(norm, nn.LayerNorm):
        layers.append(_pooled_layer_norm(norm))
    elif norm is not None and not isinstance(norm, nn.Identity):
        raise ValueError(f"backbone {name!r}: its head norm {type(norm).__name__} is not a LayerNorm")
    if pre_logits is not None and not isinstance(pre_logits, nn.Identity):
        layers.append(pre_logits)
    projection = None if not layers else layers[0] if len(layers) == 1 else nn.Sequential(*layers)
    return poolings[pool], projection


def _pooled_layer_norm(norm: nn.LayerNorm) -> nn.LayerNorm:
    """A (B, C) LayerNorm sharing ``norm``'s parameters (timm's LayerNorm2d normalises dim 1 of (B, C, 1, 1))."""
    from timm.layers import LayerNorm2d

    if not isinstance(norm, LayerNorm2d):
        return norm  # normalises the last dim already
    pooled = nn.LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=norm.elementwise_affine)
    if norm.elementwise_affine:
        pooled.weight = norm.weight
        pooled.bias = norm.bias
    return pooled


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
    model = _create_timm(timm, model_name, kwargs)
    if pretrained_path is not None:
        head = model.pretrained_cfg.get("classifier") or "fc"
        heads = (head,) if isinstance(head, str) else tuple(head)
        state = _resample_position_embedding(model, read_state_dict_file(pretrained_path), name)
        load_into(model, state, name, str(pretrained_path), optional=heads)
    model.reset_classifier(0)
    backbone = TimmBackbone(model, 0, name)
    backbone.out_channels = _dry_run(name, backbone.forward_features, model, sides=_timm_sizes(model), freeze_unused=True)
    return backbone


def _create_timm(timm: object, model_name: str, kwargs: dict) -> nn.Module:
    """``timm.create_model`` without weights; ``dynamic_img_size=True`` where the model takes it."""
    if "dynamic_img_size" in kwargs:
        return timm.create_model(model_name, pretrained=False, **kwargs)  # type: ignore[attr-defined]
    try:
        return timm.create_model(model_name, pretrained=False, dynamic_img_size=True, **kwargs)  # type: ignore[attr-defined]
    except TypeError as exc:
        if "dynamic_img_size" not in str(exc):
            raise
    return timm.create_model(model_name, pretrained=False, **kwargs)  # type: ignore[attr-defined]


def _resample_position_embedding(model: nn.Module, state: dict, name: str) -> dict:
    """A file's ``pos_embed`` from another image size, resampled to the model's grid (as timm does)."""
    own, theirs, embed = getattr(model, "pos_embed", None), state.get("pos_embed"), _patch_embed(model)
    if not isinstance(own, Tensor) or not isinstance(theirs, Tensor) or embed is None or theirs.shape == own.shape:
        return state
    prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 0))
    side = int(round((theirs.shape[1] - prefix) ** 0.5))
    if theirs.dim() != 3 or side * side != theirs.shape[1] - prefix:
        return state  # not a square grid's embedding: the shape mismatch is reported by load_into
    from timm.layers import resample_abs_pos_embed

    resampled = resample_abs_pos_embed(theirs, new_size=list(embed.grid_size), old_size=[side, side],
                                       num_prefix_tokens=prefix, verbose=False)
    log.info("backbone %r: pos_embed resampled from a %d x %d to a %d x %d grid", name, side, side, *embed.grid_size)
    return {**state, "pos_embed": resampled}


def _timm_sizes(model: nn.Module) -> list[tuple[int, int]]:
    """Dry-run sizes: the size the model is built for (``img_size``: what the data must feed), else 64, default."""
    embed = _patch_embed(model)
    built = getattr(embed, "img_size", None) if embed is not None else None
    if built is not None:
        return [tuple(int(side) for side in built)]
    side = int(model.pretrained_cfg.get("input_size", (3, 224, 224))[1])
    return [(64, 64), (side, side)]


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
    channels = _dry_run(name, features, features, sides=[(side, side) for side in DRY_RUN_SIDES], freeze_unused=False)
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


def _dry_run(
    name: str, run: object, module: nn.Module, sides: Sequence[tuple[int, int]], freeze_unused: bool
) -> int:
    """Channels of the (B, C, h, w) output of ``run`` on a blank image; the first (H, W) that works."""
    was_training = module.training
    module.eval()
    error: Exception | None = None
    try:
        for height, width in dict.fromkeys(sides):
            try:
                with torch.set_grad_enabled(freeze_unused):
                    out = run(torch.zeros(1, 3, height, width))  # type: ignore[operator]
            except (RuntimeError, AssertionError) as exc:  # too small / fixed-size model: try the next side
                error = exc
                continue
            if out.dim() != 4:
                raise ValueError(
                    f"backbone {name!r} returns {tuple(out.shape)} from forward_features, not (B, C, h, w) "
                    "feature maps (a token sequence whose layout is not known?); wrap the model with "
                    "fam_lightning.adapter.SimilarityAdapter(..., token_grid=TokenGrid(patch_size, num_prefix_tokens))"
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
    tried = ", ".join(f"{h} x {w}" for h, w in dict.fromkeys(sides))
    raise ValueError(f"backbone {name!r} failed a dry run at {tried} px: {error}")


def _freeze_unreached(module: nn.Module, out: Tensor) -> None:
    """Freeze parameters the output does not depend on (e.g. a timm pre-logits conv)."""
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.float().sum(), params, allow_unused=True)
    unreached = [p for p, g in zip(params, grads) if g is None]
    for p in unreached:
        p.requires_grad_(False)
    if unreached:
        log.info("frozen %d parameter tensors that forward_features does not use", len(unreached))
