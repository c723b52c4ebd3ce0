"""Feature Activation Map (FAM) arithmetic as pure, batched torch functions.

Liao et al., "Feature Activation Map: Visual Explanation of Deep Learning Models
for Image Classification" (eq. 11-18). Every function runs on the device and in
the dtype of its inputs, with no host copies and no host syncs.

The chain, for a query image with last-conv feature maps ``A`` (B, C, h, w):

1. ``u = pool(A)``                                   (B, C)
2. ``v = W u`` (or ``v = u`` without a head)         (B, D)
3. contributions ``c_d`` of each embedding dimension to the (weighted) mean
   similarity to N references ``s_n`` (eq. 11, 15),
4. back through the head: ``w_k = u_k (W^T beta)_k`` with ``c_d = v_d beta_d``
   (eq. 16-18), so ``sum_k w_k == sum_d c_d`` == the mean similarity,
5. ``alpha = minmax(w)``, ``M = relu(sum_k alpha_k A_k)``, upsample, min-max
   (eq. 12-13).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fam_lightning.held_norms import held_norm_statistics
from fam_lightning.similarity import SIMILARITIES, mean_similarity

POOLING_METHODS = ("gap", "gmp", "lse")

Projection = Tensor | nn.Module | None


def pool(feature_maps: Tensor, method: str = "gap", r: float = 10.0) -> Tensor:
    """Pool feature maps to one value per channel.

    Args:
        feature_maps: (B, C, h, w) last convolutional feature maps.
        method: "gap" (mean), "gmp" (max) or "lse" (log-sum-exp,
            ``(1/r) log mean exp(r A)``, between GAP as r -> 0 and GMP as r -> inf).
        r: sharpness of LSE pooling.

    Returns:
        (B, C) pooled features.
    """
    _check_feature_maps(feature_maps)
    flat = feature_maps.flatten(2)
    if method == "gap":
        return flat.mean(dim=2)
    if method == "gmp":
        return flat.amax(dim=2)
    if method == "lse":
        if r <= 0:
            raise ValueError(f"LSE pooling needs r > 0, got r={r}")
        return (torch.logsumexp(r * flat, dim=2) - math.log(flat.shape[2])) / r
    raise ValueError(f"pooling method must be one of {POOLING_METHODS}, got {method!r}")


def embed(pooled: Tensor, projection: Projection = None) -> Tensor:
    """Decision embedding ``v`` from pooled features ``u`` (B, C) -> (B, D).

    ``projection`` is None (v = u), a (D, C) weight (nn.Linear layout, no bias)
    or any module mapping (B, C) to (B, D).
    """
    if projection is None:
        return pooled
    if isinstance(projection, Tensor):
        if projection.dim() != 2 or projection.shape[1] != pooled.shape[1]:
            raise ValueError(
                f"projection weight must be (D, C) with C={pooled.shape[1]} pooled channels, "
                f"got {tuple(projection.shape)}"
            )
        return pooled @ projection.t()
    return projection(pooled)


def contribution_weights(
    query_features: Tensor,
    references: Tensor,
    similarity: str = "cosine",
    projection: Projection = None,
    reference_weights: Tensor | None = None,
) -> Tensor:
    """Channel-wise contribution weights of the query to its (mean) similarity.

    Args:
        query_features: (B, C) pooled last-conv features ``u`` of the queries.
        references: (B, N, D) or (B, D) decision-space embeddings ``s_n`` of the
            references each query is compared with (support images of the
            predicted class, kNN neighbours, the top-1 retrieved image).
        similarity: "cosine", "dot" or "euclidean" (``S = -|v - s|^2``).
        projection: None, a (D, C) weight of a bias-free linear head, or an
            ``nn.Module`` head. An ``nn.Linear`` uses its weight (its bias belongs
            to no channel and is dropped); any other module is linearised with
            one autograd call, ``w = u * d(beta . head(u)) / du``.
        reference_weights: optional (B, N) non-negative weights (e.g. kNN votes
            ``exp(s / T)``); they replace the plain mean over references by a
            weighted mean.

    Returns:
        (B, C) weights ``w``. For cosine and dot with no head or a linear head,
        ``w.sum(1)`` equals the (weighted) mean similarity exactly. For
        euclidean with a head it is gradient x input, a first-order estimate.
    """
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    if query_features.dim() != 2:
        raise ValueError(
            f"query_features must be (B, C) pooled features, got shape {tuple(query_features.shape)}"
        )
    refs = references.unsqueeze(1) if references.dim() == 2 else references
    if refs.dim() != 3 or refs.shape[0] != query_features.shape[0]:
        raise ValueError(
            "references must be (B, N, D) or (B, D) with B = "
            f"{query_features.shape[0]} (query batch), got shape {tuple(references.shape)}"
        )
    mix = _reference_mixture(refs, reference_weights)  # (B, N)
    u = query_features
    if isinstance(projection, nn.Module) and not isinstance(projection, nn.Linear):
        return _linearised_weights(u, refs, mix, similarity, projection)

    v = embed(u, projection)  # with a Linear's bias: it shapes the similarity ...
    projection = _as_weight(projection)  # ... but belongs to no channel: back-project with W only
    if v.shape[1] != refs.shape[2]:
        raise ValueError(
            f"references have D={refs.shape[2]} dimensions but the query embedding has "
            f"D={v.shape[1]} (pooled C={u.shape[1]}, projection "
            f"{'none' if projection is None else tuple(projection.shape)})"
        )
    if similarity == "euclidean":
        if projection is None:
            # c_d = -sum_n m_n (v_d - s_nd)^2: exact per-dimension decomposition.
            return -(mix.unsqueeze(2) * (v.unsqueeze(1) - refs).square()).sum(1)
        # Gradient x input of S(u) = -sum_n m_n |W u - s_n|^2.
        grad_v = -2.0 * (mix.unsqueeze(2) * (v.unsqueeze(1) - refs)).sum(1)  # (B, D)
        return u * (grad_v @ projection)
    beta = _similarity_coefficients(v, refs, mix, similarity)  # (B, D), c = v * beta
    if projection is None:
        return v * beta
    return u * (beta @ projection)  # eq. 18: w_k = u_k (W^T beta)_k


def feature_activation_map(
    feature_maps: Tensor, weights: Tensor, size: tuple[int, int] | None = None
) -> Tensor:
    """Combine activation maps with min-max normalised weights (eq. 12-13).

    Args:
        feature_maps: (B, C, h, w) activation maps ``A_k``.
        weights: (B, C) contribution weights ``w_k``.
        size: (H, W) output size; bilinear upsampling. None keeps (h, w).

    Returns:
        (B, H, W) maps in [0, 1]; a constant map (or constant weights) gives zeros.
    """
    _check_feature_maps(feature_maps)
    if weights.shape != feature_maps.shape[:2]:
        raise ValueError(
            f"weights must be (B, C) = {tuple(feature_maps.shape[:2])} to match feature_maps "
            f"{tuple(feature_maps.shape)}, got {tuple(weights.shape)}"
        )
    alpha = _minmax(weights, dims=(1,))
    saliency = torch.einsum("bc,bchw->bhw", alpha.to(feature_maps.dtype), feature_maps).relu()
    # Normalise at feature resolution first: constancy is decided exactly there,
    # not on upsampling round-off that a second min-max would blow up to [0, 1].
    saliency = _minmax(saliency, dims=(1, 2))
    if size is not None and tuple(size) != tuple(saliency.shape[1:]):
        saliency = F.interpolate(
            saliency.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False
        ).squeeze(1)
        saliency = _minmax(saliency, dims=(1, 2))
    return saliency


def _minmax(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Per-sample min-max to [0, 1]; a constant sample becomes zeros, never NaN."""
    low = x.amin(dim=dims, keepdim=True)
    span = x.amax(dim=dims, keepdim=True) - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, (x - low) / safe, torch.zeros_like(x))


