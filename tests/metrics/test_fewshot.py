"""Few-shot episode accuracy and its 95% confidence interval."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from fam_lightning.metrics import EpisodeAccuracy, accuracy_with_ci, episode_accuracy

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def ref_mean_ci(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    ci = 1.96 * statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return mean, ci


def test_accuracy_with_ci_known_answer() -> None:
    # mean 0.6, Bessel variance ((-.2)^2 + 0 + .2^2) / 2 = 0.04 -> std 0.2
    mean, ci = accuracy_with_ci(torch.tensor([0.4, 0.6, 0.8]))
    assert mean.item() == pytest.approx(0.6)
    assert ci.item() == pytest.approx(1.96 * 0.2 / math.sqrt(3))


def test_accuracy_with_ci_single_and_no_episode() -> None:
    mean, ci = accuracy_with_ci(torch.tensor([73.5]))
    assert mean.item() == pytest.approx(73.5) and ci.item() == 0.0
    mean, ci = accuracy_with_ci(torch.zeros(0))
    assert mean.item() == 0.0 and ci.item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_accuracy_with_ci_matches_reference(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    acc = torch.rand(200, generator=gen, dtype=torch.float64).to(dtype)
    mean, ci = accuracy_with_ci(acc)
    assert mean.dtype == dtype and ci.dtype == dtype
    ref_mean, ref_ci = ref_mean_ci(acc.tolist())
    assert mean.item() == pytest.approx(ref_mean, rel=1e-6)
    assert ci.item() == pytest.approx(ref_ci, rel=1e-5)


def test_episode_accuracy_rows_are_episodes() -> None:
    preds = torch.tensor([[0, 1, 2, 3], [1, 1, 1, 1]])
    targets = torch.tensor([[0, 1, 0, 0], [1, 1, 1, 1]])
    assert episode_accuracy(preds, targets).tolist() == [0.5, 1.0]
    assert episode_accuracy(preds[0], targets[0]).tolist() == [0.5]


def test_metric_matches_manual_mean_and_ci_over_several_updates() -> None:
    gen = torch.Generator().manual_seed(1)
    metric = EpisodeAccuracy()
    per_episode: list[float] = []
    all_preds, all_targets = [], []
    for episodes in (3, 1, 6):
        preds = torch.randint(0, 5, (episodes, 15), generator=gen)
        targets = torch.randint(0, 5, (episodes, 15), generator=gen)
        metric.update(preds, targets)
        all_preds.append(preds)
        all_targets.append(targets)
        for e in range(episodes):
            per_episode.append(sum(int(p == t) for p, t in zip(preds[e].tolist(), targets[e].tolist())) / 15)
    metric.update(all_preds[1][0], all_targets[1][0])  # a 1-D update is one more episode
    per_episode.append(per_episode[3])

    result = metric.compute()
    ref_mean, ref_ci = ref_mean_ci(per_episode)
    assert set(result) == {"mean", "ci95"}
    assert result["mean"].item() == pytest.approx(100 * ref_mean, rel=1e-9)
    assert result["ci95"].item() == pytest.approx(100 * ref_ci, rel=1e-9)
    assert metric.num_episodes.item() == len(per_episode)

    mean, ci = accuracy_with_ci(torch.tensor(per_episode, dtype=torch.float64) * 100)
    assert result["mean"].item() == pytest.approx(mean.item(), rel=1e-9)
    assert result["ci95"].item() == pytest.approx(ci.item(), rel=1e-9)

    big = EpisodeAccuracy()
    big.update(torch.cat(all_preds + [all_preds[1]]), torch.cat(all_targets + [all_targets[1]]))
    assert big.compute()["mean"].item() == pytest.approx(result["mean"].item(), rel=1e-12)
    assert big.compute()["ci95"].item() == pytest.approx(result["ci95"].item(), rel=1e-9)

    # Two "ranks" merged by the sum reductions equal the whole.
    rank0, rank1 = EpisodeAccuracy(), EpisodeAccuracy()
    rank0.update(torch.cat(all_preds[:2]), torch.cat(all_targets[:2]))
    rank1.update(all_preds[2], all_targets[2])
    rank1.update(all_preds[1][0], all_targets[1][0])
    rank0.merge_state(rank1)
    assert rank0.compute()["ci95"].item() == pytest.approx(result["ci95"].item(), rel=1e-9)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_metric_empty_and_single_episode() -> None:
    metric = EpisodeAccuracy()
    result = metric.compute()
    assert result["mean"].item() == 0.0 and result["ci95"].item() == 0.0
    metric.update(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 4]))
    result = metric.compute()
    assert result["mean"].item() == pytest.approx(75.0) and result["ci95"].item() == 0.0
    assert EpisodeAccuracy.higher_is_better is True and EpisodeAccuracy.full_state_update is False


def test_identical_episodes_have_zero_ci_not_nan() -> None:
    metric = EpisodeAccuracy()
    preds = torch.tensor([[0, 1, 2], [0, 1, 2], [0, 1, 2]])
    metric.update(preds, torch.tensor([[0, 1, 0]] * 3))
    result = metric.compute()
    assert result["mean"].item() == pytest.approx(200 / 3)
    assert result["ci95"].item() == pytest.approx(0.0, abs=1e-6)
    assert not result["ci95"].isnan()


def test_wrong_shapes_raise_value_errors_naming_the_argument() -> None:
    with pytest.raises(ValueError, match="episode_accuracies"):
        accuracy_with_ci(torch.ones(2, 2))
    with pytest.raises(ValueError, match="predictions"):
        EpisodeAccuracy().update(torch.ones(2, 3, 4, dtype=torch.long), torch.ones(2, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="predictions"):
        episode_accuracy(torch.ones(2, 0, dtype=torch.long), torch.ones(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        EpisodeAccuracy().update(torch.ones(2, 3, dtype=torch.long), torch.ones(3, 2, dtype=torch.long))


@pytest.mark.parametrize("device", DEVICES)
def test_state_lives_on_input_device(device: str) -> None:
    metric = EpisodeAccuracy().to(device)
    metric.update(torch.tensor([[0, 1], [1, 1]], device=device), torch.tensor([[0, 0], [1, 1]], device=device))
    for state in (metric.accuracy_sum, metric.accuracy_sq_sum, metric.num_episodes):
        assert state.device.type == device
    result = metric.compute()
    assert result["mean"].device.type == device
    assert result["mean"].item() == pytest.approx(75.0)
