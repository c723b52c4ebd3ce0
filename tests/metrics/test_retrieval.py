"""Recall@K and MAP@R against a full-sort Python reference."""

from __future__ import annotations

import math

import pytest
import torch

from fam_lightning.metrics.retrieval import RecallAtK, map_at_r, recall_at_k

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def score(q: list[float], x: list[float], metric: str) -> float:
    dot = sum(a * b for a, b in zip(q, x))
    if metric == "dot":
        return dot
    if metric == "cosine":
        return dot / (math.sqrt(sum(a * a for a in q)) * math.sqrt(sum(b * b for b in x)))
    return -sum((a - b) ** 2 for a, b in zip(q, x))


def reference(embeddings: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...], metric: str) -> tuple[dict[int, float], float]:
    """Every item queries the others; ranking by a full sort; lone queries skipped."""
    rows, ys = embeddings.tolist(), labels.tolist()
    hits = {k: 0 for k in ks}
    ap_total, queries = 0.0, 0
    for q in range(len(rows)):
        others = sorted((j for j in range(len(rows)) if j != q), key=lambda j: -score(rows[q], rows[j], metric))
        relevant = [ys[j] == ys[q] for j in others]
        r = sum(relevant)
        if r == 0:
            continue
        queries += 1
        for k in ks:
            hits[k] += any(relevant[:k])
        found, ap = 0, 0.0
        for i, rel in enumerate(relevant[:r], start=1):
            found += rel
            ap += rel * found / i
        ap_total += ap / r
    return {k: hits[k] / max(queries, 1) for k in ks}, ap_total / max(queries, 1)


def clustered(n: int, classes: int, dim: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=gen)
    centres = torch.randn(classes, dim, generator=gen, dtype=torch.float64)
    return centres[labels] + spread * torch.randn(n, dim, generator=gen, dtype=torch.float64), labels


def test_known_answer_on_a_line() -> None:
    # points on a line; euclidean neighbours are obvious
    embeddings = torch.tensor([[0.0], [1.0], [3.0], [3.5], [10.0], [11.5]], dtype=torch.float64)
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    recall = recall_at_k(embeddings, labels, ks=(1, 2, 3), metric="euclidean")
    # nearest others (x = other class): 0 -> 1x 2 ; 1 -> 0x 2x 3 ; 2 -> 3x 1x 0 ; 3 -> 2x 1 ; 4 -> 5x 3 ; 5 -> 4x 3x 2
    # first hit at rank 2, 3, 3, 2, 2, 3
    assert [recall[k].item() for k in (1, 2, 3)] == pytest.approx([0.0, 3 / 6, 1.0])
    # R = 2 for every query, AP@R looks at the first 2: a hit at rank 2 gives (1/2) / 2
    # queries 0, 3, 4 -> 0.25 each, queries 1, 2, 5 -> 0
    assert map_at_r(embeddings, labels, metric="euclidean").item() == pytest.approx(0.75 / 6)


def test_self_is_excluded() -> None:
    # every item is its own nearest neighbour, but its class mate is far away
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.1], [0.1, -1.0]])
    labels = torch.tensor([0, 1, 0, 1])
    assert recall_at_k(embeddings, labels, ks=(1,))[1].item() == 0.0
    # a duplicate of the query is another item, and counts
    duplicated = torch.cat([embeddings, embeddings])
    assert recall_at_k(duplicated, torch.cat([labels, labels]), ks=(1,))[1].item() == 1.0


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "dot"])
@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_matches_full_sort_reference(metric: str, chunk_size: int) -> None:
    embeddings, labels = clustered(n=60, classes=7, dim=6, spread=1.2, seed=0)
    labels[0] = 99  # a lone query, skipped
    ks = (1, 2, 4, 8)
    recall = recall_at_k(embeddings, labels, ks, metric=metric, chunk_size=chunk_size)
    mapr = map_at_r(embeddings, labels, metric=metric, chunk_size=chunk_size)
    ref_recall, ref_map = reference(embeddings, labels, ks, metric)
    assert list(recall) == list(ks)
    for k in ks:
        assert recall[k].item() == pytest.approx(ref_recall[k], abs=1e-12)
    assert mapr.item() == pytest.approx(ref_map, abs=1e-12)
    assert 0 < ref_map < 1 and ref_recall[1] < ref_recall[8]


def test_only_lone_queries_give_zero() -> None:
    embeddings = torch.randn(4, 3)
    labels = torch.arange(4)
    assert all(v.item() == 0.0 for v in recall_at_k(embeddings, labels, ks=(1, 3)).values())
    assert map_at_r(embeddings, labels).item() == 0.0


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
@pytest.mark.parametrize("device", DEVICES)
def test_metric_class_matches_functional_over_several_updates(device: str) -> None:
    embeddings, labels = clustered(n=90, classes=9, dim=8, spread=1.0, seed=1)
    embeddings, labels = embeddings.float().to(device), labels.to(device)
    metric = RecallAtK(ks=(1, 2, 4, 8), chunk_size=16).to(device)
    for start in range(0, 90, 25):
        metric.update(embeddings[start : start + 25], labels[start : start + 25])
    result = metric.compute()
    assert list(result) == ["recall@1", "recall@2", "recall@4", "recall@8", "map@r"]
    recall = recall_at_k(embeddings, labels)
    for k in (1, 2, 4, 8):
        assert result[f"recall@{k}"].item() == pytest.approx(100 * recall[k].item(), abs=1e-4)
    assert result["map@r"].item() == pytest.approx(100 * map_at_r(embeddings, labels).item(), abs=1e-4)
    metric.reset()
    with pytest.raises(ValueError, match="update"):
        metric.compute()


def test_update_detaches() -> None:
    embeddings = torch.randn(6, 3, requires_grad=True)
    metric = RecallAtK(ks=(1,))
    metric.update(embeddings * 2, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert not metric.embeddings[0].requires_grad
    assert metric.compute()["recall@1"].requires_grad is False


def test_bad_inputs_raise() -> None:
    embeddings, labels = torch.randn(5, 3), torch.tensor([0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match=r"ks must .* \[1, 4\]"):
        recall_at_k(embeddings, labels, ks=(1, 5))
    with pytest.raises(ValueError, match="ks"):
        recall_at_k(embeddings, labels, ks=())
    with pytest.raises(ValueError, match="metric must be one of"):
        recall_at_k(embeddings, labels, metric="manhattan")
    with pytest.raises(ValueError, match=r"labels must .*\(5,\)"):
        map_at_r(embeddings, labels[:4])
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        map_at_r(embeddings[0], labels)
    with pytest.raises(ValueError, match="chunk_size"):
        recall_at_k(embeddings, labels, chunk_size=0)
    with pytest.raises(ValueError, match="at least 2"):
        recall_at_k(embeddings[:1], labels[:1])
    with pytest.raises(ValueError, match="metric"):
        RecallAtK(metric="l1")
    with pytest.raises(ValueError, match=r"\(B,\)"):
        RecallAtK().update(embeddings, labels[:3])