def _check_feature_maps(feature_maps: Tensor) -> None:
    if feature_maps.dim() != 4:
        raise ValueError(
            f"feature_maps must be (B, C, h, w), got shape {tuple(feature_maps.shape)}"
        )


def _as_weight(projection: Projection) -> Projection:
    """An ``nn.Linear`` head is its weight; the bias belongs to no channel."""
    if isinstance(projection, nn.Linear):
        return projection.weight
    if isinstance(projection, Tensor) and projection.dim() != 2:
        raise ValueError(
            f"projection weight must be (D, C) (nn.Linear layout), got {tuple(projection.shape)}"
        )
    return projection


def _reference_mixture(refs: Tensor, reference_weights: Tensor | None) -> Tensor:
    """(B, N) convex weights over references: uniform, or the given weights normalised."""
    batch, count = refs.shape[:2]
    if reference_weights is None:
        return refs.new_full((batch, count), 1.0 / count)
    if reference_weights.shape != (batch, count):
        raise ValueError(
            f"reference_weights must be (B, N) = {(batch, count)}, "
            f"got {tuple(reference_weights.shape)}"
        )
    total = reference_weights.sum(dim=1, keepdim=True)
    return reference_weights / total.clamp_min(torch.finfo(reference_weights.dtype).tiny)


def _similarity_coefficients(v: Tensor, refs: Tensor, mix: Tensor, similarity: str) -> Tensor:
    """beta (B, D) with c_d = v_d beta_d for cosine (normalisers held fixed) and dot."""
    if similarity == "dot":
        return (mix.unsqueeze(2) * refs).sum(1)
    eps = torch.finfo(v.dtype).eps
    v_norm = v.norm(dim=1, keepdim=True).clamp_min(eps)  # (B, 1)
    ref_norm = refs.norm(dim=2, keepdim=True).clamp_min(eps)  # (B, N, 1)
    return (mix.unsqueeze(2) * refs / ref_norm).sum(1) / v_norm


