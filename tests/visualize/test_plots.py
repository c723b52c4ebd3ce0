"""Matplotlib figures of the benchmark, the sanity check and the end-of-fit energy plot: what they draw."""

from __future__ import annotations

import math

import numpy as np

from fam_lightning.visualize import plots


def _lines(axis) -> dict[str, np.ndarray]:
    return {line.get_label(): np.asarray(line.get_ydata(), dtype=float) for line in axis.get_lines()
            if not line.get_label().startswith("_")}


def test_sanity_curves_one_line_per_explainer_from_original_down_the_layers() -> None:
    layers = ["projection", "backbone.2", "backbone.0"]
    rows = [{"layer": layer, "explainer": name, "spearman_mean": value}
            for layer, values in zip(layers, ([0.9, 0.8], [0.5, 0.2], [0.3, math.nan]))
            for name, value in zip(["fam", "gradcam"], values)]
    figure = plots.sanity_curves_figure(rows)
    (axis,) = figure.axes
    lines = _lines(axis)
    np.testing.assert_allclose(lines["fam"], [1.0, 0.9, 0.5, 0.3])  # "original" first: the trained maps themselves
    np.testing.assert_allclose(lines["gradcam"], [1.0, 0.8, 0.2, math.nan])
    assert [t.get_text() for t in axis.get_xticklabels()] == ["original", *layers]


def test_deletion_insertion_curves_with_bands_and_intervals_per_explainer() -> None:
    fractions = np.linspace(0, 1, 5)
    band = (np.linspace(0.8, 0.4, 5), np.linspace(0.7, 0.3, 5), np.linspace(0.9, 0.5, 5))
    figure = plots.deletion_insertion_figure(fractions, {"fam": band, "uniform": band}, {"fam": band})
    deletion, insertion = figure.axes
    assert set(_lines(deletion)) == {"fam", "uniform"} and set(_lines(insertion)) == {"fam"}
    assert len(deletion.collections) == 2  # one band per curve
    rows = [{"explainer": e, "metric": m, "mean": v, "low": v - 1, "high": v + 1}
            for e, v in (("fam", 20.0), ("gradcam", 22.0), ("uniform", 10.0)) for m in ("energy", "iou")]
    figure = plots.metric_intervals_figure(rows, [("energy", "energy (%)"), ("iou", "IoU (%)")])
    energy = figure.axes[0]
    assert [t.get_text() for t in energy.get_yticklabels()] == ["fam", "gradcam"]  # uniform: a line, not a row
    assert [line.get_xdata()[0] for line in energy.get_lines() if line.get_linestyle() == "--"] == [10.0]


def test_figure_array_is_rgb_pixels_of_the_figure_size() -> None:
    figure = plots.energy_evolution_figure([0, 70, 140], {"fam": [12.0, math.nan, 21.0]}, [9.8, 9.7, 9.6],
                                           {"fam": 11.9})
    labels = set(_lines(figure.axes[0]))
    assert {"fam", "uniform map (chance)", "fam, untrained model (all decisions)"} <= labels
    np.testing.assert_allclose(_lines(figure.axes[0])["fam"], [12.0, 21.0])  # the unmeasured validation skipped
    pixels = plots.figure_array(figure)
    width, height = figure.get_size_inches() * figure.dpi
    assert pixels.shape == (round(height), round(width), 3) and pixels.dtype == np.uint8
    assert pixels.min() < 50 and pixels.max() == 255  # something is drawn on white


def test_paired_differences_skip_fam_and_mark_zero(tmp_path) -> None:
    rows = [{"explainer": "fam", "metric": "energy", "mean": 20.0, "low": 19.0, "high": 21.0},
            {"explainer": "gradcam", "metric": "energy", "mean": 22.0, "low": 21.0, "high": 23.0,
             "diff_to_fam_mean": 2.0, "diff_to_fam_low": 1.0, "diff_to_fam_high": 3.0}]
    figure = plots.paired_differences_figure(rows, [("energy", "energy (%)")])
    axis = figure.axes[0]
    assert [t.get_text() for t in axis.get_yticklabels()] == ["gradcam"]
    path = plots.save_figure(figure, tmp_path / "sub" / "d.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_the_old_module_paths_still_import() -> None:
    import importlib

    assert importlib.import_module("fam_lightning.plots") is plots  # moved into fam_lightning.visualize
    from fam_lightning.visualize import overlay
    from fam_lightning.visualize.primitives import overlay as primitive

    assert overlay is primitive  # fam_lightning.visualize (a module before) keeps its names
