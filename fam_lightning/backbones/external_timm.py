"""timm backbones (``timm:<name>``): timm's own ``forward_features``, token models laid out as grids.

See :mod:`fam_lightning.backbones.external` for what FAM sees; weights come from a local file only.
"""

from __future__ import annotations

import logging

from torch import Tensor, nn

from fam_lightning.backbones.external_base import ExternalBackbone, _dry_run
from fam_lightning.backbones.tokens import tokens_to_grid
from fam_lightning.backbones.weights import load_into, read_state_dict_file

log = logging.getLogger(__name__)


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