def _linearised_weights(
    u: Tensor, refs: Tensor, mix: Tensor, similarity: str, head: nn.Module
) -> Tensor:
    """``w = u * d(beta . head(u)) / du`` with beta detached (one autograd call).

    Equals eq. 18 for a linear head and keeps the sum property for bias-free
    ReLU heads (positively homogeneous). LayerNorms in the head run with their
    per-sample standard deviation held fixed (:func:`held_norm_statistics`),
    which makes them affine, ``gamma (u - mean u) / sigma + b`` (centring is
    linear): the weights then sum to the similarity minus the share of the
    LN bias ``b``, as for a linear head's bias. For euclidean, gradient x input of S.
    """
    return u.detach() * _target_gradient(u, refs, mix, similarity, head)


def _target_gradient(u: Tensor, refs: Tensor, mix: Tensor, similarity: str, head: Projection) -> Tensor:
    """(B, C) ``d(beta . embed(u)) / du`` (beta detached; euclidean: ``dS/du``), LayerNorms held fixed."""
    # inference_mode(False): callable from a Lightning eval loop, whose tensors
    # are inference tensors that autograd would refuse to record.
    holder = head if isinstance(head, nn.Module) else nn.Identity()
    with torch.inference_mode(False), torch.enable_grad(), held_norm_statistics(holder):
        u_var = u.detach().clone().requires_grad_(True)
        refs, mix = refs.clone(), mix.clone()
        v = embed(u_var, head.clone() if isinstance(head, Tensor) else head)
        if v.shape[1] != refs.shape[2]:
            raise ValueError(
                f"references have D={refs.shape[2]} dimensions but the head outputs D={v.shape[1]}"
            )
        if similarity == "euclidean":
            target = -(mix.unsqueeze(2) * (v.unsqueeze(1) - refs).square()).sum((1, 2))
        else:
            beta = _similarity_coefficients(v.detach(), refs, mix, similarity)
            target = (beta * v).sum(1)
        (grad,) = torch.autograd.grad(target.sum(), u_var)
    return grad


def position_contributions(
    feature_maps: Tensor,
    references: Tensor,
    similarity: str = "cosine",
    projection: Projection = None,
    reference_weights: Tensor | None = None,
) -> Tensor:
    """(B, h, w): each position's (token's) share of the similarity of a GAP model.

    With GAP, ``u_k = mean_ij A_k,ij``, so the channel weights
    ``w_k = u_k g_k`` (``g = W^T beta``, or the head's gradient with its
    LayerNorms held fixed, as in :func:`contribution_weights`) split over
    positions as ``c_ij = sum_k g_k A_k,ij / (h w)``, and
    ``sum_ij c_ij == sum_k w_k`` (the similarity, minus a bias's share):
    the decomposition over a transformer's patch tokens, as over a CNN's
    positions. Signed where the features are signed (token grids).
    """
    _check_feature_maps(feature_maps)
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    refs = references.unsqueeze(1) if references.dim() == 2 else references
    if refs.dim() != 3 or refs.shape[0] != feature_maps.shape[0]:
        raise ValueError(
            f"references must be (B, N, D) or (B, D) with B = {feature_maps.shape[0]}, got {tuple(references.shape)}"
        )
    mix = _reference_mixture(refs, reference_weights)
    grad = _target_gradient(pool(feature_maps, "gap"), refs, mix, similarity, projection)  # (B, C)
    height, width = feature_maps.shape[-2:]
    return torch.einsum("bc,bchw->bhw", grad.to(feature_maps.dtype), feature_maps) / (height * width)


class Decomposition(NamedTuple):
    """A similarity split into channel contributions and what belongs to no channel.

    ``weights.sum(1) + residual == similarity`` exactly (up to float rounding).
    ``residual`` is the share of a linear head's bias or a held LayerNorm's
    bias (zero without a biased head); for a non-linear head it also holds
    the linearisation's remainder; for euclidean with a head, gradient x
    input's remainder.
    """

    weights: Tensor  # (B, C)
    residual: Tensor  # (B,)
    similarity: Tensor  # (B,) the (weighted) mean similarity


def decompose(
    query_features: Tensor,
    references: Tensor,
    similarity: str = "cosine",
    projection: Projection = None,
    reference_weights: Tensor | None = None,
) -> Decomposition:
    """:func:`contribution_weights` plus the residual they leave, named (see :class:`Decomposition`)."""
    weights = contribution_weights(query_features, references, similarity, projection, reference_weights)
    refs = references.unsqueeze(1) if references.dim() == 2 else references
    with torch.no_grad():
        total = mean_similarity(embed(query_features.detach(), projection), refs, similarity, reference_weights)
    return Decomposition(weights, total - weights.sum(1), total)
