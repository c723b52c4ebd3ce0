"""Matplotlib figures of the benchmark, the sanity check and a training run's evolution.

Pure functions: numbers in, a :class:`matplotlib.figure.Figure` out (no
pyplot state, no display; Agg canvas), saved with :func:`save_figure` or
turned into an (H, W, 3) uint8 array for TensorBoard with :func:`figure_array`.
matplotlib is imported here only, so the rest of the package does not need it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fam_lightning.io import atomic_write

Band = tuple[np.ndarray, np.ndarray, np.ndarray]  # (mean, low, high), each (T,)
REFERENCE = "fam"
UNIFORM = "uniform"


def _colours(names: Sequence[str]) -> dict[str, Any]:
    """A stable colour per explainer: FAM black, the uniform map grey, the others tab10 without its grey."""
    from matplotlib import colormaps

    others = [n for n in names if n not in (REFERENCE, UNIFORM)]
    palette = [colormaps["tab10"](i) for i in range(10) if i != 7]  # 7: grey, the uniform map's
    palette += [colormaps["tab20"](i) for i in range(1, 20, 2) if i != 15]
    colours = {name: palette[i % len(palette)] for i, name in enumerate(others)}
    colours[REFERENCE], colours[UNIFORM] = (0.0, 0.0, 0.0, 1.0), (0.55, 0.55, 0.55, 1.0)
    return colours


MARKERS = "osD^vP*X<>hd"


def _line_style(names: Sequence[str], name: str) -> dict[str, Any]:
    """Marker and width per explainer; later lines thinner, so coinciding curves (Grad-CAM = XGrad-CAM) both show."""
    if name == REFERENCE:
        return {"marker": "o", "linewidth": 2.6, "markersize": 6, "zorder": 10}
    index = [n for n in names if n != REFERENCE].index(name)
    return {"marker": MARKERS[index % len(MARKERS)], "linewidth": max(0.8, 3.0 - 0.25 * index),
            "markersize": max(3.0, 8.0 - 0.5 * index), "zorder": 2 + index}


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def deletion_insertion_figure(fractions: np.ndarray, deletion: Mapping[str, Band],
                              insertion: Mapping[str, Band]) -> Figure:
    """Mean deletion and insertion curves per explainer, each with its bootstrap band (two panels).

    Args:
        fractions: (T,) fraction of the pixels deleted / inserted at each point.
        deletion, insertion: ``{explainer: (mean, low, high)}``, each (T,), the decision score.
    """
    figure = _figure(11, 4.4)
    colours = _colours(list(dict.fromkeys([*deletion, *insertion])))
    axes = figure.subplots(1, 2)
    for axis, curves, title in ((axes[0], deletion, "deletion (lower is better)"),
                                (axes[1], insertion, "insertion (higher is better)")):
        for name, (mean, low, high) in curves.items():
            width = 2.2 if name == REFERENCE else 1.2
            style = "--" if name == UNIFORM else "-"
            axis.plot(fractions, mean, style, color=colours[name], linewidth=width, label=name)
            axis.fill_between(fractions, low, high, color=colours[name], alpha=0.15, linewidth=0)
        axis.set_title(title)
        axis.set_xlabel("fraction of pixels, most salient first")
        axis.set_ylabel("decision score (mean similarity)")
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    figure.suptitle("Deletion / insertion curves: mean over decisions, 95 % bootstrap band")
    return figure


def _rows_by(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], dict[tuple[str, str], Mapping[str, Any]]]:
    names = list(dict.fromkeys(row["explainer"] for row in rows))
    return names, {(row["explainer"], row["metric"]): row for row in rows}


def _finite(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def metric_intervals_figure(rows: Sequence[Mapping[str, Any]], metrics: Sequence[tuple[str, str]]) -> Figure:
    """One panel per metric: each explainer's mean with its interval; the uniform map as a dashed line.

    Args:
        rows: summary rows with ``explainer``, ``metric``, ``mean``, ``low``, ``high``.
        metrics: (key, label) of the metrics to draw.
    """
    names, by = _rows_by(rows)
    shown = [n for n in names if n != UNIFORM]
    colours = _colours(names)
    figure = _figure(3.2 * len(metrics), 0.32 * len(shown) + 1.6)
    axes = np.atleast_1d(figure.subplots(1, len(metrics), sharey=True))
    positions = np.arange(len(shown))[::-1]
    for axis, (key, label) in zip(axes, metrics):
        for y, name in zip(positions, shown):
            row = by.get((name, key))
            if row is None or not _finite(row["mean"], row["low"], row["high"]):
                continue
            axis.errorbar(row["mean"], y, xerr=[[row["mean"] - row["low"]], [row["high"] - row["mean"]]],
                          fmt="o", color=colours[name], capsize=3, markersize=5 if name != REFERENCE else 7)
        uniform = by.get((UNIFORM, key))
        if uniform is not None and _finite(uniform["mean"]):
            axis.axvline(uniform["mean"], color=colours[UNIFORM], linestyle="--", label="uniform map")
            axis.legend(fontsize=7, loc="best")
        axis.set_title(label)
        axis.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(positions, shown)
    figure.suptitle("Mean per explainer with its 95 % bootstrap interval")
    return figure


def paired_differences_figure(rows: Sequence[Mapping[str, Any]], metrics: Sequence[tuple[str, str]]) -> Figure:
    """One panel per metric: explainer - FAM on the same decisions, with the paired interval; 0 marked."""
    names, by = _rows_by(rows)
    shown = [n for n in names if n != REFERENCE]
    colours = _colours(names)
    columns = min(3, len(metrics))
    lines = math.ceil(len(metrics) / columns)
    figure = _figure(3.6 * columns, lines * (0.3 * len(shown) + 1.3) + 0.4)
    axes = np.atleast_1d(figure.subplots(lines, columns, sharey=True)).ravel()
    for axis in axes[len(metrics):]:
        axis.set_visible(False)
    positions = np.arange(len(shown))[::-1]
    for axis, (key, label) in zip(axes, metrics):
        axis.axvline(0.0, color="black", linewidth=1)
        for y, name in zip(positions, shown):
            row = by.get((name, key), {})
            mean, low, high = (row.get(f"diff_to_fam_{part}") for part in ("mean", "low", "high"))
            if not _finite(mean, low, high):
                continue
            excluded = not low <= 0.0 <= high
            axis.errorbar(mean, y, xerr=[[mean - low], [high - mean]], fmt="o", color=colours[name], capsize=3,
                          markerfacecolor=colours[name] if excluded else "white")
        axis.set_title(label, fontsize=10)
        axis.grid(axis="x", alpha=0.3)
    for axis in axes[::columns]:
        axis.set_yticks(positions, shown)
    figure.suptitle("Explainer - FAM on the same decisions, 95 % paired bootstrap interval\n"
                    "(filled: the interval excludes 0)", fontsize=11)
    return figure


def sanity_curves_figure(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Spearman rank correlation vs the randomised depth, one line per explainer (Adebayo et al. 2018, Fig. 2).

    Args:
        rows: fam-sanity rows (``layer``, ``explainer``, ``spearman_mean``, ``spearman_std``) in
            randomisation order, top layer first. The first point, "original", is the trained model (1).
    """
    layers = list(dict.fromkeys(row["layer"] for row in rows))
    names = list(dict.fromkeys(row["explainer"] for row in rows))
    colours = _colours(names)
    values = {(row["explainer"], row["layer"]): float(row["spearman_mean"]) for row in rows}
    figure = _figure(max(7.0, 0.7 * len(layers) + 3), 5.0)
    axis = figure.subplots()
    x = np.arange(len(layers) + 1)
    for name in names:
        curve = [1.0, *(values.get((name, layer), math.nan) for layer in layers)]
        axis.plot(x, curve, "-", color=colours[name], label=name, **_line_style(names, name))
    axis.axhline(0.0, color="grey", linewidth=0.8)
    axis.set_xticks(x, ["original", *layers], rotation=45, ha="right", fontsize=8)
    axis.set_ylim(min(-0.1, axis.get_ylim()[0]), 1.05)
    axis.set_xlabel("randomised from the top down to")
    axis.set_ylabel("Spearman rank correlation with the trained maps")
    axis.set_title("Cascading randomisation: lower means the maps depend on the weights")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8, ncol=2)
    return figure


