"""Faithfulness metrics: Average Drop and Increase in Confidence (eq. 21, 22).

For a similarity model there is no class score; following the design,
``Y`` is the similarity of the query to its reference and ``O`` the
similarity of (query image x saliency map, in normalised input space) to the
same reference. Both metrics divide by or compare against ``Y``, so samples
with ``Y <= 0`` are excluded and counted (``num_excluded``).

``Y`` and ``O`` may come from different forward passes (``Y`` from the
validation step's batch, ``O`` from one pass of the masked images); in eval
mode (batchnorm on running statistics) a sample's score does not depend on its
batch, but kernels chosen per batch shape change the last bits. IC therefore
counts an increase only when ``O > Y + rtol * |Y|``: with ``rtol`` at float
round-off an unchanged image gives IC = 0.

NaN is never turned into a number: a NaN ``Y`` or ``O`` makes the batch's
result NaN (functional) or ``compute()`` NaN (classes, which count them in
``num_nan``); a NaN is neither valid nor excluded.

Everything is batched torch on the inputs' device, without host syncs.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "AverageDrop",
    "IncreaseInConfidence",
    "average_drop",
    "increase_in_confidence",
]


def _check_scores(y: Tensor, o: Tensor) -> None:
    if not isinstance(y, Tensor) or y.ndim != 1:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y must have shape (B,), got {shape}")
    if not isinstance(o, Tensor) or o.shape != y.shape:
        shape = tuple(o.shape) if isinstance(o, Tensor) else type(o).__name__
        raise ValueError(f"o must have the shape of y, (B,) = {tuple(y.shape)}, got {shape}")


def _split(y: Tensor, o: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(valid, excluded, nan) masks, (B,) each: a NaN score is neither valid nor excluded."""
    _check_scores(y, o)
    nan = y.isnan() | o.isnan()
    valid = (y > 0) & ~nan
    return valid, ~valid & ~nan, nan


def average_drop_per_sample(y: Tensor, o: Tensor) -> Tensor:
    """(B,) ``relu(Y - O) / Y x 100`` per sample; NaN where ``Y <= 0`` (excluded) or a score is NaN."""
    valid, _, _ = _split(y, o)
    drop = torch.relu(y - o) / torch.where(valid, y, 1.0) * 100.0
    return torch.where(valid, drop, torch.full_like(drop, float("nan")))


def increase_in_confidence_per_sample(y: Tensor, o: Tensor, rtol: float = 0.0) -> Tensor:
    """(B,) ``1[O - Y > rtol |Y|] x 100`` per sample; NaN where ``Y <= 0`` (excluded) or a score is NaN."""
    if rtol < 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}")
    valid, _, _ = _split(y, o)
    increase = (o - y > rtol * y.abs()).to(y.dtype if y.is_floating_point() else torch.float32) * 100.0
    return torch.where(valid, increase, torch.full_like(increase, float("nan")))


