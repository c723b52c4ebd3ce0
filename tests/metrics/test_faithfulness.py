"""Average Drop and Increase in Confidence: known answers and a loop reference."""

from __future__ import annotations

import pytest
import torch

from fam_lightning.metrics import AverageDrop, IncreaseInConfidence, average_drop, increase_in_confidence

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def ref_average_drop(y: list[float], o: list[float]) -> tuple[float, int]:
    drops = [max(0.0, yi - oi) / yi * 100 for yi, oi in zip(y, o) if yi > 0]
    return (sum(drops) / len(drops) if drops else 0.0), len(y) - len(drops)


def ref_increase(y: list[float], o: list[float]) -> tuple[float, int]:
    hits = [100.0 if oi > yi else 0.0 for yi, oi in zip(y, o) if yi > 0]
    return (sum(hits) / len(hits) if hits else 0.0), len(y) - len(hits)


Y = torch.tensor([2.0, 1.0, -1.0, 0.0, 0.5])
O = torch.tensor([1.0, 2.0, 5.0, 1.0, 0.5])


def test_known_answers_exclude_non_positive_y() -> None:
    # valid: (2, 1) drop 50 %, (1, 2) drop 0, (0.5, 0.5) drop 0 -> AD = 50 / 3
    assert average_drop(Y, O).item() == pytest.approx(50 / 3)
    # only (1, 2) increases; O == Y is not an increase -> IC = 100 / 3
    assert increase_in_confidence(Y, O).item() == pytest.approx(100 / 3)


def test_no_valid_sample_gives_zero() -> None:
    y, o = torch.tensor([0.0, -0.5]), torch.tensor([1.0, 1.0])
    for fn in (average_drop, increase_in_confidence):
        value = fn(y, o)
        assert value.item() == 0.0 and not value.isnan()
    for fn in (average_drop, increase_in_confidence):
        assert fn(torch.zeros(0), torch.zeros(0)).item() == 0.0


@pytest.mark.parametrize(("functional", "reference"), [(average_drop, ref_average_drop), (increase_in_confidence, ref_increase)])
def test_matches_loop_reference_on_random_scores(functional, reference) -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(64, generator=gen)
    o = y + 0.5 * torch.randn(64, generator=gen)
    assert functional(y, o).item() == pytest.approx(reference(y.tolist(), o.tolist())[0], rel=1e-5)


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for batch in (7, 1, 12):
        y = torch.randn(batch, generator=gen)
        out.append((y, y + 0.3 * torch.randn(batch, generator=gen)))
    return out


@pytest.mark.parametrize(
    ("metric_cls", "functional", "reference"),
    [(AverageDrop, average_drop, ref_average_drop), (IncreaseInConfidence, increase_in_confidence, ref_increase)],
)
def test_class_accumulates_like_functional_on_all_data(metric_cls, functional, reference) -> None:
    batches = _batches()
    metric = metric_cls()
    for y, o in batches:
        metric.update(y, o)
    y_all = torch.cat([y for y, _ in batches])
    o_all = torch.cat([o for _, o in batches])
    expected, excluded = reference(y_all.tolist(), o_all.tolist())
    assert metric.compute().item() == pytest.approx(expected, rel=1e-6)
    assert metric.compute().item() == pytest.approx(functional(y_all, o_all).item(), rel=1e-6)
    assert metric.num_excluded.item() == excluded == int((y_all <= 0).sum())
    assert metric.num_valid.item() == int((y_all > 0).sum())

    big = metric_cls()
    big.update(y_all, o_all)
    assert big.compute().item() == pytest.approx(metric.compute().item(), rel=1e-6)

    # Two "ranks" merged through the sum reductions equal the whole.
    rank0, rank1 = metric_cls(), metric_cls()
    rank0.update(*batches[0])
    rank1.update(*batches[1])
    rank1.update(*batches[2])
    rank0.merge_state(rank1)
    assert rank0.compute().item() == pytest.approx(metric.compute().item(), rel=1e-6)
    assert rank0.num_excluded.item() == excluded


