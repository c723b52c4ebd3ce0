"""Percentile-bootstrap intervals: nominal coverage on seeded draws, pairing on identical decisions."""

from __future__ import annotations

import numpy as np
import pytest

from fam_lightning.metrics.bootstrap import bootstrap_band, bootstrap_ci, paired_bootstrap_ci


def test_interval_covers_the_true_mean_at_about_the_nominal_rate() -> None:
    # 400 seeded samples of 100 draws from a skewed distribution (Beta(2, 5), mean 2/7)
    true_mean, draws = 2 / 7, 400
    covered = 0
    for seed in range(draws):
        sample = np.random.default_rng(1000 + seed).beta(2.0, 5.0, size=100)
        interval = bootstrap_ci(sample, resamples=2000, seed=seed)
        covered += interval.low <= true_mean <= interval.high
    rate = covered / draws
    # binomial sd of the rate at 95 % over 400 draws: 1.1 points; the band is about +-3 sd
    assert 0.915 <= rate <= 0.985, rate


def test_interval_of_a_constant_is_the_constant_and_the_mean_is_the_sample_mean() -> None:
    interval = bootstrap_ci([0.3] * 20)
    assert interval.low == interval.high == pytest.approx(0.3)
    values = np.random.default_rng(0).normal(5.0, 2.0, size=200)
    interval = bootstrap_ci(values, seed=3)
    assert interval.mean == pytest.approx(values.mean())
    assert interval.low < interval.mean < interval.high
    # the percentile interval of a mean is close to +-1.96 standard errors for a normal sample
    assert interval.half_width == pytest.approx(1.96 * values.std(ddof=1) / np.sqrt(200), rel=0.1)


def test_the_same_seed_gives_the_same_interval_and_another_seed_another() -> None:
    values = np.random.default_rng(1).exponential(size=50)
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7).low != bootstrap_ci(values, seed=8).low


def test_paired_interval_removes_the_shared_spread_and_shuffling_breaks_it() -> None:
    rng = np.random.default_rng(2)
    difficulty = rng.normal(0.0, 10.0, size=300)  # what both explainers share, decision by decision
    a = difficulty + 1.0 + rng.normal(0.0, 0.5, size=300)
    b = difficulty + rng.normal(0.0, 0.5, size=300)
    paired = paired_bootstrap_ci(a, b, seed=0)
    assert paired.mean == pytest.approx(float((a - b).mean()))
    assert paired.excludes(0.0) and paired.half_width < 0.15
    # the same values, but b's decisions out of order: the pairing is lost, the interval widens by ~20x
    shuffled = paired_bootstrap_ci(a, rng.permutation(b), seed=0)
    assert shuffled.half_width > 10 * paired.half_width
    assert not shuffled.excludes(0.0)


def test_paired_interval_checks_that_the_decision_ids_match() -> None:
    ids = [f"0:{i}" for i in range(5)]
    values = np.arange(5.0)
    assert paired_bootstrap_ci(values, values, ids, list(ids)).mean == 0.0
    with pytest.raises(ValueError, match="same decisions in the same order: 2 rows differ"):
        paired_bootstrap_ci(values, values, ids, [ids[1], ids[0], *ids[2:]])
    with pytest.raises(ValueError, match="for both a and b"):
        paired_bootstrap_ci(values, values, ids, None)
    with pytest.raises(ValueError, match="same decisions: 5 vs 4"):
        paired_bootstrap_ci(values, values[:4])


@pytest.mark.parametrize(
    "values, message",
    [([], "non-empty"), ([[1.0, 2.0]], "1-D"), ([1.0, float("nan"), 2.0], "1 non-finite value")],
)
def test_bad_values_are_named(values: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_ci(values)


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0, 2.0], confidence=95)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_ci([1.0, 2.0], resamples=0)


def test_band_of_curves_brackets_the_mean_curve_point_by_point() -> None:
    rng = np.random.default_rng(4)
    curves = np.linspace(1.0, 0.0, 11)[None, :] + rng.normal(0.0, 0.1, size=(80, 11))
    mean, low, high = bootstrap_band(curves, seed=1)
    assert mean.shape == low.shape == high.shape == (11,)
    np.testing.assert_allclose(mean, curves.mean(axis=0))
    assert (low < mean).all() and (mean < high).all()
    # each point's band is that point's own interval (same resampled rows, so the same seed agrees)
    point = bootstrap_ci(curves[:, 5], resamples=2000, seed=1, chunk=200)
    assert (low[5], high[5]) == pytest.approx((point.low, point.high))
    with pytest.raises(ValueError, match="2-D array"):
        bootstrap_band(curves[:, 0])
