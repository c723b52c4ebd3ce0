"""fam-benchmark's outputs: the markdown tables, summary.csv / decisions.csv and the three plots (atomic writes)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fam_lightning.io import atomic_write
from fam_lightning.metrics.bootstrap import bootstrap_band
from fam_lightning.tools.benchmark_recorder import METRICS, REFERENCE, Metric


def _cell(row: dict[str, Any], prefix: str, digits: int, signed: bool = False) -> str:
    mean, low, high = (row.get(f"{prefix}{part}", "") for part in ("mean", "low", "high"))
    if mean == "":
        return ""
    if isinstance(mean, float) and math.isnan(mean):
        return "NaN" if row["n"] else "-"
    sign = "+" if signed else ""
    return f"{mean:{sign}.{digits}f} [{low:{sign}.{digits}f}, {high:{sign}.{digits}f}]"


def markdown_tables(rows: list[dict[str, Any]], header: str) -> str:
    """Means with intervals (explainer x metric), then the paired differences to FAM."""
    names = list(dict.fromkeys(row["explainer"] for row in rows))
    by = {(row["explainer"], row["metric"]): row for row in rows}
    columns = " | ".join(m.label + ("" if m.higher_is_better is None else (" higher" if m.higher_is_better
                                                                              else " lower")) for m in METRICS)
    lines = [header, "", "Mean [95 % bootstrap interval] over the explained decisions:", "",
             f"| explainer | n | {columns} |", "|---|---:|" + "---:|" * len(METRICS)]
    for name in names:
        n = by[(name, "energy")]["n"] if by[(name, "energy")]["n"] else by[(name, "average_drop")]["n"]
        cells = " | ".join(_cell(by[(name, m.key)], "", m.digits) for m in METRICS)
        lines.append(f"| {name} | {n} | {cells} |")
    if any("diff_to_fam_mean" in row for row in rows):
        lines += ["", "Paired difference to FAM on the same decisions, explainer - fam [95 % interval] "
                  "(an interval excluding 0: a difference at that level):", "",
                  f"| explainer | {columns} |", "|---|" + "---:|" * len(METRICS)]
        for name in names:
            if name == REFERENCE:
                continue
            cells = " | ".join(_cell(by[(name, m.key)], "diff_to_fam_", m.digits, signed=True) for m in METRICS)
            lines.append(f"| {name} | {cells} |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    fields = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda tmp: tmp.write_text(buffer.getvalue(), newline=""))


def decision_rows(results: dict[str, dict[str, np.ndarray]], ids: Sequence[str]) -> list[dict[str, Any]]:
    """Every decision's values, one row per (decision, explainer)."""
    rows = []
    for name, arrays in results.items():
        for i, decision in enumerate(ids):
            rows.append({"decision": decision, "explainer": name,
                         **{m.key: float(arrays[m.key][i]) for m in METRICS},
                         "nonfinite": bool(arrays["nonfinite"][i])})
    return rows


def write_outputs(
    out: Path, results: dict[str, dict[str, np.ndarray]], ids: Sequence[str], rows: list[dict[str, Any]],
    header: str, steps: int, confidence: float, seed: int,
) -> list[Path]:
    """summary.csv / .md, decisions.csv and the three plots under ``out``; returns the paths."""
    from fam_lightning.visualize import plots  # matplotlib is only needed here

    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "summary.csv", out / "summary.md", out / "decisions.csv"]
    _write_csv(paths[0], rows)
    text = markdown_tables(rows, header)
    atomic_write(paths[1], lambda tmp: tmp.write_text(text))
    _write_csv(paths[2], decision_rows(results, ids))
    fractions = np.linspace(0.0, 1.0, steps + 1)
    bands = {}
    for kind in ("deletion", "insertion"):
        bands[kind] = {
            name: bootstrap_band(arrays[f"{kind}_curve"][~arrays["nonfinite"]], confidence=confidence, seed=seed)
            for name, arrays in results.items() if (~arrays["nonfinite"]).any()
        }
    figures = {
        "curves.png": plots.deletion_insertion_figure(fractions, bands["deletion"], bands["insertion"]),
        "metrics.png": plots.metric_intervals_figure(rows, [(m.key, m.label) for m in METRICS[:4]]),
        "differences.png": plots.paired_differences_figure(rows, [(m.key, _direction(m)) for m in METRICS[:6]]),
    }
    for filename, figure in figures.items():
        paths.append(out / filename)
        plots.save_figure(figure, paths[-1])
    return paths


def _direction(metric: Metric) -> str:
    """``energy (%): right of 0 = higher than FAM, better``: how to read a difference panel."""
    better = "right" if metric.higher_is_better else "left"
    return f"{metric.label}\n{better} of 0: better than FAM"
