"""Gradient-weighted attention rollout (Chefer, Gur & Wolf, ICCV 2021) on the similarity score, batched.

Per block ``l``, the attention ``A_l`` (B, heads, N, N) is weighted by the
gradient of the decision score ``S`` (the mean similarity to the references)
with respect to it, positive part averaged over heads:
``Ā_l = mean_h (dS/dA_l ⊙ A_l)^+``; the relevance starts as the identity and
accumulates ``R <- R + Ā_l R`` block by block (their eq. 13 for
self-attention). A patch's relevance is read from ``R`` as in
:mod:`fam_lightning.explainers.rollout` (the mean over the patch-token rows
for our GAP embeddings, or the class token's row). One backbone pass with the
attention captured and one backward pass to the attention maps; no
parameter's ``.grad`` is touched.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fam_lightning.explainers._attention import TokenExplainer, capture_attention
from fam_lightning.explainers.base import Passes, at_least_float32, decision_scores


def gradient_rollout(attentions: list[Tensor], gradients: list[Tensor]) -> Tensor:
    """Per block (B, heads, N, N) attention and dS/dattention, forward order -> (B, N, N) ``R - I``.

    ``R`` starts as the identity and accumulates ``R <- R + Ā R``; what is
    returned is ``Q = R - I``, accumulated as ``Q <- Q + Ā (I + Q)``, so that
    gradients far smaller than 1 are not lost to float32 round-off next to the
    identity. The identity adds the same constant to every patch's mean-row
    read-out and nothing to the class row's patch columns, which min-max removes.
    """
    if not attentions:
        raise ValueError("no attention was captured: the model ran no attention block")
    extra = None
    for attention, gradient in zip(attentions, gradients):
        weighted = (at_least_float32(gradient) * at_least_float32(attention)).clamp_min(0).mean(dim=1)
        extra = weighted if extra is None else extra + weighted + weighted @ extra
    return extra


class GradientRollout(TokenExplainer):
    """Chefer et al.'s gradient-weighted rollout with the decision score as target.

    Args:
        model: a protocol model whose backbone is a timm ViT-style token model.
        rows: "patches" (the mean over patch tokens, what GAP pools) or "class".
    """

    name = "grad_rollout"

    def explain(
        self,
        images: Tensor,
        feature_maps: Tensor,
        references: Tensor | None,
        reference_weights: Tensor | None = None,
    ) -> Tensor:
        # inference_mode(False): callable inside a Lightning eval loop; the images
        # require grad so the graph exists even when every parameter is frozen.
        with torch.inference_mode(False), torch.enable_grad(), capture_attention(self.tokens) as attentions:
            inputs = images.detach().clone().requires_grad_(True)
            refs = None if references is None else references.detach().clone()
            weights = None if reference_weights is None else reference_weights.detach().clone()
            embeddings = at_least_float32(self.model.embed(self.model.forward_features(inputs)))
            gradients = torch.autograd.grad(decision_scores(self.model, embeddings, refs, weights).sum(), attentions)
        with torch.no_grad():
            return self.saliency(gradient_rollout([a.detach() for a in attentions], list(gradients)), feature_maps, images)

    def forward_passes_per_image(self, channels: int) -> Passes:
        return Passes(backbone=2, backward=1)