def _average_drop_update(y: Tensor, o: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-batch ``(sum of drops in %, valid count, excluded count, NaN count)``, all scalars."""
    valid, excluded, nan = _split(y, o)
    return average_drop_per_sample(y, o).nan_to_num(0.0).sum(), valid.sum(), excluded.sum(), nan.sum()


def _increase_in_confidence_update(y: Tensor, o: Tensor, rtol: float = 0.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-batch ``(sum of increases in %, valid count, excluded count, NaN count)``, all scalars."""
    increase = increase_in_confidence_per_sample(y, o, rtol)
    valid, excluded, nan = _split(y, o)
    return increase.nan_to_num(0.0).sum(), valid.sum(), excluded.sum(), nan.sum()


def _mean_over_valid(total: Tensor, num_valid: Tensor, num_nan: Tensor | None = None) -> Tensor:
    """``total / num_valid``, 0 when no sample was valid, NaN when any score was NaN."""
    mean = torch.where(num_valid > 0, total / num_valid.clamp_min(1), 0.0)
    if num_nan is None:
        return mean
    return torch.where(num_nan > 0, torch.full_like(mean, float("nan")), mean)


def average_drop(y: Tensor, o: Tensor) -> Tensor:
    """Average Drop in percent (eq. 21), lower is better.

    ``AD = 100 / |V| * sum_{i in V} max(0, Y_i - O_i) / Y_i`` with
    ``V = {i : Y_i > 0}``; 0 when ``V`` is empty; NaN when any ``Y`` or ``O`` is NaN.

    Args:
        y: ``(B,)`` similarity of each query to its reference.
        o: ``(B,)`` similarity of the saliency-masked query to the same reference.

    Returns:
        Scalar tensor.
    """
    total, num_valid, _, num_nan = _average_drop_update(y, o)
    return _mean_over_valid(total, num_valid, num_nan)


def increase_in_confidence(y: Tensor, o: Tensor, rtol: float = 0.0) -> Tensor:
    """Increase in Confidence in percent (eq. 22), higher is better.

    ``IC = 100 / |V| * sum_{i in V} 1[O_i > Y_i + rtol |Y_i|]`` with
    ``V = {i : Y_i > 0}``; 0 when ``V`` is empty; NaN when any ``Y`` or ``O`` is NaN.

    Args:
        y: ``(B,)`` similarity of each query to its reference.
        o: ``(B,)`` similarity of the saliency-masked query to the same reference.
        rtol: relative tolerance: set it at float round-off when ``O`` and ``Y``
            come from different forward passes, so an unchanged score is no increase.

    Returns:
        Scalar tensor.
    """
    total, num_valid, _, num_nan = _increase_in_confidence_update(y, o, rtol)
    return _mean_over_valid(total, num_valid, num_nan)


class _FaithfulnessMetric(Metric):
    """Sum over valid samples, valid, excluded and NaN counts, summed across ranks.

    ``num_excluded`` (samples with ``Y <= 0``), ``num_valid`` and ``num_nan``
    (samples with a NaN ``Y`` or ``O``: ``compute()`` is then NaN) are readable
    states. Outside ``compute()`` they hold this rank's counts; under DDP read
    them inside ``with metric.sync_context():`` for the global counts.
    """

    is_differentiable = False
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 100.0

    score_sum: Tensor
    num_valid: Tensor
    num_excluded: Tensor
    num_nan: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("score_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_valid", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_excluded", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_nan", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _accumulate(self, total: Tensor, num_valid: Tensor, num_excluded: Tensor, num_nan: Tensor) -> None:
        self.score_sum += total.to(self.score_sum.dtype)
        self.num_valid += num_valid
        self.num_excluded += num_excluded
        self.num_nan += num_nan

    def scored(self) -> bool:
        """Whether any rank gave this metric a sample with a value (NaN counts: it must show; ``Y <= 0`` gives
        none). A collective under DDP."""
        with self.sync_context():
            return bool(int(self.num_valid) + int(self.num_nan) > 0)

    def compute(self) -> Tensor:
        """Mean over valid samples in percent (0 when none, NaN after any NaN score), float64 scalar."""
        return _mean_over_valid(self.score_sum, self.num_valid, self.num_nan)


class AverageDrop(_FaithfulnessMetric):
    """Average Drop in percent (eq. 21); see :func:`average_drop`.

    ``update(y (B,), o (B,))``; samples with ``y <= 0`` are excluded and
    counted in ``num_excluded``.
    """

    higher_is_better = False

    def update(self, y: Tensor, o: Tensor) -> None:
        """Accumulate a batch of ``(B,)`` original and masked similarities."""
        self._accumulate(*_average_drop_update(y, o))


class IncreaseInConfidence(_FaithfulnessMetric):
    """Increase in Confidence in percent (eq. 22); see :func:`increase_in_confidence`.

    ``update(y (B,), o (B,))``; samples with ``y <= 0`` are excluded and
    counted in ``num_excluded``.

    Args:
        rtol: an increase must exceed ``rtol * |Y|`` (float round-off when
            ``O`` and ``Y`` come from different forward passes).
    """

    higher_is_better = True

    def __init__(self, rtol: float = 0.0, **kwargs) -> None:
        if rtol < 0:
            raise ValueError(f"rtol must be >= 0, got {rtol}")
        super().__init__(**kwargs)
        self.rtol = rtol

    def update(self, y: Tensor, o: Tensor) -> None:
        """Accumulate a batch of ``(B,)`` original and masked similarities."""
        self._accumulate(*_increase_in_confidence_update(y, o, self.rtol))
