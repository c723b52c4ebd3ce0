"""Multi-Similarity loss and miner against a per-pair Python reference."""

from __future__ import annotations

import math

import pytest
import torch

from fam_lightning.losses import MultiSimilarityLoss, MultiSimilarityMiner


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def ms_reference(embeddings: torch.Tensor, labels: torch.Tensor, alpha: float, beta: float, base: float, eps: float) -> float:
    """The paper's loss, one anchor and one pair at a time."""
    rows, ys = embeddings.tolist(), labels.tolist()
    total = 0.0
    for i in range(len(rows)):
        pos = [cosine(rows[i], rows[j]) for j in range(len(rows)) if j != i and ys[j] == ys[i]]
        neg = [cosine(rows[i], rows[k]) for k in range(len(rows)) if ys[k] != ys[i]]
        kept_pos = [s for s in pos if neg and s < max(neg) + eps]
        kept_neg = [s for s in neg if pos and s > min(pos) - eps]
        total += math.log(1 + sum(math.exp(-alpha * (s - base)) for s in kept_pos)) / alpha
        total += math.log(1 + sum(math.exp(beta * (s - base)) for s in kept_neg)) / beta
    return total / len(rows)


def clustered_batch(classes: int, per_class: int, dim: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen, dtype=torch.float64)
    labels = torch.arange(classes).repeat_interleave(per_class)
    embeddings = centres[labels] + spread * torch.randn(len(labels), dim, generator=gen, dtype=torch.float64)
    return embeddings, labels


def test_miner_keeps_the_hand_picked_pairs() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2])
    sims = torch.tensor(
        [
            [1.00, 0.50, 0.45, 0.20, 0.30],
            [0.50, 1.00, 0.70, 0.85, 0.20],
            [0.45, 0.70, 1.00, 0.90, 0.10],
            [0.20, 0.85, 0.90, 1.00, 0.00],
            [0.30, 0.20, 0.10, 0.00, 1.00],
        ]
    )
    kept_pos, kept_neg = MultiSimilarityMiner(epsilon=0.1).mine(sims, labels)
    # anchor 0: min pos 0.50 -> negs > 0.40: {2}; max neg 0.45 -> pos < 0.55: {1}
    # anchor 1: min pos 0.50 -> negs {2, 3}; max neg 0.85 -> pos {0}
    # anchor 2: min pos 0.90 -> no neg > 0.80; max neg 0.70 -> 0.90 is not < 0.80
    # anchor 3: min pos 0.90 -> negs > 0.80: {1}; max neg 0.85 -> pos < 0.95: {2}
    # anchor 4: no positive -> nothing
    expected_pos = {(0, 1), (1, 0), (3, 2)}
    expected_neg = {(0, 2), (1, 2), (1, 3), (3, 1)}
    assert {tuple(p) for p in kept_pos.nonzero().tolist()} == expected_pos
    assert {tuple(p) for p in kept_neg.nonzero().tolist()} == expected_neg


def test_miner_with_infinite_epsilon_keeps_all_pairs_of_anchors_with_both_kinds() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2])
    embeddings = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    kept_pos, kept_neg = MultiSimilarityMiner(epsilon=float("inf"))(embeddings, labels)
    same = labels[:, None] == labels[None, :]
    has_pos = (same & ~torch.eye(5, dtype=torch.bool)).any(1, keepdim=True)
    assert torch.equal(kept_pos, same & ~torch.eye(5, dtype=torch.bool))
    assert torch.equal(kept_neg, ~same & has_pos)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("params", [(2.0, 40.0, 0.5, 0.1), (1.0, 10.0, 0.3, 0.3)])
def test_loss_matches_per_pair_reference(seed: int, params: tuple[float, float, float, float]) -> None:
    alpha, beta, base, eps = params
    embeddings, labels = clustered_batch(classes=3, per_class=3, dim=5, spread=0.8, seed=seed)
    labels = labels[torch.randperm(9, generator=torch.Generator().manual_seed(seed))]  # not class-major
    loss = MultiSimilarityLoss(alpha, beta, base, MultiSimilarityMiner(eps))(embeddings, labels)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(ms_reference(embeddings, labels, alpha, beta, base, eps), rel=1e-10, abs=1e-12)


def test_loss_is_scale_invariant_and_zero_without_kept_pairs() -> None:
    embeddings, labels = clustered_batch(classes=3, per_class=4, dim=6, spread=0.5, seed=3)
    loss = MultiSimilarityLoss()
    assert loss(embeddings * 7.0, labels).item() == pytest.approx(loss(embeddings, labels).item(), rel=1e-12)
    # perfectly separated classes: every positive at S = 1, every negative at S = 0 -> nothing mined
    separated = torch.eye(3, dtype=torch.float64)[labels]
    assert loss(separated, labels).item() == 0.0


def test_gradients_flow_to_embeddings() -> None:
    embeddings, labels = clustered_batch(classes=4, per_class=4, dim=8, spread=1.0, seed=4)
    embeddings = embeddings.float().requires_grad_(True)
    loss = MultiSimilarityLoss()(embeddings, labels)
    loss.backward()
    assert torch.isfinite(embeddings.grad).all() and embeddings.grad.abs().sum() > 0
    # a step against the gradient lowers the loss
    with torch.no_grad():
        stepped = embeddings - 0.05 * embeddings.grad
    assert MultiSimilarityLoss()(stepped, labels) < loss


def test_default_miner_and_repr() -> None:
    loss = MultiSimilarityLoss()
    assert isinstance(loss.miner, MultiSimilarityMiner) and loss.miner.epsilon == 0.1
    assert (loss.alpha, loss.beta, loss.base) == (2.0, 40.0, 0.5)
    assert "epsilon=0.1" in repr(loss)


def test_batch_without_positive_or_negative_pair_raises() -> None:
    loss = MultiSimilarityLoss()
    with pytest.raises(ValueError, match="ClassBalancedBatchSampler"):
        loss(torch.randn(4, 3), torch.arange(4))  # all classes distinct
    with pytest.raises(ValueError, match="negative pair"):
        loss(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))  # one class


@pytest.mark.parametrize(
    ("embeddings", "labels", "match"),
    [
        (torch.randn(4), torch.zeros(4, dtype=torch.long), "embeddings must"),
        (torch.randint(0, 3, (4, 3)), torch.zeros(4, dtype=torch.long), "embeddings must"),
        (torch.randn(4, 3), torch.zeros(5, dtype=torch.long), r"one entry per embedding.*\(4,\)"),
        (torch.randn(4, 3), torch.zeros(4), "integer tensor"),
    ],
)
def test_bad_inputs_raise(embeddings: torch.Tensor, labels: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MultiSimilarityLoss()(embeddings, labels)


def test_bad_hyperparameters_raise() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        MultiSimilarityMiner(-0.1)
    with pytest.raises(ValueError, match="alpha"):
        MultiSimilarityLoss(alpha=0.0)
