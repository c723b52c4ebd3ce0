"""Localisation metrics for saliency maps: energy pointing game and box IoU.

Conventions shared by every function here:

- ``saliency`` is a ``(B, H, W)`` floating tensor of non-negative values
  (FAM maps lie in ``[0, 1]``).
- ``boxes`` is either a ``(B, 4)`` tensor (one box per sample) or a sequence
  of ``B`` tensors of shape ``(n_i, 4)`` with ``n_i >= 1`` (several boxes per
  sample: their union counts). A box is ``(x0, y0, x1, y1)`` in pixels with
  ``x1`` and ``y1`` exclusive, so an integer box covers
  ``saliency[b, y0:y1, x0:x1]``.
- Fractional boxes (after a resize) are rasterised by pixel centre: pixel
  ``(x, y)`` belongs to the box iff its centre ``(x + 0.5, y + 0.5)`` lies in
  ``[x0, x1) x [y0, y1)``. With integer coordinates this is exactly
  ``[y0:y1, x0:x1]``; a box with ``x1 <= x0`` or ``y1 <= y0`` covers nothing
  and has zero area.

Everything is batched on the inputs' device, without host syncs. The
connected-component labelling behind IoU (a torch union-find, and
``scipy.ndimage.label`` for CPU tensors) is :mod:`fam_lightning.metrics.components`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor
from torchmetrics import Metric

from fam_lightning.metrics.components import largest_connected_component

Boxes = Union[Tensor, Sequence[Tensor]]

__all__ = [
    "Boxes",
    "EnergyPointingGame",
    "LocalizationIoU",
    "boxes_to_mask",
    "energy_pointing_game",
    "largest_connected_component",
    "localization_iou",
    "pad_boxes",
    "saliency_to_box",
]


# --------------------------------------------------------------------------- #
# Box helpers
# --------------------------------------------------------------------------- #
def pad_boxes(boxes: Boxes) -> tuple[Tensor, Tensor]:
    """Bring either box form to a padded tensor and a validity mask.

    Args:
        boxes: ``(B, 4)`` tensor, or a sequence of ``B`` tensors ``(n_i, 4)``
            with ``n_i >= 1``, all on one device.

    Returns:
        ``(padded, valid)``: ``padded`` is ``(B, M, 4)`` with ``M = max n_i``
        (``M = 1`` for the ``(B, 4)`` form), padding rows are zero;
        ``valid`` is ``(B, M)`` bool, True for real boxes.

    Raises:
        ValueError: if ``boxes`` is not one of the two forms.
    """
    if isinstance(boxes, Tensor):
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(
                f"boxes must be a (B, 4) tensor or a list of B (n_i, 4) tensors, "
                f"got a tensor of shape {tuple(boxes.shape)}"
            )
        valid = torch.ones(boxes.shape[0], 1, dtype=torch.bool, device=boxes.device)
        return boxes.unsqueeze(1), valid
    if not isinstance(boxes, Sequence) or not all(isinstance(b, Tensor) for b in boxes):
        raise ValueError(
            f"boxes must be a (B, 4) tensor or a list of B (n_i, 4) tensors, got {type(boxes).__name__}"
        )
    for i, b in enumerate(boxes):
        if b.ndim != 2 or b.shape[-1] != 4 or b.shape[0] < 1:
            raise ValueError(
                f"boxes[{i}] must have shape (n_i, 4) with n_i >= 1, got {tuple(b.shape)}"
            )
    if len(boxes) == 0:
        return torch.zeros(0, 1, 4), torch.zeros(0, 1, dtype=torch.bool)
    device = boxes[0].device
    # Shapes are host metadata: building the validity mask does not sync.
    lengths = torch.tensor([b.shape[0] for b in boxes], device=device)
    padded = torch.nn.utils.rnn.pad_sequence(list(boxes), batch_first=True)  # (B, M, 4)
    valid = torch.arange(padded.shape[1], device=device) < lengths[:, None]  # (B, M)
    return padded, valid


def _padded_boxes_to_mask(padded: Tensor, valid: Tensor, height: int, width: int) -> Tensor:
    """Union mask of padded boxes: ``(B, M, 4), (B, M) -> (B, H, W)`` bool."""
    centres_x = torch.arange(width, device=padded.device, dtype=padded.dtype) + 0.5  # (W,)
    centres_y = torch.arange(height, device=padded.device, dtype=padded.dtype) + 0.5  # (H,)
    x0, y0, x1, y1 = padded.unbind(-1)  # each (B, M)
    in_x = (centres_x >= x0[..., None]) & (centres_x < x1[..., None])  # (B, M, W)
    in_y = (centres_y >= y0[..., None]) & (centres_y < y1[..., None])  # (B, M, H)
    in_y = in_y & valid[..., None]
    return (in_y.unsqueeze(-1) & in_x.unsqueeze(-2)).any(dim=1)  # (B, H, W)


def boxes_to_mask(boxes: Boxes, height: int, width: int) -> Tensor:
    """Rasterise boxes to a ``(B, H, W)`` bool mask, the union of each sample's boxes.

    Pixel ``(x, y)`` is inside box ``(x0, y0, x1, y1)`` iff
    ``x0 <= x + 0.5 < x1`` and ``y0 <= y + 0.5 < y1`` (centre rule; for
    integer boxes exactly ``[y0:y1, x0:x1]``). Parts outside the image are
    clipped.

    Args:
        boxes: ``(B, 4)`` tensor or a sequence of ``B`` tensors ``(n_i, 4)``.
        height: ``H``.
        width: ``W``.

    Returns:
        ``(B, H, W)`` bool tensor on the boxes' device.
    """
    padded, valid = pad_boxes(boxes)
    if not padded.is_floating_point():
        padded = padded.float()
    return _padded_boxes_to_mask(padded, valid, height, width)


def _check_saliency(saliency: Tensor) -> None:
    if not isinstance(saliency, Tensor) or saliency.ndim != 3:
        shape = tuple(saliency.shape) if isinstance(saliency, Tensor) else type(saliency).__name__
        raise ValueError(f"saliency must have shape (B, H, W), got {shape}")
    if not saliency.is_floating_point():
        raise ValueError(f"saliency must be a floating tensor, got dtype {saliency.dtype}")
    if saliency.shape[1] == 0 or saliency.shape[2] == 0:
        raise ValueError(f"saliency must have H, W >= 1 in (B, H, W), got {tuple(saliency.shape)}")


def _boxes_like(boxes: Boxes, saliency: Tensor) -> tuple[Tensor, Tensor]:
    """Padded boxes on the saliency's device, batch size checked.

    Coordinates are held in at least float32: half precision cannot hold
    pixel centres such as 200.5 exactly.
    """
    padded, valid = pad_boxes(boxes)
    if padded.shape[0] != saliency.shape[0]:
        raise ValueError(
            f"boxes must hold one entry per saliency map: expected {saliency.shape[0]} "
            f"(B of saliency (B, H, W)), got {padded.shape[0]}"
        )
    dtype = torch.promote_types(saliency.dtype, torch.float32)
    return padded.to(device=saliency.device, dtype=dtype), valid.to(saliency.device)


# --------------------------------------------------------------------------- #
# Energy pointing game (eq. 19)
# --------------------------------------------------------------------------- #
def energy_pointing_game(saliency: Tensor, boxes: Boxes) -> Tensor:
    """Energy-based pointing game proportion per sample (eq. 19).

    ``P_b = sum_{(x, y) in union of boxes_b} S_b[y, x] / sum_{(x, y)} S_b[y, x]``.
    A map with zero total energy scores 0 (not NaN).

    Args:
        saliency: ``(B, H, W)`` non-negative floating maps.
        boxes: ``(B, 4)`` tensor or a sequence of ``B`` tensors ``(n_i, 4)``,
            ``(x0, y0, x1, y1)`` with exclusive ``x1, y1``.

    Returns:
        ``(B,)`` proportions in ``[0, 1]``, dtype of ``saliency``.
    """
    _check_saliency(saliency)
    padded, valid = _boxes_like(boxes, saliency)
    inside = _padded_boxes_to_mask(padded, valid, saliency.shape[1], saliency.shape[2])
    sal = saliency.to(padded.dtype)  # sums of half maps would lose precision
    energy_in = (sal * inside).sum(dim=(1, 2))  # (B,)
    energy = sal.sum(dim=(1, 2))  # (B,)
    has_energy = energy > 0
    proportion = torch.where(has_energy, energy_in / torch.where(has_energy, energy, 1.0), 0.0)
    return proportion.to(saliency.dtype)


# --------------------------------------------------------------------------- #
# IoU (eq. 20)
# --------------------------------------------------------------------------- #
def _mask_bounding_box(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Tight exclusive box ``(B, 4)`` of each mask and ``(B,)`` non-empty flags."""
    _, height, width = mask.shape
    rows = mask.any(dim=2)  # (B, H)
    cols = mask.any(dim=1)  # (B, W)
    # argmax returns the first maximum: first True from each end.
    y0 = rows.long().argmax(dim=1)
    y1 = height - rows.flip(1).long().argmax(dim=1)
    x0 = cols.long().argmax(dim=1)
    x1 = width - cols.flip(1).long().argmax(dim=1)
    found = rows.any(dim=1)
    box = torch.stack([x0, y0, x1, y1], dim=1) * found[:, None]
    return box, found


