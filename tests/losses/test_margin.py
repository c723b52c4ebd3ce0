"""Margin loss and distance-weighted sampling against per-pair Python references."""

from __future__ import annotations

import math

import pytest
import torch

from fam_lightning.losses import DistanceWeightedMiner, MarginLoss


def unit(row: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in row))
    return [x / norm for x in row]


def distance(a: list[float], b: list[float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def margin_reference(
    embeddings: torch.Tensor, labels: torch.Tensor, triplets: list[tuple[int, int, int]], beta: list[float], margin: float, nu: float
) -> float:
    """Wu et al.'s reference loss, one triplet at a time."""
    rows, ys = [unit(r) for r in embeddings.tolist()], labels.tolist()
    total, active = 0.0, 0
    for a, p, n in triplets:
        b = beta[ys[a]]
        pos = max(0.0, margin + distance(rows[a], rows[p]) - b)
        neg = max(0.0, margin - distance(rows[a], rows[n]) + b)
        total += pos + neg + nu * b
        active += (pos > 0) + (neg > 0)
    return total / max(active, 1)


def inverse_q(d: float, dim: int, cutoff: float = 0.5) -> float:
    d = max(d, cutoff)
    return d ** (2 - dim) * (1 - d * d / 4) ** ((3 - dim) / 2)


def clustered_batch(classes: int, per_class: int, dim: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen, dtype=torch.float64)
    labels = torch.arange(classes).repeat_interleave(per_class)
    embeddings = centres[labels] + spread * torch.randn(len(labels), dim, generator=gen, dtype=torch.float64)
    return embeddings, labels


def at_distance(d: float, direction: int, dim: int) -> list[float]:
    """Unit vector at Euclidean distance d from e_0, rotated towards e_direction."""
    cos = 1 - d * d / 2
    row = [0.0] * dim
    row[0], row[direction] = cos, math.sqrt(1 - cos * cos)
    return row


def test_miner_returns_one_triplet_per_positive_pair() -> None:
    embeddings, labels = clustered_batch(classes=3, per_class=4, dim=6, spread=0.7, seed=0)
    gen = torch.Generator().manual_seed(0)
    anchors, positives, negatives = DistanceWeightedMiner()(embeddings, labels, gen)
    pairs = {(a, p) for a, p in zip(anchors.tolist(), positives.tolist())}
    expected = {(a, p) for a in range(12) for p in range(12) if a != p and labels[a] == labels[p]}
    assert pairs == expected and len(anchors) == len(expected)
    assert (labels[negatives] != labels[anchors]).all()


def test_miner_is_deterministic_given_a_generator() -> None:
    embeddings, labels = clustered_batch(classes=4, per_class=4, dim=8, spread=1.0, seed=1)
    miner = DistanceWeightedMiner()
    first = miner(embeddings, labels, torch.Generator().manual_seed(5))
    again = miner(embeddings, labels, torch.Generator().manual_seed(5))
    other = miner(embeddings, labels, torch.Generator().manual_seed(6))
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not torch.equal(first[2], other[2])


def test_sampled_negatives_follow_the_inverse_density_and_respect_the_cutoffs() -> None:
    dim = 8
    # class 0: 30 copies of e_0; four single-item classes at known distances from it
    distances = [0.3, 0.8, 1.2, 1.6]  # 0.3 is clipped to 0.5; 1.6 >= 1.4 is never drawn
    rows = [at_distance(0.0, 1, dim)] * 30 + [at_distance(d, i + 1, dim) for i, d in enumerate(distances)]
    embeddings = torch.tensor(rows, dtype=torch.float64)
    labels = torch.tensor([0] * 30 + [1, 2, 3, 4])
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    for _ in range(10):
        anchors, _, negatives = DistanceWeightedMiner()(embeddings, labels, gen)
        assert (anchors < 30).all()  # single-item classes have no positive pair
        counts += torch.bincount(negatives - 30, minlength=4)
    weights = [inverse_q(d, dim) if d < 1.4 else 0.0 for d in distances]
    expected = torch.tensor([w / sum(weights) for w in weights])
    empirical = counts / counts.sum()  # 10 x 30 x 29 = 8700 draws
    assert counts[3] == 0
    assert torch.allclose(empirical, expected.float(), atol=0.02), (empirical, expected)
    probs = DistanceWeightedMiner().sampling_weights(
        torch.cdist(embeddings, embeddings), labels, dim
    )
    assert torch.allclose(probs[0, 30:], expected.double(), atol=1e-9)


def test_anchor_with_only_far_negatives_draws_uniformly_and_anchor_without_negatives_none() -> None:
    dim = 4
    rows = [at_distance(0.0, 1, dim), at_distance(0.0, 1, dim), at_distance(1.9, 1, dim), at_distance(1.95, 2, dim)]
    embeddings = torch.tensor(rows, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 2])
    probs = DistanceWeightedMiner().sampling_weights(torch.cdist(embeddings, embeddings), labels, dim)
    assert torch.allclose(probs[0], torch.tensor([0.0, 0.0, 0.5, 0.5], dtype=torch.float64))
    # only one class: no negatives anywhere -> zero rows and no triplets
    same = torch.zeros(4, dtype=torch.long)
    assert DistanceWeightedMiner().sampling_weights(torch.cdist(embeddings, embeddings), same, dim).sum() == 0
    anchors, positives, negatives = DistanceWeightedMiner()(embeddings, same)
    assert anchors.numel() == positives.numel() == negatives.numel() == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("nu", [0.0, 0.01])
def test_loss_matches_per_triplet_reference(seed: int, nu: float) -> None:
    embeddings, labels = clustered_batch(classes=3, per_class=3, dim=5, spread=0.6, seed=seed)
    loss_fn = MarginLoss(num_classes=4, nu=nu).double()
    with torch.no_grad():
        loss_fn.beta.copy_(torch.tensor([1.0, 1.1, 1.2, 1.3]))
    anchors, positives, negatives = loss_fn.miner(embeddings, labels, torch.Generator().manual_seed(seed))
    triplets = list(zip(anchors.tolist(), positives.tolist(), negatives.tolist()))
    loss = loss_fn(embeddings, labels, generator=torch.Generator().manual_seed(seed))
    expected = margin_reference(embeddings, labels, triplets, loss_fn.beta.tolist(), 0.2, nu)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_gradients_reach_embeddings_and_beta() -> None:
    embeddings, labels = clustered_batch(classes=4, per_class=4, dim=8, spread=0.3, seed=3)
    embeddings = embeddings.float().requires_grad_(True)
    loss_fn = MarginLoss(num_classes=4)
    assert loss_fn.beta.shape == (4,) and torch.all(loss_fn.beta == 1.2)
    loss = loss_fn(embeddings, labels, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.item() > 0
    assert torch.isfinite(embeddings.grad).all() and embeddings.grad.abs().sum() > 0
    assert loss_fn.beta.grad is not None and loss_fn.beta.grad.abs().sum() > 0
    assert "beta" in dict(loss_fn.named_parameters())


def test_coinciding_embeddings_give_finite_gradients() -> None:
    embeddings = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    loss = MarginLoss(num_classes=2, beta_init=0.1)(embeddings, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert torch.isfinite(embeddings.grad).all()


def test_batch_without_pairs_and_bad_inputs_raise() -> None:
    loss_fn = MarginLoss(num_classes=4)
    with pytest.raises(ValueError, match="ClassBalancedBatchSampler"):
        loss_fn(torch.randn(4, 3), torch.arange(4))
    with pytest.raises(ValueError, match="negative pair"):
        loss_fn(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        loss_fn(torch.randn(4, 3), torch.tensor([0, 0, 4, 4]))
    with pytest.raises(ValueError, match="one entry per embedding"):
        loss_fn(torch.randn(4, 3), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        loss_fn(torch.randn(4, 3, 1), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="cutoff"):
        DistanceWeightedMiner(cutoff=1.5, nonzero_loss_cutoff=1.4)
    with pytest.raises(ValueError, match="num_classes"):
        MarginLoss(num_classes=0)
