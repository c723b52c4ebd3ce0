"""Deletion and insertion AUC (Petsiuk et al., RISE, 2018) on the similarity score.

Pixels are ranked by saliency, highest first (ties by pixel index). After
step ``i`` of ``steps`` the first ``floor(i * H * W / steps)`` pixels are
*deleted* (replaced by the baseline: deletion curve) or *inserted* (copied from
the image onto the baseline: insertion curve); all channels of a pixel move
together. Each curve is the decision score ``S`` (mean similarity of the
perturbed image's embedding to the references,
:func:`fam_lightning.similarity.mean_similarity`) at fractions
``0, 1/steps, ..., 1`` of the pixels; the AUC is the trapezoid rule over that
fraction. Lower deletion AUC and higher insertion AUC are better.

Scores are raw similarities by default (as AD / IC use raw ``Y`` and ``O``),
comparable across explainers of one model. ``normalize=True`` divides each
curve by the unperturbed score ``S(X)`` (1 = the original decision); samples
with ``S(X) <= 0`` then get NaN, which the metric classes skip and count.
A map holding NaN has no pixel order: its curves are NaN (never a number
from an arbitrary order), and so is any curve through a NaN score.

Baselines live in normalised input space: ``"zeros"`` is the data-set mean
colour; ``"blur"`` is the image under an 11 x 11 Gaussian blur (sigma 5, as
RISE), the kernel clipped to the image.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchvision.transforms.v2.functional import gaussian_blur

from fam_lightning.protocol import SimilarityModel
from fam_lightning.similarity import mean_similarity

__all__ = ["DeletionAUC", "InsertionAUC", "deletion_insertion_auc", "deletion_insertion_curves"]

BASELINES = ("zeros", "blur")


def _baseline(images: Tensor, kind: str) -> Tensor:
    if kind == "zeros":
        return torch.zeros_like(images)
    if kind == "blur":
        side = min(11, *images.shape[-2:])
        side -= 1 - side % 2  # odd
        return gaussian_blur(images, kernel_size=[side, side], sigma=[5.0, 5.0])
    raise ValueError(f"baseline must be one of {BASELINES}, got {kind!r}")


def _scores(model: SimilarityModel, images: Tensor, references: Tensor, weights: Tensor | None) -> Tensor:
    embeddings = model.embed(model.forward_features(images)).float()
    weights = None if weights is None else weights.float()
    return mean_similarity(embeddings, references.float(), model.similarity, weights)


def deletion_insertion_curves(
    model: SimilarityModel,
    images: Tensor,
    maps: Tensor,
    references: Tensor,
    reference_weights: Tensor | None = None,
    steps: int = 20,
    baseline: str = "zeros",
    normalize: bool = False,
) -> tuple[Tensor, Tensor]:
    """Deletion and insertion curves, each (B, steps + 1), at pixel fractions ``i / steps``.

    Args:
        model: implements :class:`SimilarityModel`.
        images: (B, 3, H, W) normalised images.
        maps: (B, H, W) saliency maps (any real values; only their order counts).
        references: (B, N, D) or (B, D) reference embeddings of each decision.
        reference_weights: optional (B, N) weights over the references.
        steps: curve resolution; costs ``2 * steps`` forward passes per image
            (the unperturbed and the all-baseline images are shared by both curves).
        baseline: "zeros" or "blur".
        normalize: divide by the unperturbed score (NaN where it is <= 0).
    """
    if images.dim() != 4 or maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(
            f"maps must be (B, H, W) matching images (B, 3, H, W); got maps {tuple(maps.shape)}, "
            f"images {tuple(images.shape)}"
        )
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    batch, _, height, width = images.shape
    pixels = height * width
    with torch.no_grad():
        background = _baseline(images, baseline)
        order = maps.reshape(batch, pixels).argsort(dim=1, descending=True, stable=True)
        rank = order.argsort(dim=1).view(batch, 1, height, width)  # position of each pixel in the order
        full = _scores(model, images, references, reference_weights)  # deletion at 0, insertion at 1
        empty = _scores(model, background, references, reference_weights)  # deletion at 1, insertion at 0
        deletion, insertion = [full], [empty]
        for step in range(1, steps):
            moved = rank < step * pixels // steps  # (B, 1, H, W): the top pixels
            both = torch.cat([torch.where(moved, background, images), torch.where(moved, images, background)])
            scores = _scores(model, both, references.repeat(2, *([1] * (references.dim() - 1))),
                             None if reference_weights is None else reference_weights.repeat(2, 1))
            deletion.append(scores[:batch])
            insertion.append(scores[batch:])
        deletion.append(empty)
        insertion.append(full)
        curves = torch.stack(deletion, dim=1), torch.stack(insertion, dim=1)  # (B, steps + 1)
        unordered = maps.reshape(batch, pixels).isnan().any(dim=1, keepdim=True)  # (B, 1)
        curves = tuple(torch.where(unordered, torch.full_like(c, float("nan")), c) for c in curves)
        if normalize:
            scale = torch.where(full > 0, full, torch.full_like(full, float("nan"))).unsqueeze(1)
            curves = curves[0] / scale, curves[1] / scale
    return curves


def deletion_insertion_auc(
    model: SimilarityModel,
    images: Tensor,
    maps: Tensor,
    references: Tensor,
    reference_weights: Tensor | None = None,
    steps: int = 20,
    baseline: str = "zeros",
    normalize: bool = False,
) -> tuple[Tensor, Tensor]:
    """(deletion AUC (B,), insertion AUC (B,)): trapezoid rule of the curves over the pixel fraction.

    See :func:`deletion_insertion_curves` for the arguments.
    """
    deletion, insertion = deletion_insertion_curves(
        model, images, maps, references, reference_weights, steps, baseline, normalize
    )
    return torch.trapezoid(deletion, dx=1.0 / steps, dim=1), torch.trapezoid(insertion, dx=1.0 / steps, dim=1)


class _AUCMean(Metric):
    """Mean of per-sample AUCs over finite values; NaN ones (normalize=True, ``S(X) <= 0``) are counted.

    ``update(auc (B,))`` with one of the outputs of :func:`deletion_insertion_auc`,
    so one computation feeds both metrics.
    """

    is_differentiable = False
    full_state_update = False

    auc_sum: Tensor
    num_valid: Tensor
    num_excluded: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("auc_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_valid", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_excluded", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, auc: Tensor) -> None:
        """Accumulate a (B,) batch of per-sample AUCs."""
        if not isinstance(auc, Tensor) or auc.ndim != 1:
            shape = tuple(auc.shape) if isinstance(auc, Tensor) else type(auc).__name__
            raise ValueError(f"auc must have shape (B,), got {shape}")
        valid = torch.isfinite(auc)
        self.auc_sum += torch.where(valid, auc, 0.0).sum().to(self.auc_sum.dtype)
        self.num_valid += valid.sum()
        self.num_excluded += (~valid).sum()

    def scored(self) -> bool:
        """Whether any rank gave this metric a sample (a NaN one counts). A collective under DDP."""
        with self.sync_context():
            return bool(int(self.num_valid) + int(self.num_excluded) > 0)

    def any_nan(self) -> Tensor:
        """Whether any rank saw a NaN AUC (the mean leaves those out; a NaN must not be averaged away)."""
        with self.sync_context():
            return self.num_excluded > 0

    def compute(self) -> Tensor:
        """Mean AUC over valid samples (0 when none), float64 scalar."""
        return torch.where(self.num_valid > 0, self.auc_sum / self.num_valid.clamp_min(1), 0.0)


class DeletionAUC(_AUCMean):
    """Mean deletion AUC (lower is better); see :func:`deletion_insertion_auc`."""

    higher_is_better = False


class InsertionAUC(_AUCMean):
    """Mean insertion AUC (higher is better); see :func:`deletion_insertion_auc`."""

    higher_is_better = True