def saliency_to_box(saliency: Tensor, threshold: float = 0.2) -> tuple[Tensor, Tensor]:
    """Estimated box of each map: threshold, largest 8-connected component, tight box.

    Pixels with ``S >= threshold * max(S)`` are kept (a map whose maximum is
    not positive keeps nothing).

    Args:
        saliency: ``(B, H, W)`` non-negative floating maps.
        threshold: fraction of the per-sample maximum, in ``[0, 1]``.

    Returns:
        ``(boxes, found)``: ``(B, 4)`` boxes ``(x0, y0, x1, y1)``, exclusive
        ``x1, y1``, dtype of ``saliency`` promoted to at least float32 (zeros
        where nothing was found), and
        ``(B,)`` bool.
    """
    _check_saliency(saliency)
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    peak = saliency.amax(dim=(1, 2), keepdim=True)  # (B, 1, 1)
    keep = (saliency >= threshold * peak) & (peak > 0)
    component = largest_connected_component(keep)
    box, found = _mask_bounding_box(component)
    return box.to(torch.promote_types(saliency.dtype, torch.float32)), found


def _best_iou(pred: Tensor, padded: Tensor, valid: Tensor) -> Tensor:
    """IoU of ``(B, 4)`` boxes with the best of ``(B, M, 4)`` boxes -> ``(B,)``."""
    pred = pred.unsqueeze(1)  # (B, 1, 4)
    inter_w = (torch.minimum(pred[..., 2], padded[..., 2]) - torch.maximum(pred[..., 0], padded[..., 0])).clamp_min(0)
    inter_h = (torch.minimum(pred[..., 3], padded[..., 3]) - torch.maximum(pred[..., 1], padded[..., 1])).clamp_min(0)
    inter = inter_w * inter_h  # (B, M)

    def area(b: Tensor) -> Tensor:
        return (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)

    union = area(pred) + area(padded) - inter
    iou = torch.where(union > 0, inter / torch.where(union > 0, union, 1.0), 0.0)
    return torch.where(valid, iou, 0.0).amax(dim=1)


