"""fam-benchmark: every explainer on the same decisions of a checkpoint, with bootstrap intervals."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from fam_lightning.metrics.bootstrap import bootstrap_ci, paired_bootstrap_ci
from fam_lightning.tools import benchmark
from tests.helpers.cli import run_process

EXPLAINERS = ["fam", "gradcam", "eigencam"]


def _results(rng: np.random.Generator, n: int) -> dict[str, dict[str, np.ndarray]]:
    """Synthetic per-decision values of two explainers and the uniform map on the same ``n`` decisions."""
    shared = rng.normal(20.0, 10.0, size=n)
    results = {}
    for name, shift in (("fam", 0.0), ("gradcam", 2.0), ("uniform", -10.0)):
        arrays = {m.key: shared + shift + rng.normal(0.0, 1.0, size=n) for m in benchmark.METRICS}
        arrays["average_drop"][:3] = np.nan  # Y <= 0: not scored, for every explainer alike
        arrays["deletion_curve"] = rng.random((n, 11))
        arrays["insertion_curve"] = rng.random((n, 11))
        arrays["nonfinite"] = np.zeros(n, dtype=bool)
        results[name] = arrays
    return results


def test_summary_pairs_each_explainer_with_fam_on_the_same_decisions() -> None:
    results = _results(np.random.default_rng(0), 200)
    ids = [f"test:0:{i // 50}:{i % 50}" for i in range(200)]
    rows = benchmark.summarize(results, ids, resamples=2000, seed=1)
    row = next(r for r in rows if r["explainer"] == "gradcam" and r["metric"] == "energy")
    expected = paired_bootstrap_ci(results["gradcam"]["energy"], results["fam"]["energy"], resamples=2000, seed=1)
    assert (row["diff_to_fam_mean"], row["diff_to_fam_low"], row["diff_to_fam_high"]) == pytest.approx(
        (expected.mean, expected.low, expected.high))
    alone = bootstrap_ci(results["gradcam"]["energy"], resamples=2000, seed=1)
    assert (row["mean"], row["low"], row["high"]) == pytest.approx((alone.mean, alone.low, alone.high))
    # the shared between-decision spread cancels in the pairing: the paired interval is much narrower
    assert expected.half_width < alone.half_width / 4
    # AD: the 3 unscored decisions are left out of the mean and of the pairing
    ad = next(r for r in rows if r["explainer"] == "gradcam" and r["metric"] == "average_drop")
    assert ad["n"] == 197
    assert ad["diff_to_fam_mean"] == pytest.approx(float(np.mean(
        results["gradcam"]["average_drop"][3:] - results["fam"]["average_drop"][3:])))
    # shuffling one explainer's decisions breaks the pairing: a different (wider) interval
    shuffled = {**results, "gradcam": {**results["gradcam"],
                                       "energy": np.random.default_rng(5).permutation(results["gradcam"]["energy"])}}
    other = next(r for r in benchmark.summarize(shuffled, ids, resamples=2000, seed=1)
                 if r["explainer"] == "gradcam" and r["metric"] == "energy")
    assert other["diff_to_fam_high"] - other["diff_to_fam_low"] > 4 * (row["diff_to_fam_high"] - row["diff_to_fam_low"])


def test_a_nonfinite_map_makes_the_explainers_figures_nan_never_a_number() -> None:
    results = _results(np.random.default_rng(1), 50)
    results["gradcam"]["nonfinite"][7] = True
    results["gradcam"]["energy"][7] = np.nan
    rows = benchmark.summarize(results, [str(i) for i in range(50)], resamples=200)
    energy = next(r for r in rows if r["explainer"] == "gradcam" and r["metric"] == "energy")
    assert np.isnan(energy["mean"]) and np.isnan(energy["diff_to_fam_mean"]) and energy["nonfinite"] == 1
    assert "| gradcam | 50 | NaN |" in benchmark.markdown_tables(rows, "header")


@pytest.fixture(scope="module")
def checkpoints(trained_checkpoint) -> dict[str, Path]:
    """One tiny fit per family (few-shot, retrieval: its gallery pass returns no decisions), shared by the session."""
    return {family: trained_checkpoint(family) for family in ("few-shot", "retrieval")}


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["few-shot", "retrieval"])
def test_benchmark_explains_the_same_decisions_with_every_explainer(family: str, checkpoints, tmp_path: Path,
                                                                    capsys) -> None:
    out = tmp_path / "bench"
    code = benchmark.main(["--ckpt_path", str(checkpoints[family]), "--device", "cpu", "--explainers", *EXPLAINERS,
                           "--decisions", "6", "--all_decisions", "--steps", "4", "--resamples", "300",
                           "--out", str(out), "--no_progress", "--data.num_workers", "0"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["summary.csv", "summary.md", "decisions.csv", "curves.png", "metrics.png", "differences.png"])
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    decisions = _read(out / "decisions.csv")
    ids = {name: [r["decision"] for r in decisions if r["explainer"] == name] for name in [*EXPLAINERS, "uniform"]}
    assert len(ids["fam"]) == 6 and len(set(ids["fam"])) == 6  # stopped at the requested count, distinct
    assert all(found == ids["fam"] for found in ids.values())  # every explainer: the same decisions, same order
    summary = {(r["explainer"], r["metric"]): r for r in _read(out / "summary.csv")}
    # the paired difference is the mean of the per-decision differences on those same decisions
    fam = np.array([float(r["deletion_auc"]) for r in decisions if r["explainer"] == "fam"])
    gradcam = np.array([float(r["deletion_auc"]) for r in decisions if r["explainer"] == "gradcam"])
    assert float(summary[("gradcam", "deletion_auc")]["diff_to_fam_mean"]) == pytest.approx((gradcam - fam).mean())
    low, high = (float(summary[("gradcam", "deletion_auc")][k]) for k in ("low", "high"))
    assert low <= gradcam.mean() <= high
    assert "Paired difference to FAM" in capsys.readouterr().out


@pytest.mark.slow
def test_correct_decisions_only_by_default_and_bad_flags_named(checkpoints, tmp_path: Path, capsys) -> None:
    ckpt = str(checkpoints["few-shot"])
    # fam-benchmark's one run in a process of its own (python benchmark.py, as a user runs it)
    run_process(["--ckpt_path", ckpt, "--device", "cpu", "--explainers", "fam", "--decisions", "4", "--steps",
                 "2", "--resamples", "100", "--out", str(tmp_path / "b"), "--no_progress"], tmp_path,
                script="benchmark.py")
    header = (tmp_path / "b" / "summary.md").read_text()
    assert "4 correctly classified decisions of the test split" in header
    with pytest.raises(SystemExit):
        benchmark.main(["--ckpt_path", ckpt, "--decisions", "0"])
    assert "--decisions must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmark.main(["--ckpt_path", str(tmp_path / "missing.ckpt")])
    assert "checkpoint not found" in capsys.readouterr().err


@pytest.mark.slow
def test_sanity_writes_its_curves_as_a_png(checkpoints, tmp_path: Path) -> None:
    from fam_lightning.tools import sanity

    png = tmp_path / "sanity.png"
    assert sanity.main(["--ckpt_path", str(checkpoints["few-shot"]), "--device", "cpu", "--batches", "1",
                        "--explainers", "fam", "gradcam", "--out", str(tmp_path / "s.csv"), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
