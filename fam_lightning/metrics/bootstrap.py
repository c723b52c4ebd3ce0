"""Percentile-bootstrap confidence intervals of a mean, plain and paired (post-processing, numpy).

A benchmark explains the same N decisions with every explainer, so each
explainer's metric is a vector of N per-decision values. The mean's 95 %
interval is the percentile bootstrap (Efron & Tibshirani 1993, ch. 13): the
2.5 and 97.5 percentiles of the means of ``resamples`` resamples of the N
values drawn with replacement. A paired comparison resamples *decisions*: the
same drawn rows for both explainers, so the interval of the mean difference
reflects only how the two differ on each decision (the between-decision
spread, which both share, cancels). Since the mean is linear, that is the
bootstrap of the per-decision differences ``a - b``.

Seeded (``numpy.random.default_rng(seed)``): the same inputs give the same
interval. Values must be finite: a NaN is never averaged into a number; the
caller says which decisions a metric scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "bootstrap_band", "bootstrap_ci", "paired_bootstrap_ci"]


@dataclass(frozen=True)
class Interval:
    """A mean and its bootstrap interval.

    Attributes:
        mean: the sample mean.
        low, high: the interval's ends (percentiles of the resampled means).
        n: number of values (decisions).
        confidence: nominal coverage, e.g. 0.95.
    """

    mean: float
    low: float
    high: float
    n: int
    confidence: float

    @property
    def half_width(self) -> float:
        """Half the interval's width (what "+-" reports)."""
        return (self.high - self.low) / 2

    def excludes(self, value: float = 0.0) -> bool:
        """Whether ``value`` lies outside the interval (for a difference: a significant one at this level)."""
        return not self.low <= value <= self.high


def _as_values(values: Sequence[float] | np.ndarray, name: str, ndim: int = 1) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != ndim or array.size == 0:
        what = "1-D sequence of numbers" if ndim == 1 else f"{ndim}-D array (decisions first)"
        raise ValueError(f"{name} must be a non-empty {what}, got shape {array.shape}")
    bad = ~np.isfinite(array)
    if bad.any():
        raise ValueError(
            f"{name} holds {int(bad.sum())} non-finite value(s) of {array.size} (first at row "
            f"{int(np.argwhere(bad)[0][0])}); drop the decisions the metric does not score before the bootstrap"
        )
    return array


def _check_settings(confidence: float, resamples: int, chunk: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1 or chunk < 1:
        raise ValueError(f"resamples and chunk must be >= 1, got {resamples} and {chunk}")


def _percentiles(array: np.ndarray, confidence: float, resamples: int, seed: int, chunk: int) -> np.ndarray:
    """(2, ...) low and high percentiles of the means over axis 0 of ``resamples`` resamples of the rows."""
    rng = np.random.default_rng(seed)
    n = array.shape[0]
    means = np.empty((resamples, *array.shape[1:]))
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        rows = rng.integers(0, n, size=(stop - start, n))  # (chunk, N) drawn decisions
        means[start:stop] = array[rows].mean(axis=1)
    tail = (1.0 - confidence) / 2 * 100
    return np.percentile(means, [tail, 100 - tail], axis=0)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
    chunk: int = 1_000,
) -> Interval:
    """Mean of ``values`` with its percentile-bootstrap interval.

    Args:
        values: (N,) finite per-decision values.
        confidence: nominal coverage in (0, 1).
        resamples: bootstrap resamples (each draws N values with replacement).
        seed: seed of the resampling generator.
        chunk: resamples drawn at once (bounds memory at ``chunk * N`` indices).

    Raises:
        ValueError: empty or non-finite values, confidence outside (0, 1), resamples < 1.
    """
    array = _as_values(values, "values")
    _check_settings(confidence, resamples, chunk)
    low, high = _percentiles(array, confidence, resamples, seed, chunk)
    return Interval(float(array.mean()), float(low), float(high), array.size, confidence)


def bootstrap_band(
    curves: np.ndarray, confidence: float = 0.95, resamples: int = 2_000, seed: int = 0, chunk: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high), each (T,): the mean curve of (N, T) per-decision curves and its pointwise band.

    Whole curves are resampled (a decision's points stay together); the band is
    the percentile interval at each point, not a simultaneous band.
    """
    array = _as_values(curves, "curves", ndim=2)
    _check_settings(confidence, resamples, chunk)
    low, high = _percentiles(array, confidence, resamples, seed, chunk)
    return array.mean(axis=0), low, high


def paired_bootstrap_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    ids_a: Sequence | None = None,
    ids_b: Sequence | None = None,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> Interval:
    """Mean of ``a - b`` over the same decisions, with its percentile-bootstrap interval.

    Args:
        a, b: (N,) finite per-decision values of two explainers, row i of both the same decision.
        ids_a, ids_b: optional decision ids of the rows of ``a`` and ``b``; given, they must be
            identical (same decisions, same order), else ValueError.
        confidence, resamples, seed: as :func:`bootstrap_ci`.
    """
    first, second = _as_values(a, "a"), _as_values(b, "b")
    if first.shape != second.shape:
        raise ValueError(f"a and b must score the same decisions: {first.size} vs {second.size} values")
    if (ids_a is None) != (ids_b is None):
        raise ValueError("give decision ids for both a and b, or for neither")
    if ids_a is not None:
        left, right = list(ids_a), list(ids_b)
        if len(left) != first.size or len(right) != second.size:
            raise ValueError(f"{len(left)} / {len(right)} decision ids for {first.size} values")
        mismatched = [i for i, (x, y) in enumerate(zip(left, right)) if x != y]
        if mismatched:
            i = mismatched[0]
            raise ValueError(
                f"a paired difference needs the same decisions in the same order: {len(mismatched)} rows differ "
                f"(first: row {i}, {left[i]!r} vs {right[i]!r})"
            )
    return bootstrap_ci(first - second, confidence=confidence, resamples=resamples, seed=seed)
