"""``scaling.py --parts knn``: the kNN search over growing banks, each size in a fresh process (peak RSS),
beside a bare matmul + topk reference measured in the same process (see :mod:`benchmarks.scaling`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUERIES = 10_000
DIM = 128


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    """Restart VmHWM at the current resident size (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


KNN_CHILD = r"""
import json, sys, time
import torch
sys.path.insert(0, {root!r})
from fam_lightning.knn import KNNIndex
from benchmarks.scaling_knn import peak_rss_mib, reset_peak_rss
torch.set_num_threads({threads})
size, queries, backend, max_chunk_bytes = {size}, {queries}, {backend!r}, {max_chunk_bytes}
g = torch.Generator().manual_seed(0)
bank = torch.nn.functional.normalize(torch.randn(size, {dim}, generator=g), dim=1)
labels = torch.randint(0, 1000, (size,), generator=g)
q = torch.randn(queries, {dim}, generator=g)
index = KNNIndex(backend=backend, metric="cosine", max_chunk_bytes=max_chunk_bytes)
index.add(bank, labels)
del bank
index.classify(q[:8], k=200)  # warm-up, builds the index
setup_peak = peak_rss_mib()
reset_peak_rss()  # from here VmHWM is the search's own peak
start = time.perf_counter()
scores, _, _ = index.classify(q, k=200)
seconds = time.perf_counter() - start
peak = peak_rss_mib()
reference = None
if {reference_queries}:  # bare matmul + topk, fixed 64-query blocks, one reused buffer: the machine's own growth
    rows = index.embeddings
    qr = torch.nn.functional.normalize(q[:{reference_queries}], dim=1)
    buffer = rows.new_empty(64, rows.shape[0])
    start = time.perf_counter()
    for part in qr.split(64):
        torch.matmul(part, rows.t(), out=buffer[: part.shape[0]]).topk(200, dim=1)
    reference = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_mib": peak, "setup_peak_mib": setup_peak, "reference": reference,
                  "block": index.block_queries() if backend == "torch" else None}}))
"""


def _knn_child(size: int, queries: int, backend: str, threads: int, max_chunk_bytes: int = 2**30,
               reference_queries: int = 0) -> dict:
    code = KNN_CHILD.format(root=str(ROOT), threads=threads, size=size, queries=queries, backend=backend,
                            max_chunk_bytes=max_chunk_bytes, dim=DIM, reference_queries=reference_queries)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def part_knn(sizes: tuple[int, ...], threads: int, faiss_queries: int) -> list[tuple[str, list[int], list[float], str]]:
    from fam_lightning.knn import faiss_available

    torch_s, faiss_s, reference_s, main_peak = [], [], [], {}
    reference_queries = max(64, faiss_queries)
    for n in sizes:
        r = _knn_child(n, QUERIES, "torch", threads, reference_queries=reference_queries)
        if "error" in r:
            raise RuntimeError(f"kNN over {n:,d} x {DIM} failed: {r['error']}")
        torch_s.append(r["seconds"])
        reference_s.append(r["reference"] * QUERIES / reference_queries)
        main_peak = r
        bank_mib = n * DIM * 4 / 2**20
        print(f"  kNN torch  {QUERIES:,d} queries x {n:>9,d} x {DIM}: {r['seconds']:7.2f} s, peak RSS during the search "
              f"{r['peak_mib']:7.0f} MiB, setup {r['setup_peak_mib']:.0f} MiB (bank {bank_mib:.0f} MiB; "
              f"{r['block']} queries per block); bare matmul + topk reference {r['reference']:.2f} s per "
              f"{reference_queries:,d} (x{QUERIES / reference_queries:g} = {reference_s[-1]:.1f} s)", flush=True)
        if faiss_available():
            r = _knn_child(n, faiss_queries, "faiss", threads)
            faiss_s.append(r["seconds"] * QUERIES / faiss_queries)
            print(f"  kNN faiss  {faiss_queries:,d} queries x {n:>9,d} x {DIM}: {r['seconds']:7.2f} s "
                  f"(x{QUERIES // faiss_queries} = {faiss_s[-1]:.1f} s per {QUERIES:,d}), peak RSS {r['peak_mib']:.0f} MiB",
                  flush=True)
    largest = sizes[-1]
    print(f"  peak resident memory, torch backend, bank {largest:,d} x {DIM} "
          f"({largest * DIM * 4 / 2**20:.0f} MiB), per similarity block bound:")
    for max_chunk_bytes in (2**28, 2**30, 2**32):
        block = max(1, max_chunk_bytes // (largest * 4))
        if max_chunk_bytes == 2**30:  # the default: the main run above
            r, queries = main_peak, QUERIES
        else:
            queries = min(block + 1, QUERIES)  # a second block that reuses the first one's buffer
            r = _knn_child(largest, queries, "torch", threads, max_chunk_bytes)
        if "error" in r:
            print(f"    max_chunk_bytes {max_chunk_bytes / 2**30:5.2f} GiB: {r['error']}")
            continue
        print(f"    max_chunk_bytes {max_chunk_bytes / 2**30:5.2f} GiB ({block:5d} queries per block, {queries:,d} "
              f"queries): peak RSS during the search {r['peak_mib']:7.0f} MiB (setup {r['setup_peak_mib']:.0f} MiB), "
              f"{r['seconds'] / queries * QUERIES:6.1f} s per {QUERIES:,d} queries", flush=True)
    r = _knn_child(largest, 8, "torch", threads, max_chunk_bytes=2**20)
    print(f"    max_chunk_bytes 1 MiB: {r.get('error', r)}")
    rows = [("kNN torch, 10k queries, K=200", list(sizes), torch_s, "s"),
            (f"  bare matmul + topk reference, 64-query blocks (per 10k, from {reference_queries:,d})", list(sizes),
             reference_s, "s")]
    if faiss_s:
        rows.append((f"kNN faiss-cpu (per 10k, from {faiss_queries:,d})", list(sizes), faiss_s, "s"))
    return rows