def localization_iou(saliency: Tensor, boxes: Boxes, threshold: float = 0.2) -> Tensor:
    """Localisation IoU per sample (eq. 20).

    Binarise ``S >= threshold * max(S)``, keep the largest 8-connected
    component, take its tight box ``B_est = (min col, min row, max col + 1,
    max row + 1)`` and score ``max_g |B_est n B_g| / |B_est u B_g|`` over the
    sample's ground-truth boxes ``B_g``. With exclusive boxes,
    ``|A n B| = max(0, min(x1) - max(x0)) * max(0, min(y1) - max(y0))``.
    A map whose maximum is 0 scores 0.

    Args:
        saliency: ``(B, H, W)`` non-negative floating maps.
        boxes: ``(B, 4)`` tensor or a sequence of ``B`` tensors ``(n_i, 4)``.
        threshold: fraction of the per-sample maximum, in ``[0, 1]``.

    Returns:
        ``(B,)`` IoU in ``[0, 1]``, dtype of ``saliency``.
    """
    pred, found = saliency_to_box(saliency, threshold)
    padded, valid = _boxes_like(boxes, saliency)
    iou = torch.where(found, _best_iou(pred.to(padded.dtype), padded, valid), 0.0)
    return iou.to(saliency.dtype)


# --------------------------------------------------------------------------- #
# Metric classes
# --------------------------------------------------------------------------- #
class _MeanOfSamples(Metric):
    """Mean of a per-sample score: sum and count states, summed across ranks."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    score_sum: Tensor
    num_samples: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("score_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_samples", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _accumulate(self, scores: Tensor) -> None:
        self.score_sum += scores.sum().to(self.score_sum.dtype)
        self.num_samples += scores.shape[0]

    def scored(self) -> bool:
        """Whether any rank gave this metric a sample (a collective under DDP)."""
        with self.sync_context():
            return bool(int(self.num_samples) > 0)

    def compute(self) -> Tensor:
        """Mean score over all samples seen (0 when none), float64 scalar."""
        seen = self.num_samples > 0
        return torch.where(seen, self.score_sum / self.num_samples.clamp_min(1), 0.0)


class EnergyPointingGame(_MeanOfSamples):
    """Mean energy pointing game proportion (eq. 19), a fraction in ``[0, 1]``.

    ``update(saliency (B, H, W), boxes)`` adds :func:`energy_pointing_game`
    of each sample; ``compute()`` returns their mean (0 when nothing was seen).
    States (``score_sum``, ``num_samples``) are float64 / int64 sums.
    """

    def update(self, saliency: Tensor, boxes: Boxes) -> None:
        """Accumulate a batch: ``saliency (B, H, W)``, boxes ``(B, 4)`` or list of ``(n_i, 4)``."""
        self._accumulate(energy_pointing_game(saliency, boxes))


class LocalizationIoU(_MeanOfSamples):
    """Mean localisation IoU (eq. 20), a fraction in ``[0, 1]``.

    Args:
        threshold: binarisation threshold as a fraction of each map's maximum.
        **kwargs: forwarded to :class:`torchmetrics.Metric`.
    """

    def __init__(self, threshold: float = 0.2, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
        self.threshold = float(threshold)

    def update(self, saliency: Tensor, boxes: Boxes) -> None:
        """Accumulate a batch: ``saliency (B, H, W)``, boxes ``(B, 4)`` or list of ``(n_i, 4)``."""
        self._accumulate(localization_iou(saliency, boxes, self.threshold))
