"""Attention maps of a token model, captured by hooks for the rollout explainers.

timm's attention modules compute ``softmax(q k^T / sqrt(d))`` and pass it
through their ``attn_drop`` dropout before multiplying with ``v``, unless they
use the fused kernel (``F.scaled_dot_product_attention``), which never forms
the matrix. :func:`capture_attention` sets ``fused_attn = False`` on exactly
the hooked modules for the duration of one pass (no global environment
variable; the model's own setting is restored afterwards) and records each
block's (B, heads, N, N) attention as the output of its ``attn_drop``. The
recorded tensors stay in the autograd graph when gradients are enabled, so
gradient rollout differentiates the decision score with respect to them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from fam_lightning.explainers.base import Explainer, normalize_saliency
from fam_lightning.protocol import SimilarityModel


def token_model(model: nn.Module) -> nn.Module:
    """The first submodule of ``model`` that is a ViT-style token model (global attention, prefix tokens).

    Our :class:`~fam_lightning.backbones.external.TimmBackbone` of a ViT / DeiT /
    EVA / BEiT-style model, or a timm model itself (e.g. inside a
    :class:`~fam_lightning.adapter.SimilarityAdapter`).
    """
    for module in model.modules():
        prefix = getattr(module, "num_prefix_tokens", None)
        if isinstance(prefix, int) and getattr(module, "layout", "tokens") == "tokens":
            if attention_modules(module):
                return module
    raise ValueError(
        f"{type(model).__name__} has no ViT-style token model with global self-attention (a timm "
        "VisionTransformer / DeiT / EVA / BEiT with num_prefix_tokens); attention rollout needs one "
        "(Swin's windowed attention and CNNs have no token-to-token attention matrix)"
    )


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """timm global self-attention modules of ``model`` in forward order (windowed attention excluded)."""
    return [
        module
        for module in model.modules()
        if hasattr(module, "fused_attn") and isinstance(getattr(module, "attn_drop", None), nn.Module)
        and not hasattr(module, "window_size")
    ]


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[list[Tensor]]:
    """Within the block, every forward of ``model`` appends each block's (B, heads, N, N) attention.

    Yields the list the hooks fill (one entry per attention module and pass,
    in forward order).
    """
    modules = attention_modules(model)
    captured: list[Tensor] = []
    fused = [module.fused_attn for module in modules]

    def hook(_: nn.Module, __: tuple[Tensor, ...], output: Tensor) -> None:
        captured.append(output)

    handles = [module.attn_drop.register_forward_hook(hook) for module in modules]
    try:
        for module in modules:
            module.fused_attn = False
        yield captured
    finally:
        for module, was_fused in zip(modules, fused):
            module.fused_attn = was_fused
        for handle in handles:
            handle.remove()


def readout(relevance: Tensor, num_prefix_tokens: int, grid: tuple[int, int], rows: str) -> Tensor:
    """(B, N, N) token-to-token relevance -> (B, h, w) relevance of each patch to the decision.

    ``rows="patches"``: the mean over the patch-token rows, the read-out of an
    embedding that averages the patch tokens (GAP, our families);
    ``rows="class"``: the class token's row (token 0), for a class-token read-out.
    """
    patches = relevance[:, :, num_prefix_tokens:]  # (B, N, hw) columns: the patch tokens
    if rows == "class":
        if num_prefix_tokens < 1:
            raise ValueError("rows='class' needs a class token; this model has no prefix tokens")
        scores = patches[:, 0]
    elif rows == "patches":
        scores = patches[:, num_prefix_tokens:].mean(dim=1)
    else:
        raise ValueError(f"rows must be 'patches' or 'class', got {rows!r}")
    height, width = grid
    if scores.shape[1] != height * width:
        raise ValueError(f"{scores.shape[1]} patch tokens do not fill the {height} x {width} feature grid")
    return scores.view(-1, height, width)


class TokenExplainer(Explainer):
    """Base of the rollout explainers: the model's token backbone and the read-out rows.

    Args:
        model: a protocol model whose backbone is a timm ViT-style token model.
        rows: "patches" (the mean over patch tokens, what GAP pools) or "class".
    """

    needs_images = True

    def __init__(self, model: SimilarityModel, rows: str = "patches") -> None:
        super().__init__(model)
        self.tokens = token_model(model)  # type: ignore[arg-type]
        if rows not in ("patches", "class"):
            raise ValueError(f"rows must be 'patches' or 'class', got {rows!r}")
        self.rows = rows

    def saliency(self, relevance: Tensor, feature_maps: Tensor, images: Tensor) -> Tensor:
        """(B, N, N) token relevance -> (B, H, W) maps in [0, 1] on the feature maps' grid."""
        with torch.autocast(images.device.type, enabled=False):
            grid = (int(feature_maps.shape[-2]), int(feature_maps.shape[-1]))
            scores = readout(relevance, int(self.tokens.num_prefix_tokens), grid, self.rows)
            return normalize_saliency(scores, (int(images.shape[-2]), int(images.shape[-1])))
