"""FAM for class-token ViTs: the last block's read-out of the class token, split over the tokens.

A class-token model (timm ``global_pool="token"``: ViT, DeiT; DeiT-distilled
averages the class and distillation tokens) does not embed by pooling its
patch tokens, so the CNN decomposition does not apply. What is decomposed
instead is the last block's read-out. With ``X`` the tokens entering the last
block, ``h = norm1(X)`` and the attention weights ``a`` **held fixed** (those
the model computed for this image), the read-out row ``r`` after attention is
exactly linear in the tokens' values::

    y_r = X_r + ls1(b_o + W_o b_v + sum_j sum_heads a_{r j} W_o,head W_v,head h_j)

(``sum_j a_{r j} = 1`` puts every value bias in ``W_o b_v``). The rest of the
model, ``z = fc_norm(mean_r norm(y_r + ls2(mlp(norm2(y_r)))))``, is linearised
by one autograd call at ``y``: ``g = d(beta . z) / dy`` with ``beta`` the
similarity coefficients (cosine: the norms held fixed, as everywhere in FAM)
and the final norms' standard deviations held fixed
(:func:`fam_lightning.fam.held_norm_statistics`). Then

    similarity = sum_patches c_j + sum_prefix c_j + class_path + remainder   (exactly)

- ``c_j = g . ls1(sum_heads a_{r j} W_o,head W_v,head h_j)``: token ``j``'s
  contribution through the read-out's attention (patch tokens -> the map;
  prefix tokens that are not read out -> ``prefix``: registers);
- ``class_path = g . (X_r + ls1(b_o + W_o b_v))`` plus the read-out tokens' own
  attention terms: the class (and distillation) token's residual stream and the biases;
- ``remainder = similarity - g . y``: the final norm's bias share and what the
  linearisation of the MLP branch misses (zero MLP branch: exactly the bias share).

Held fixed, in words: the attention weights of the last block, the final
LayerNorms' per-sample standard deviations and, for cosine, the embedding's
and references' norms. Everything before the last block (which shaped ``h_j``)
is not decomposed further: ``h_j`` is what token ``j`` offers the read-out.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from fam_lightning.explainers._attention import capture_attention
from fam_lightning.fam import _reference_mixture, _similarity_coefficients
from fam_lightning.held_norms import held_norm_statistics
from fam_lightning.similarity import mean_similarity


class ClassTokenDecomposition(NamedTuple):
    """``patches.sum((1, 2)) + prefix.sum(1) + class_path + remainder == similarity``."""

    patches: Tensor  # (B, h, w) each patch token's contribution through the last block's read-out
    prefix: Tensor  # (B, P - R) the other prefix tokens' (registers), in token order
    class_path: Tensor  # (B,) the read-out tokens' own path (residual stream, own attention terms, biases)
    remainder: Tensor  # (B,) the final norm's bias share + what linearising the MLP branch misses
    similarity: Tensor  # (B,) the decision score, from the model's own embedding


def _readout_rows(vit: nn.Module) -> list[int]:
    pool = getattr(vit, "global_pool", None)
    if pool != "token" or getattr(vit, "attn_pool", None) is not None:
        raise ValueError(
            f"{type(vit).__name__} (global_pool={pool!r}) does not read out its class token; a pooled "
            "model is exact through fam.decompose over its patch-token grid"
        )
    if getattr(vit, "dist_token", None) is not None:  # DeiT distilled: (class + distillation) / 2
        return [0, 1]
    if getattr(vit, "cls_token", None) is None:
        raise ValueError(f"{type(vit).__name__} has no class token")
    return [0]


def decompose_class_token(
    vit: nn.Module,
    images: Tensor,
    references: Tensor,
    similarity: str = "cosine",
    reference_weights: Tensor | None = None,
) -> ClassTokenDecomposition:
    """Split a class-token ViT's similarity over its tokens (see the module docstring).

    Args:
        vit: a timm ``VisionTransformer`` (or DeiT-distilled) with ``global_pool="token"``,
            its classifier removed or ignored: the embedding is
            ``vit.forward_head(vit.forward_features(x), pre_logits=True)``.
        images: (B, 3, H, W) normalised images.
        references: (B, N, D) or (B, D) reference embeddings (same embedding).
        similarity: "cosine" or "dot".
        reference_weights: optional (B, N) weights over the references.
    """
    if similarity not in ("cosine", "dot"):
        raise ValueError(f"the class-token decomposition needs a cosine or dot similarity, got {similarity!r}")
    rows = _readout_rows(vit)
    block = vit.blocks[-1]
    attn = block.attn
    if not isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity) or getattr(attn, "gate", None) is not None:
        raise ValueError(f"{type(attn).__name__} normalises or gates its attention output: not linear in the values")
    prefix = int(vit.num_prefix_tokens)
    refs = references.unsqueeze(1) if references.dim() == 2 else references
    entering: list[Tensor] = []
    handle = block.register_forward_pre_hook(lambda _, args: entering.append(args[0]))
    try:
        with torch.no_grad(), capture_attention(block) as attentions:
            tokens = vit.forward_features(images)
            embedding = vit.forward_head(tokens, pre_logits=True)
    finally:
        handle.remove()
    total = mean_similarity(embedding, refs, similarity, reference_weights)
    x, a = entering[-1].detach(), attentions[-1].detach()  # (B, N, C), (B, heads, N, N)
    batch, count, dim = x.shape
    heads = attn.num_heads
    with torch.no_grad():
        h = block.norm1(x)
        qkv_bias = attn.qkv.bias
        w_v = attn.qkv.weight[2 * dim:]  # (C_attn, C)
        values = (h @ w_v.t()).view(batch, count, heads, -1).transpose(1, 2)  # (B, heads, N, d), no bias
        read = a[:, :, rows]  # (B, heads, R, N)
        # per read-out row r and token j: concat_heads a_{r j} v_j, then W_o (no bias), then ls1
        mixed = read.unsqueeze(-1) * values.unsqueeze(2)  # (B, heads, R, N, d)
        mixed = mixed.permute(0, 2, 3, 1, 4).reshape(batch, len(rows), count, -1)  # (B, R, N, heads*d)
        terms = block.ls1(mixed @ attn.proj.weight.t())  # (B, R, N, C)
        b_v = torch.zeros(w_v.shape[0], dtype=x.dtype, device=x.device) if qkv_bias is None else qkv_bias[2 * dim:]
        bias = attn.proj(b_v.unsqueeze(0)).squeeze(0)  # W_o b_v + b_o
        own = x[:, rows] + block.ls1(bias)  # (B, R, C)
        y = own + terms.sum(2)  # (B, R, C): the read-out rows after attention, exactly
    with torch.inference_mode(False), torch.enable_grad(), held_norm_statistics(nn.ModuleList([vit.norm, vit.fc_norm])):
        y_var = y.clone().requires_grad_(True)
        out = y_var + block.ls2(block.mlp(block.norm2(y_var)))
        z = vit.fc_norm(vit.norm(out).mean(1))  # (B, D): the mean over the read-out rows (one row: itself)
        mix = _reference_mixture(refs, reference_weights)
        beta = _similarity_coefficients(z.detach(), refs.clone(), mix.clone(), similarity)
        (g,) = torch.autograd.grad((beta * z).sum(), y_var)  # (B, R, C)
    contributions = torch.einsum("brnc,brc->bn", terms, g)  # (B, N)
    # the read-out tokens' own attention terms belong to their own path, not to a patch
    class_path = (g * own).sum((1, 2)) + contributions[:, rows].sum(1)
    others = [j for j in range(prefix) if j not in rows]
    grid = _grid(vit, images, count - prefix)
    linear = (g * y).sum((1, 2))
    return ClassTokenDecomposition(
        patches=contributions[:, prefix:].reshape(batch, *grid),
        prefix=contributions[:, others],
        class_path=class_path,
        remainder=total - linear,
        similarity=total,
    )


def _grid(vit: nn.Module, images: Tensor, patches: int) -> tuple[int, int]:
    embed = vit.patch_embed
    size = (int(images.shape[-2]), int(images.shape[-1]))
    grid = tuple(embed.dynamic_feat_size(size)) if getattr(vit, "dynamic_img_size", False) else tuple(embed.grid_size)
    if grid[0] * grid[1] != patches:
        raise ValueError(f"{patches} patch tokens do not fill the {grid[0]} x {grid[1]} grid")
    return grid  # type: ignore[return-value]


def class_token_map(parts: ClassTokenDecomposition, size: tuple[int, int] | None = None) -> Tensor:
    """(B, H, W) map in [0, 1] of the patch contributions (ReLU, min-max, bilinear upsampling, as every map)."""
    from fam_lightning.explainers.base import normalize_saliency

    return normalize_saliency(parts.patches, size)
