"""KNNIndex: torch vs faiss agreement, brute-force references, chunking, the weighted vote, errors."""

from __future__ import annotations

import math
import os

import pytest
import torch

from fam_lightning import knn as knn_module
from fam_lightning import knn_torch
from fam_lightning.knn import METRICS, KNNIndex, faiss_available, topk_accuracy

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")


def make_data(n: int = 300, q: int = 23, d: int = 16, classes: int = 7, seed: int = 0):
    """Continuous random data: no two similarities of a query tie."""
    g = torch.Generator().manual_seed(seed)
    bank = torch.randn(n, d, generator=g)
    queries = torch.randn(q, d, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return bank, queries, labels


def brute_force(queries: torch.Tensor, bank: torch.Tensor, metric: str, k: int):
    """Full similarity matrix in float64, fully sorted."""
    q, x = queries.double(), bank.double()
    if metric == "cosine":
        sims = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(x, dim=1).t()
    elif metric == "dot":
        sims = q @ x.t()
    else:
        sims = -((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    order = sims.argsort(dim=1, descending=True, stable=True)[:, :k]
    return sims.gather(1, order), order


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric", METRICS)
def test_torch_backend_matches_full_sort(metric: str, device: str) -> None:
    bank, queries, _ = make_data()
    index = KNNIndex(backend="torch", metric=metric)
    index.add(bank.to(device))
    sims, idx = index.search(queries.to(device), k=25)
    ref_sims, ref_idx = brute_force(queries, bank, metric, 25)
    assert sims.device.type == device and idx.device.type == device
    assert sims.shape == idx.shape == (23, 25) and idx.dtype == torch.long
    assert torch.equal(idx.cpu(), ref_idx)
    torch.testing.assert_close(sims.cpu().double(), ref_sims, atol=1e-5, rtol=1e-5)
    assert (sims[:, :-1] >= sims[:, 1:]).all()  # descending


@needs_faiss
@pytest.mark.parametrize("metric", METRICS)
def test_faiss_and_torch_backends_agree(metric: str) -> None:
    bank, queries, labels = make_data(n=400, q=31)
    results = {}
    for backend in ("torch", "faiss"):
        index = KNNIndex(backend=backend, metric=metric)
        index.add(bank, labels)
        assert index.backend == backend
        results[backend] = (*index.search(queries, k=40), *index.classify(queries, k=40, temperature=0.1))
    t_sims, t_idx, t_scores, t_nbr, t_w = results["torch"]
    f_sims, f_idx, f_scores, f_nbr, f_w = results["faiss"]
    assert torch.equal(t_idx, f_idx) and torch.equal(t_nbr, f_nbr)
    torch.testing.assert_close(t_sims, f_sims, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(t_w, f_w, atol=1e-4, rtol=1e-4)
    assert torch.equal(t_scores.argmax(1), f_scores.argmax(1))
    ref_sims, ref_idx = brute_force(queries, bank, metric, 40)
    assert torch.equal(f_idx, ref_idx)


@needs_faiss
def test_auto_picks_torch_on_cpu_even_with_faiss() -> None:
    index = KNNIndex()
    index.add(torch.randn(10, 4))
    assert index.backend == "torch"


@pytest.mark.parametrize("gpu_faiss", [True, False])
def test_auto_picks_faiss_only_for_a_cuda_bank_with_gpu_faiss(monkeypatch: pytest.MonkeyPatch, gpu_faiss: bool) -> None:
    # No GPU needed: only the choice is checked, not a search.
    monkeypatch.setattr(knn_module, "faiss_gpu_available", lambda: gpu_faiss)
    assert KNNIndex._auto_backend(torch.device("cuda", 0)) == ("faiss" if gpu_faiss else "torch")
    assert KNNIndex._auto_backend(torch.device("cpu")) == "torch"


def test_auto_picks_torch_without_faiss(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(knn_module, "faiss_available", lambda: False)
    index = KNNIndex()
    index.add(torch.randn(10, 4))
    assert index.backend == "torch"
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        KNNIndex(backend="faiss")


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("chunk_size", [1, 7, 100])
def test_chunking_matches_one_chunk(metric: str, chunk_size: int) -> None:
    bank, queries, labels = make_data(n=120, q=23)  # 7 does not divide 23; 100 leaves a partial block
    one = KNNIndex(backend="torch", metric=metric, chunk_size=4096)
    chunked = KNNIndex(backend="torch", metric=metric, chunk_size=chunk_size)
    for index in (one, chunked):
        index.add(bank, labels)
    s1, i1 = one.search(queries, 30)
    s2, i2 = chunked.search(queries, 30)
    assert torch.equal(i1, i2)
    torch.testing.assert_close(s1, s2, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", ["torch"] + (["faiss"] if faiss_available() else []))
def test_appending_equals_one_add(backend: str) -> None:
    bank, queries, labels = make_data()
    whole, parts = KNNIndex(backend=backend), KNNIndex(backend=backend)
    whole.add(bank, labels)
    parts.add(bank[:100], labels[:100])
    parts.search(queries, 5)  # consolidate in between: later adds append to the built index
    parts.add(bank[100:250], labels[100:250])
    parts.add(bank[250:], labels[250:])
    assert len(parts) == len(whole) == 300
    assert torch.equal(whole.search(queries, 20)[1], parts.search(queries, 20)[1])
    assert torch.equal(whole.labels, parts.labels)
    parts.reset()
    assert len(parts) == 0
    parts.add(bank[:50])
    assert parts.search(queries, 3)[1].max() < 50


def vote_reference(queries, bank, labels, k, temperature, num_classes):
    """NPID's vote, one query and one neighbour at a time, in float64."""
    scores = []
    for q in queries.double():
        sims = [
            (float(q @ x / (q.norm() * x.norm())), j) for j, x in enumerate(bank.double())
        ]
        sims.sort(key=lambda t: -t[0])
        row = [0.0] * num_classes
        for s, j in sims[:k]:
            row[int(labels[j])] += math.exp(s / temperature)
        scores.append(row)
    return torch.tensor(scores, dtype=torch.float64)


@pytest.mark.parametrize("backend", ["torch"] + (["faiss"] if faiss_available() else []))
@pytest.mark.parametrize("device", DEVICES)
def test_weighted_vote_matches_loop_reference(backend: str, device: str) -> None:
    bank, queries, labels = make_data(n=40, q=6, d=5, classes=4)
    index = KNNIndex(backend=backend, metric="cosine")
    index.add(bank.to(device), labels.to(device))
    scores, nbr, weights = index.classify(queries.to(device), k=9, temperature=0.07, num_classes=5)
    ref = vote_reference(queries, bank, labels, 9, 0.07, 5)
    assert scores.shape == (6, 5) and nbr.shape == weights.shape == (6, 9)
    assert scores.device.type == device
    torch.testing.assert_close(scores.cpu().double(), ref, rtol=1e-4, atol=1e-6)
    sims, _ = index.search(queries.to(device), 9)
    torch.testing.assert_close(weights, torch.exp(sims / 0.07))  # exactly exp(s / T) for cosine
    assert torch.equal(scores.argmax(1).cpu(), ref.argmax(1))


@pytest.mark.parametrize("metric", ["dot", "euclidean"])
def test_unbounded_metrics_vote_without_overflow(metric: str) -> None:
    bank, queries, labels = make_data(n=60, q=5, d=8)
    bank, queries = bank * 30, queries * 30  # exp(s / T) alone would overflow / underflow
    index = KNNIndex(backend="torch", metric=metric)
    index.add(bank, labels)
    scores, nbr, weights = index.classify(queries, k=10, temperature=0.07)
    assert torch.isfinite(scores).all() and (weights[:, 0] == 1).all()
    sims = index.search(queries, 10)[0].double()
    exact = torch.exp((sims - sims[:, :1]) / 0.07)  # exp(s / T) up to a per-query factor
    torch.testing.assert_close(weights.double(), exact, rtol=1e-4, atol=1e-12)
    ref = torch.zeros(5, 7, dtype=torch.float64).scatter_add_(1, labels[nbr], exact)
    assert torch.equal(scores.argmax(1), ref.argmax(1))


def test_negative_labels_cast_no_vote() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    index = KNNIndex(backend="torch")
    index.add(bank, torch.tensor([-1, 1, 0]))
    scores, nbr, weights = index.classify(torch.tensor([[1.0, 0.0]]), k=2, temperature=1.0)
    assert nbr.tolist() == [[0, 1]]
    assert weights[0, 0] == 0 and scores.shape == (1, 2)
    assert scores[0, 0] == 0 and scores[0, 1] == pytest.approx(math.exp(0.9 / math.hypot(0.9, 0.1)))


def test_topk_accuracy_known_answer() -> None:
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    targets = torch.tensor([1, 2, 0])  # ranks of the targets: 1st, 3rd, 3rd
    acc = topk_accuracy(scores, targets, ks=(1, 2, 3))
    assert acc[1].item() == pytest.approx(1 / 3)
    assert acc[2].item() == pytest.approx(1 / 3)
    assert acc[3].item() == 1.0
    with pytest.raises(ValueError, match="k=5"):
        topk_accuracy(scores, targets, ks=(1, 5))


def test_errors() -> None:
    bank, queries, labels = make_data(n=30, d=8)
    with pytest.raises(ValueError, match="backend must be one of .*'torch'"):
        KNNIndex(backend="annoy")
    with pytest.raises(ValueError, match="metric must be one of .*'euclidean'"):
        KNNIndex(metric="manhattan")
    index = KNNIndex(backend="torch")
    with pytest.raises(ValueError, match="empty"):
        index.search(queries[:, :8], 1)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        index.add(bank[0])
    index.add(bank)
    with pytest.raises(ValueError, match="k=31 is larger than the number of indexed entries \\(30\\)"):
        index.search(queries[:, :8], 31)
    with pytest.raises(ValueError, match="D=8"):
        index.search(queries[:, :5], 3)
    with pytest.raises(ValueError, match="D=5 but the index holds D=8"):
        index.add(torch.randn(4, 5))
    with pytest.raises(ValueError, match="classify needs labels"):
        index.classify(queries[:, :8], k=3)
    with pytest.raises(ValueError, match="labels must be passed to every add"):
        index.add(bank, labels[:30])
    labelled = KNNIndex(backend="torch")
    labelled.add(bank, labels[:30])
    with pytest.raises(ValueError, match="num_classes=3"):
        labelled.classify(queries[:, :8], k=3, num_classes=3)
    with pytest.raises(ValueError, match="temperature"):
        labelled.classify(queries[:, :8], k=3, temperature=0.0)


def test_blocks_are_bounded_by_max_chunk_bytes_and_results_do_not_change() -> None:
    bank, queries, labels = make_data(n=1000, q=37, d=8)
    bounded = KNNIndex(backend="torch", max_chunk_bytes=10 * 1000 * 4)  # 10 queries' float32 similarities
    unbounded = KNNIndex(backend="torch")
    for index in (bounded, unbounded):
        index.add(bank, labels)
    assert bounded.block_queries() == 10 and bounded.block_queries(3) == 3
    assert unbounded.block_queries() == 4096  # chunk_size caps it for small banks
    calls = []
    original = torch.Tensor.topk
    try:  # count the blocks the search runs
        torch.Tensor.topk = lambda self, *a, **k: (calls.append(self.shape[0]), original(self, *a, **k))[1]
        s1, i1 = bounded.search(queries, 20)
    finally:
        torch.Tensor.topk = original
    assert calls == [10, 10, 10, 7]
    s2, i2 = unbounded.search(queries, 20)
    assert torch.equal(i1, i2) and torch.equal(s1, s2)


def test_a_block_that_cannot_fit_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    bank, queries, labels = make_data(n=1000, q=4, d=8)
    index = KNNIndex(backend="torch", max_chunk_bytes=1000)
    index.add(bank, labels)
    with pytest.raises(MemoryError, match=r"bank of 1000 x 8: one query's similarities take .* max_chunk_bytes=1000"):
        index.search(queries, 5)
    index = KNNIndex(backend="torch", chunk_size=64)
    index.add(bank, labels)
    monkeypatch.setattr(knn_torch, "_CHECKED_BLOCK_BYTES", 0)
    monkeypatch.setattr(knn_torch, "_available_bytes", lambda device: 10_000)  # 10 kB left on the device
    with pytest.raises(MemoryError, match=r"bank of 1000 x 8 on cpu: a block of 4 queries needs .* lower "
                                          r"KNNIndex\(chunk_size=...\) \(now 64\) or max_chunk_bytes"):
        index.search(queries, 5)
    with pytest.raises(ValueError, match="max_chunk_bytes must be a positive int"):
        KNNIndex(max_chunk_bytes=0)


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="reads /proc/meminfo (Linux)")
def test_available_memory_is_read_on_cpu() -> None:
    available = knn_torch._available_bytes(torch.device("cpu"))
    assert isinstance(available, int) and 0 < available <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _fresh_blocks(rows: torch.Tensor, queries: torch.Tensor, k: int, block: int, sq_norms=None):
    """The search as it was before the reused buffer: a new (c, N) matrix per block."""
    values, indices = [], []
    for part in queries.split(block):
        scores = part @ rows.t()
        if sq_norms is None:
            v, i = scores.topk(k, dim=1)
        else:
            v, i = scores.mul_(2).sub_(sq_norms).topk(k, dim=1)
            v = (v - part.square().sum(1, keepdim=True)).clamp_max_(0)
        values.append(v)
        indices.append(i)
    return torch.cat(values), torch.cat(indices)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("euclidean", [False, True])
def test_the_reused_block_buffer_gives_bit_identical_results(device: str, euclidean: bool) -> None:
    bank, queries, _ = make_data(n=5000, q=203, d=32)
    bank, queries = bank.to(device), queries.to(device)
    sq_norms = bank.square().sum(1) if euclidean else None
    for block in (1, 16, 64, 203, 4096):  # one block, several, a partial last block
        got = knn_torch.search_blocks(bank, queries, 50, block, sq_norms)
        want = _fresh_blocks(bank, queries, 50, block, sq_norms)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_one_block_buffer_per_search(monkeypatch: pytest.MonkeyPatch) -> None:
    bank, queries, _ = make_data(n=1000, q=37, d=8)
    index = KNNIndex(backend="torch", max_chunk_bytes=10 * 1000 * 4)
    index.add(bank)
    allocated = []
    original = torch.Tensor.new_empty
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *shape, **kw: (allocated.append(shape),
                                                                                  original(self, *shape, **kw))[1])
    sims, idx = index.search(queries, 20)
    assert allocated == [(10, 1000)]  # four blocks, one (10, N) buffer
    ref_sims, ref_idx = brute_force(queries, bank, "cosine", 20)
    assert torch.equal(idx, ref_idx)