def energy_evolution_figure(steps: Sequence[int], energies: Mapping[str, Sequence[float]],
                            uniform: Sequence[float] | None = None,
                            untrained: Mapping[str, float] | None = None) -> Figure:
    """Each explainer's energy over the validations, with the uniform-map and untrained-model lines.

    Args:
        steps: global step of each validation (step 0: the untrained model).
        energies: ``{explainer: energy (%) at each step}`` (NaN: not measured then).
        uniform: the uniform map's energy at each step (the chance level), or None.
        untrained: ``{explainer: energy (%) of the untrained model over all its decisions}``.
    """
    names = list(energies)
    colours = _colours([*names, UNIFORM])
    figure = _figure(7.5, 4.5)
    axis = figure.subplots()
    for name in names:
        values = np.asarray(energies[name], dtype=float)
        measured = np.isfinite(values)
        axis.plot(np.asarray(steps)[measured], values[measured], "-o", color=colours[name], label=name,
                  linewidth=2.4 if name == REFERENCE else 1.3)
        if untrained and name in untrained:
            axis.axhline(untrained[name], color=colours[name], linestyle=":", linewidth=1.2,
                         label=f"{name}, untrained model (all decisions)")
    if uniform is not None:
        values = np.asarray(uniform, dtype=float)
        measured = np.isfinite(values)
        axis.plot(np.asarray(steps)[measured], values[measured], "--", color=colours[UNIFORM],
                  label="uniform map (chance)")
    axis.set_xlabel("global step")
    axis.set_ylabel("energy pointing game (%), correct decisions")
    axis.set_title("Share of the saliency inside the box over training")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return figure


def figure_array(figure: Figure) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of ``figure`` (for TensorBoard's ``add_image(..., dataformats="HWC")``)."""
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def save_figure(figure: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write ``figure`` as a PNG, atomically; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda tmp: figure.savefig(tmp, format="png", dpi=dpi))
    return target