def test_exclusion_counting_across_updates() -> None:
    metric = AverageDrop()
    metric.update(torch.tensor([0.0, -1.0]), torch.tensor([1.0, 1.0]))
    assert metric.compute().item() == 0.0
    assert metric.num_excluded.item() == 2
    metric.update(torch.tensor([4.0, -2.0, 1.0]), torch.tensor([1.0, 0.0, 1.5]))
    assert metric.compute().item() == pytest.approx((75.0 + 0.0) / 2)
    assert metric.num_excluded.item() == 3 and metric.num_valid.item() == 2
    metric.reset()
    assert metric.num_excluded.item() == 0


def test_flags() -> None:
    assert AverageDrop.higher_is_better is False
    assert IncreaseInConfidence.higher_is_better is True
    assert AverageDrop.full_state_update is False and IncreaseInConfidence.full_state_update is False


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes(dtype: torch.dtype) -> None:
    y, o = Y.to(dtype), O.to(dtype)
    assert average_drop(y, o).dtype == dtype
    assert increase_in_confidence(y, o).dtype == dtype
    assert average_drop(y, o).item() == pytest.approx(50 / 3)
    metric = IncreaseInConfidence()
    metric.update(y, o)
    assert metric.compute().item() == pytest.approx(100 / 3)


def test_wrong_shapes_raise_value_errors_naming_the_argument() -> None:
    with pytest.raises(ValueError, match=r"y must have shape \(B,\)"):
        average_drop(torch.ones(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="o must have the shape of y"):
        increase_in_confidence(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="o must"):
        AverageDrop().update(torch.ones(3), torch.ones(3, 1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric_cls", [AverageDrop, IncreaseInConfidence])
def test_state_lives_on_input_device(metric_cls, device: str) -> None:
    metric = metric_cls().to(device)
    metric.update(Y.to(device), O.to(device))
    for state in (metric.score_sum, metric.num_valid, metric.num_excluded, metric.compute()):
        assert state.device.type == device


def test_nan_scores_make_the_result_nan_never_a_number() -> None:
    """A NaN Y used to fail the y > 0 filter and vanish from the mean; now it poisons it and is counted."""
    y, o = torch.tensor([2.0, float("nan"), 1.0]), torch.tensor([1.0, 1.0, float("nan")])
    for fn in (average_drop, increase_in_confidence):
        assert fn(y, o).isnan()
    for cls in (AverageDrop, IncreaseInConfidence):
        metric = cls()
        metric.update(torch.tensor([2.0]), torch.tensor([1.0]))
        assert not metric.compute().isnan()
        metric.update(y, o)
        assert metric.compute().isnan()
        assert int(metric.num_nan) == 2 and int(metric.num_valid) == 2 and int(metric.num_excluded) == 0
        metric.reset()
        assert int(metric.num_nan) == 0


def test_relative_tolerance_ignores_round_off_but_counts_real_increases() -> None:
    y = torch.tensor([1.0, 1.0, 2.0])
    o = torch.tensor([1.0 + 1e-7, 1.0 + 1e-3, 2.0 - 1e-7])  # round-off, a real increase, round-off
    assert increase_in_confidence(y, o).item() == pytest.approx(200 / 3)  # today's strict comparison
    assert increase_in_confidence(y, o, rtol=1e-5).item() == pytest.approx(100 / 3)
    metric = IncreaseInConfidence(rtol=1e-5)
    metric.update(y, o)
    assert metric.compute().item() == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="rtol"):
        IncreaseInConfidence(rtol=-1.0)


def test_per_sample_twins_are_what_the_means_average() -> None:
    from fam_lightning.metrics.faithfulness import average_drop_per_sample, increase_in_confidence_per_sample

    y = torch.tensor([0.8, 0.5, -0.2, float("nan"), 0.4])
    o = torch.tensor([0.4, 0.6, 0.1, 0.3, 0.4])
    drops = average_drop_per_sample(y, o)
    increases = increase_in_confidence_per_sample(y, o)
    assert torch.allclose(drops[[0, 1, 4]], torch.tensor([50.0, 0.0, 0.0]))
    assert torch.equal(increases[[0, 1, 4]], torch.tensor([0.0, 100.0, 0.0]))
    assert drops[2:4].isnan().all() and increases[2:4].isnan().all()  # Y <= 0 excluded, NaN stays NaN
    keep = [0, 1, 4]
    assert torch.isclose(average_drop(y[keep], o[keep]), drops[keep].mean())
    assert torch.isclose(increase_in_confidence(y[keep], o[keep]), increases[keep].mean())
