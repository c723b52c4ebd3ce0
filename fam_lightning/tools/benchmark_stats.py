"""fam-benchmark's statistics: per explainer and metric the mean with its bootstrap interval, and the paired
difference to FAM on the same decisions (:mod:`fam_lightning.metrics.bootstrap`, seeded).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fam_lightning.metrics.bootstrap import Interval, bootstrap_ci, paired_bootstrap_ci
from fam_lightning.tools.benchmark_recorder import METRICS, REFERENCE


def _scored(arrays: dict[str, np.ndarray], key: str) -> np.ndarray:
    """Rows a metric scores: finite values (NaN = not scored: no box, Y <= 0), or a real NaN to report."""
    return np.isfinite(arrays[key]) | arrays["nonfinite"]


def summarize(
    results: dict[str, dict[str, np.ndarray]], ids: Sequence[str], confidence: float = 0.95,
    resamples: int = 10_000, seed: int = 0,
) -> list[dict[str, Any]]:
    """One row per explainer and metric: n, mean and interval, and the paired difference to FAM.

    The difference uses the decisions both explainers score (for AD / IC the
    same ``Y > 0`` decisions, for energy / IoU those with boxes: the same rows).
    A non-finite map or score on a scored decision makes that row NaN.
    """
    rows = []
    reference = results.get(REFERENCE)
    ids = np.asarray(ids)
    for name, arrays in results.items():
        for metric in METRICS:
            scored = _scored(arrays, metric.key)
            values = arrays[metric.key][scored]
            row: dict[str, Any] = {"explainer": name, "metric": metric.key, "n": int(scored.sum()),
                                   "nonfinite": int(arrays["nonfinite"][scored].sum())}
            row.update(_interval_fields("", _interval(values, confidence, resamples, seed)))
            if reference is not None and name != REFERENCE:
                both = scored & _scored(reference, metric.key)
                difference = None
                if both.any() and np.isfinite(arrays[metric.key][both]).all() \
                        and np.isfinite(reference[metric.key][both]).all():
                    difference = paired_bootstrap_ci(
                        arrays[metric.key][both], reference[metric.key][both], ids[both], ids[both],
                        confidence=confidence, resamples=resamples, seed=seed,
                    )
                row.update(_interval_fields("diff_to_fam_", difference, nan=both.any()))
            rows.append(row)
    return rows


def _interval(values: np.ndarray, confidence: float, resamples: int, seed: int) -> Interval | None:
    if values.size == 0 or not np.isfinite(values).all():
        return None
    return bootstrap_ci(values, confidence=confidence, resamples=resamples, seed=seed)


def _interval_fields(prefix: str, interval: Interval | None, nan: bool = True) -> dict[str, float | str]:
    if interval is None:
        fill: float | str = math.nan if nan else ""
        return {f"{prefix}mean": fill, f"{prefix}low": fill, f"{prefix}high": fill}
    return {f"{prefix}mean": interval.mean, f"{prefix}low": interval.low, f"{prefix}high": interval.high}
