"""kNN search and NPID's weighted kNN vote: KNNIndex against faiss and a plain matmul.

All on the same L2-normalised random data, in one run. Rows, per device:

- ``(q @ bank.T).topk(k)``: one-shot matmul, the floor for an exact torch search,
- ``faiss IndexFlatIP.search``: faiss used directly (faiss-gpu on CUDA if it imports),
- ``KNNIndex(...).search`` / ``.classify`` for the torch and faiss backends
  (classify = search + the exp(s / T) vote), the index built before timing.

Ratios are ours / faiss and ours / plain matmul (search rows compare like with
like; classify rows include the vote). The last column is the fraction of the
matmul's neighbours each method returns: all of them but for float32 near-ties
(rounding-level gaps between the k-th and (k+1)-th similarity). CUDA uses the ImageNet-sized bank of the
issue (1.28M x 128) unless ``--gpu-bank`` says otherwise.

    python benchmarks/knn.py [--bank 100000 --dim 128 --queries 500 --k 200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import devices, time_round_robin  # noqa: E402
from fam_lightning.knn import KNNIndex, _faiss, faiss_gpu_available  # noqa: E402


def faiss_direct(bank: torch.Tensor) -> Callable[[torch.Tensor, int], object] | None:
    """``search(queries, k)`` of a raw faiss IndexFlatIP over ``bank``, or None without faiss."""
    faiss = _faiss()
    if faiss is None:
        return None
    if bank.device.type == "cuda":
        if not faiss_gpu_available():
            return None
        import faiss.contrib.torch_utils  # noqa: F401

        resources = faiss.StandardGpuResources()
        index = faiss.GpuIndexFlatIP(resources, bank.shape[1])
        index.add(bank)

        def search_gpu(q: torch.Tensor, k: int, _resources: object = resources) -> object:
            return index.search(q, k)  # the default argument keeps the resources alive

        return search_gpu
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(bank.numpy())
    return lambda q, k: index.search(q.numpy(), k)


def overlap(found: torch.Tensor, reference: torch.Tensor) -> float:
    """Fraction of the reference's (query, neighbour) pairs that ``found`` also returns."""
    found = found.to(reference.device)
    return (found.unsqueeze(2) == reference.unsqueeze(1)).any(2).float().mean().item()


def run(device: torch.device, n: int, dim: int, num_queries: int, k: int, repeats: int) -> None:
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(n, dim, generator=g), dim=1).to(device)
    labels = torch.randint(0, 1000, (n,), generator=g).to(device)
    queries = F.normalize(torch.randn(num_queries, dim, generator=g), dim=1).to(device)

    def plain() -> tuple[torch.Tensor, torch.Tensor]:
        return (queries @ bank.t()).topk(k, dim=1)

    reference = plain().indices
    methods: dict[str, Callable[[], object]] = {"plain (q @ bank.T).topk(k)": plain}
    agreement: dict[str, float | None] = {"plain (q @ bank.T).topk(k)": 1.0}
    direct = faiss_direct(bank)
    if direct is not None:
        methods["faiss IndexFlatIP.search"] = lambda: direct(queries, k)
        agreement["faiss IndexFlatIP.search"] = overlap(torch.as_tensor(direct(queries, k)[1]), reference)
    for backend in ["torch"] + (["faiss"] if direct is not None else []):
        index = KNNIndex(backend=backend, metric="cosine")
        index.add(bank, labels)
        name = f"KNNIndex({backend})"
        methods[f"{name}.search"] = lambda index=index: index.search(queries, k)
        methods[f"{name}.classify"] = lambda index=index: index.classify(queries, k)
        agreement[f"{name}.search"] = overlap(index.search(queries, k)[1], reference)  # also builds the index
        agreement[f"{name}.classify"] = None

    times = time_round_robin(methods, device, repeats)

    t_plain = times["plain (q @ bank.T).topk(k)"]
    t_faiss = times.get("faiss IndexFlatIP.search")
    where = f"{torch.get_num_threads()} torch threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"\n[{device.type}: {where}] bank {n} x {dim}, {num_queries} queries, k={k}, "
          f"cosine, median of {repeats} rounds")
    auto = KNNIndex()
    auto.add(bank[:1])
    print(f"  KNNIndex(backend='auto') picks {auto.backend!r} here")
    print(f"  {'method':30s} {'ms':>9s} {'ours/faiss':>10s} {'ours/matmul':>11s}  kNN overlap with matmul")
    for name, t in times.items():
        ours = name.startswith("KNNIndex")
        vs_faiss = f"{t / t_faiss:10.2f}" if ours and t_faiss else f"{'':10s}"
        vs_plain = f"{t / t_plain:11.2f}" if ours else f"{'':11s}"
        same = agreement[name]
        print(f"  {name:30s} {t * 1e3:9.1f} {vs_faiss} {vs_plain}  {'' if same is None else f'{same:.4%}'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", type=int, default=100_000, help="CPU bank size")
    parser.add_argument("--gpu-bank", type=int, default=1_280_000, help="CUDA bank size (ImageNet)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for device in devices():
        n = args.gpu_bank if device.type == "cuda" else args.bank
        run(device, n, args.dim, args.queries, args.k, args.repeats)


if __name__ == "__main__":
    main()
