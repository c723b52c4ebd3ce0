"""Attention rollout (Abnar & Zuidema 2020) for ViT-style token models, batched.

Per block ``l`` the heads' attention is averaged, ``A_l = mean_h attn_h``
(B, N, N), the residual connection is accounted for as
``Â_l = (A_l + I) / 2`` (rows renormalised), and the rollout is the product
``R = Â_L ... Â_1``: ``R[i, j]`` is how much of token ``j`` (entering the
first block) flows into token ``i`` (leaving the last). The decision
embedding of our families averages the patch tokens, so a patch's relevance
is the mean of its column over the patch-token rows (``rows="patches"``);
``rows="class"`` reads the class token's row instead. Reference-free (the
attention does not depend on the decision's references); one extra backbone
pass with the attention captured (:mod:`fam_lightning.explainers._attention`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fam_lightning.explainers._attention import TokenExplainer, capture_attention
from fam_lightning.explainers.base import Passes, at_least_float32


def rollout(attentions: list[Tensor]) -> Tensor:
    """(B, heads, N, N) attention of each block, in forward order -> (B, N, N) ``Â_L ... Â_1``."""
    result = None
    for attention in attentions:
        mixed = at_least_float32(attention).mean(dim=1)  # (B, N, N)
        eye = torch.eye(mixed.shape[-1], device=mixed.device, dtype=mixed.dtype)
        mixed = 0.5 * mixed + 0.5 * eye
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        result = mixed if result is None else mixed @ result
    if result is None:
        raise ValueError("no attention was captured: the model ran no attention block")
    return result


class AttentionRollout(TokenExplainer):
    """Attention rollout over every block of the model's ViT-style backbone.

    Args:
        model: a protocol model whose backbone is a timm ViT-style token model.
        rows: "patches" (the mean over patch tokens, what GAP pools) or "class".
    """

    name = "rollout"
    needs_references = False

    def explain(
        self,
        images: Tensor,
        feature_maps: Tensor,
        references: Tensor | None = None,
        reference_weights: Tensor | None = None,
    ) -> Tensor:
        with torch.no_grad(), capture_attention(self.tokens) as attentions:
            self.model.forward_features(images)
            with torch.autocast(images.device.type, enabled=False):
                return self.saliency(rollout(attentions), feature_maps, images)

    def forward_passes_per_image(self, channels: int) -> Passes:
        return Passes(backbone=2)
