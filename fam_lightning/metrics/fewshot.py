"""Few-shot episode accuracy with a 95% confidence interval.

The few-shot literature reports the mean accuracy over ``E`` test episodes
with the half-width of a normal 95% interval, ``1.96 * std / sqrt(E)``.
The metric keeps the sum, the sum of squares and the count of per-episode
accuracies (no lists), so DDP ranks reduce with a plain sum.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["EpisodeAccuracy", "accuracy_with_ci", "episode_accuracy"]

Z_95 = 1.96


def accuracy_with_ci(episode_accuracies: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and 95% confidence half-width of per-episode accuracies.

    ``mean = (1/E) sum_e a_e``, ``ci = 1.96 * s / sqrt(E)`` with Bessel's
    ``s^2 = (1/(E-1)) sum_e (a_e - mean)^2``; ``ci = 0`` for ``E = 1`` and
    both are 0 for ``E = 0``. Units are those of the input.

    Args:
        episode_accuracies: ``(E,)`` floating tensor.

    Returns:
        ``(mean, ci)`` scalar tensors.
    """
    if not isinstance(episode_accuracies, Tensor) or episode_accuracies.ndim != 1:
        shape = tuple(episode_accuracies.shape) if isinstance(episode_accuracies, Tensor) else type(episode_accuracies).__name__
        raise ValueError(f"episode_accuracies must have shape (E,), got {shape}")
    acc = episode_accuracies if episode_accuracies.is_floating_point() else episode_accuracies.float()
    num = acc.shape[0]
    if num == 0:
        zero = acc.new_zeros(())
        return zero, zero.clone()
    mean = acc.mean()
    if num == 1:
        return mean, torch.zeros_like(mean)
    return mean, Z_95 * acc.std(correction=1) / num**0.5


def _accuracy_with_ci_from_sums(total: Tensor, total_sq: Tensor, num: Tensor) -> tuple[Tensor, Tensor]:
    """Same as :func:`accuracy_with_ci` from ``sum a``, ``sum a^2`` and ``E``.

    ``s^2 = (sum a^2 - E * mean^2) / (E - 1)``, clamped at 0 against rounding.
    """
    num_f = num.to(total.dtype)
    mean = torch.where(num > 0, total / num_f.clamp_min(1), 0.0)
    var = ((total_sq - num_f * mean**2) / (num_f - 1).clamp_min(1)).clamp_min(0)
    ci = torch.where(num > 1, Z_95 * torch.sqrt(var / num_f.clamp_min(1)), 0.0)
    return mean, ci


def episode_accuracy(predictions: Tensor, targets: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Accuracy of each episode, a fraction in ``[0, 1]``.

    ``a_e = (1/Q) sum_q 1[pred_{e,q} = target_{e,q}]``.

    Args:
        predictions: ``(E, Q)`` predicted labels (one row per episode) or
            ``(Q,)`` for a single episode.
        targets: same shape as ``predictions``.
        dtype: floating dtype of the result.

    Returns:
        ``(E,)`` tensor of ``dtype``.
    """
    if not isinstance(predictions, Tensor) or predictions.ndim not in (1, 2) or predictions.shape[-1] == 0:
        shape = tuple(predictions.shape) if isinstance(predictions, Tensor) else type(predictions).__name__
        raise ValueError(f"predictions must have shape (E, Q) or (Q,) with Q >= 1, got {shape}")
    if not isinstance(targets, Tensor) or targets.shape != predictions.shape:
        shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(
            f"targets must have the shape of predictions, {tuple(predictions.shape)}, got {shape}"
        )
    correct = predictions == targets
    if correct.ndim == 1:
        correct = correct.unsqueeze(0)  # one episode: (1, Q)
    return correct.sum(dim=1).to(dtype) / correct.shape[1]


class EpisodeAccuracy(Metric):
    """Mean few-shot episode accuracy and its 95% confidence half-width, in percent.

    ``update(predictions (E, Q) or (Q,), targets same shape)``: each row is
    one episode. ``compute()`` returns ``{"mean": 100 * mean_e a_e,
    "ci95": 100 * 1.96 * s / sqrt(E)}`` (both 0 when nothing was seen, ci 0
    for one episode). States are float64 / int64 sums.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 100.0

    accuracy_sum: Tensor
    accuracy_sq_sum: Tensor
    num_episodes: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("accuracy_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("accuracy_sq_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_episodes", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Tensor, targets: Tensor) -> None:
        """Accumulate episodes: ``(E, Q)`` or ``(Q,)`` predictions and targets."""
        acc = episode_accuracy(predictions, targets, dtype=torch.float64)  # (E,)
        self.accuracy_sum += acc.sum()
        self.accuracy_sq_sum += (acc * acc).sum()
        self.num_episodes += acc.shape[0]

    def compute(self) -> dict[str, Tensor]:
        """``{"mean": ..., "ci95": ...}`` in percent, float64 scalars."""
        mean, ci = _accuracy_with_ci_from_sums(self.accuracy_sum, self.accuracy_sq_sum, self.num_episodes)
        return {"mean": mean * 100.0, "ci95": ci * 100.0}
