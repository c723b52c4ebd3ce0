"""How costs grow with the data: per-size figures and the fitted growth exponent of each.

``t ~ c * n^p``: ``p`` is the least-squares slope of log t over log n (1 = linear;
anything clearly above 1 is a bug, not a figure). Four parts, each on its own:

- ``data``: ImageNet-layout setup on a listing of 10 k, 100 k, 300 k tiny files
  written under /tmp (1000 class folders; the same 8 x 8 JPEG bytes in every
  file, one VOC XML box per image) and deleted afterwards: the listing +
  existence check the training split gets (``read_boxes=False``), and the
  listing + XML parsing + header / box checks a boxed split gets, each
  extrapolated to 1.28 M files with the fitted exponent. The page cache is
  warm (the files were just written): a cold disk adds its seek time.
- ``knn``: 10 k queries, NPID's weighted vote (K = 200) over banks of 100 k,
  400 k and 1.28 M x 128 (torch backend, bounded blocks; faiss-cpu with 1 k
  queries, scaled x 10), each in a fresh process whose peak resident memory
  (``VmHWM``) is printed; then the peak at 1.28 M per ``max_chunk_bytes``.
- ``bank``: two processes (gloo on 127.0.0.1): filling the memory bank once
  (every image's embedding gathered from both ranks in batches of 256 per rank,
  then ``MemoryBank.update``), one all-gather of a whole bank shard, and one
  broadcast of the bank (what DDP's ``broadcast_buffers=True`` costs every step).
- ``callback``: what the FAM callback computes per validation batch (FAM maps +
  energy + IoU, and the Average Drop / IC pass), Conv4 at 84 x 84, for 8, 32 and
  128 queries (8-way 1-shot, 1 / 4 / 16 queries per class), beside the batch's forward.

    python benchmarks/scaling.py [--parts data knn bank callback] [--threads 2]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IMAGENET_TRAIN = 1_281_167
DATA_SIZES = (10_000, 100_000, 300_000)
BANK_SIZES = (100_000, 400_000, 1_280_000)
QUERIES = 10_000
DIM = 128
CLASSES = 1000


def growth(sizes: list[float], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) over log(size)."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def extrapolate(sizes: list[float], seconds: list[float], target: float) -> float:
    """Seconds at ``target`` from the power law fitted to the measured points."""
    slope, intercept = np.polyfit(np.log(sizes), np.log(seconds), 1)
    return float(math.exp(intercept + slope * math.log(target)))


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


# --------------------------------------------------------------------------- data setup
def _tiny_jpeg() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 30, 200)).save(out, "JPEG")
    return out.getvalue()


XML = ("<annotation><size><width>8</width><height>8</height></size><object><name>{wnid}</name>"
       "<bndbox><xmin>2</xmin><ymin>2</ymin><xmax>7</xmax><ymax>7</ymax></bndbox></object></annotation>")


def _grow(root: Path, total: int, jpeg: bytes) -> float:
    """Add files until ``root/train`` holds ``total`` images (and as many XML boxes); returns seconds."""
    start = time.perf_counter()
    classes = min(CLASSES, total)
    per_class = total // classes
    for c in range(classes):
        wnid = f"n{c:08d}"
        images, boxes = root / "train" / wnid, root / "boxes" / "train" / wnid
        images.mkdir(parents=True, exist_ok=True)
        boxes.mkdir(parents=True, exist_ok=True)
        have = len(os.listdir(images))
        xml = XML.format(wnid=wnid).encode()
        for i in range(have, per_class):
            stem = f"{wnid}_{i:06d}"
            (images / f"{stem}.JPEG").write_bytes(jpeg)
            (boxes / f"{stem}.xml").write_bytes(xml)
    return time.perf_counter() - start


def _best_of(fn, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def part_data(sizes: tuple[int, ...]) -> list[tuple[str, list[int], list[float], str]]:
    from fam_lightning.datamodules.formats.imagenet_index import check_imagenet_index, read_imagenet_split

    root = Path(tempfile.mkdtemp(prefix="fam_scaling_", dir="/tmp"))
    jpeg = _tiny_jpeg()
    listing, boxed = [], []
    try:
        for n in sizes:
            written = _grow(root, n, jpeg)
            index = read_imagenet_split(root, "train", read_boxes=False)
            assert len(index) == n, (len(index), n)

            def train_setup() -> None:  # what ContrastiveDataModule does for the training split
                check_imagenet_index(read_imagenet_split(root, "train", read_boxes=False))

            def boxed_setup() -> None:  # a split with boxes: XML parsing, header reads, box checks
                checked = check_imagenet_index(read_imagenet_split(root, "train", boxes_dir=root / "boxes"))
                assert sum(len(b) for b in checked.boxes) == n

            listing.append(_best_of(train_setup))
            boxed.append(_best_of(boxed_setup, repeats=1))
            print(f"  data {n:>9,d} files (written in {written:6.1f} s): listing + existence {listing[-1]:7.2f} s, "
                  f"with XML boxes + header / box checks {boxed[-1]:7.2f} s", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return [
        ("data setup: listing + existence check (training split)", list(sizes), listing, "s"),
        ("data setup: listing + XML boxes + header / box checks", list(sizes), boxed, "s"),
    ]


# --------------------------------------------------------------------------- kNN
KNN_CHILD = r"""
import json, sys, time
import torch
sys.path.insert(0, {root!r})
from fam_lightning.knn import KNNIndex
from benchmarks.scaling import peak_rss_mib, reset_peak_rss
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
print(json.dumps({{"seconds": seconds, "peak_mib": peak_rss_mib(), "setup_peak_mib": setup_peak,
                  "block": index.block_queries() if backend == "torch" else None}}))
"""


def _knn_child(size: int, queries: int, backend: str, threads: int, max_chunk_bytes: int = 2**30) -> dict:
    code = KNN_CHILD.format(root=str(ROOT), threads=threads, size=size, queries=queries, backend=backend,
                            max_chunk_bytes=max_chunk_bytes, dim=DIM)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def part_knn(sizes: tuple[int, ...], threads: int, faiss_queries: int) -> list[tuple[str, list[int], list[float], str]]:
    from fam_lightning.knn import faiss_available

    torch_s, faiss_s = [], []
    for n in sizes:
        r = _knn_child(n, QUERIES, "torch", threads)
        if "error" in r:
            raise RuntimeError(f"kNN over {n:,d} x {DIM} failed: {r['error']}")
        torch_s.append(r["seconds"])
        bank_mib = n * DIM * 4 / 2**20
        print(f"  kNN torch  {QUERIES:,d} queries x {n:>9,d} x {DIM}: {r['seconds']:7.2f} s, peak RSS during the search "
              f"{r['peak_mib']:7.0f} MiB, setup {r['setup_peak_mib']:.0f} MiB (bank {bank_mib:.0f} MiB; "
              f"{r['block']} queries per block)", flush=True)
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
        r = _knn_child(largest, 2 * block, "torch", threads, max_chunk_bytes)
        if "error" in r:
            print(f"    max_chunk_bytes {max_chunk_bytes / 2**30:5.2f} GiB: {r['error']}")
            continue
        print(f"    max_chunk_bytes {max_chunk_bytes / 2**30:5.2f} GiB ({block:5d} queries per block): peak RSS "
              f"during the search {r['peak_mib']:7.0f} MiB (setup {r['setup_peak_mib']:.0f} MiB), "
              f"{r['seconds'] / (2 * block) * QUERIES:6.1f} s per {QUERIES:,d} queries", flush=True)
    r = _knn_child(largest, 8, "torch", threads, max_chunk_bytes=2**20)
    print(f"    max_chunk_bytes 1 MiB: {r.get('error', r)}")
    rows = [("kNN torch, 10k queries, K=200", list(sizes), torch_s, "s")]
    if faiss_s:
        rows.append((f"kNN faiss-cpu (per 10k, from {faiss_queries:,d})", list(sizes), faiss_s, "s"))
    return rows


# --------------------------------------------------------------------------- memory bank under 2 processes
def _bank_worker(rank: int, world: int, port: int, sizes: tuple[int, ...], threads: int, results) -> None:
    import torch.distributed as dist

    from fam_lightning.memory import MemoryBank, gather_from_all_ranks

    torch.set_num_threads(threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for n in sizes:
            bank = MemoryBank(n, DIM)
            shard = torch.arange(rank, n, world)  # a DistributedSampler-like shard of the image indices
            g = torch.Generator().manual_seed(rank)
            batch = 256
            dist.barrier()
            start = time.perf_counter()
            for first in range(0, shard.numel() - batch + 1, batch):
                idx = shard[first : first + batch]
                z = torch.nn.functional.normalize(torch.randn(batch, DIM, generator=g), dim=1)
                bank.update(gather_from_all_ranks(idx), gather_from_all_ranks(z))
            dist.barrier()
            fill = time.perf_counter() - start
            start = time.perf_counter()
            whole = gather_from_all_ranks(bank.bank[shard[: n // world]])
            gather = time.perf_counter() - start
            start = time.perf_counter()
            dist.broadcast(bank.bank, src=0)
            broadcast = time.perf_counter() - start
            assert whole.shape == (world * (n // world), DIM)
            if rank == 0:
                results[n] = (fill, gather, broadcast)
    finally:
        dist.destroy_process_group()


def part_bank(sizes: tuple[int, ...], threads: int) -> list[tuple[str, list[int], list[float], str]]:
    import torch.multiprocessing as mp

    from tests.helpers.distributed import free_port

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_bank_worker, args=(2, free_port(), sizes, max(1, threads // 2), results), nprocs=2, join=True)
        results = dict(results)
    fill, gather, broadcast = ([results[n][i] for n in sizes] for i in range(3))
    for n in sizes:
        steps = n // 512
        print(f"  bank {n:>9,d} x {DIM}, 2 processes: fill (all-gather + update, {steps:,d} steps of 2 x 256) "
              f"{results[n][0]:7.2f} s ({results[n][0] / steps * 1e3:.2f} ms/step); all-gather of a bank shard "
              f"{results[n][1]:6.2f} s; broadcast of the bank {results[n][2]:6.2f} s", flush=True)
    return [
        ("bank fill, 2 processes (every image once)", list(sizes), fill, "s"),
        ("all-gather of a bank shard, 2 processes", list(sizes), gather, "s"),
        ("broadcast of the bank (per step with broadcast_buffers=True)", list(sizes), broadcast, "s"),
    ]


# --------------------------------------------------------------------------- callback per validation batch
def part_callback(query_counts: tuple[int, ...], repeats: int) -> list[tuple[str, list[int], list[float], str]]:
    from benchmarks.common import time_round_robin
    from fam_lightning.explainers import FAMExplainer
    from fam_lightning.metrics import energy_pointing_game, localization_iou
    from fam_lightning.models import FewShotClassifier
    from fam_lightning.similarity import mean_similarity

    torch.manual_seed(0)
    device, size, ways = torch.device("cpu"), 84, 8
    model = FewShotClassifier(backbone="conv4", num_classes=10).eval()
    explainer = FAMExplainer(model)
    maps_s, faith_s, forward_s = [], [], []
    for n_query in query_counts:
        images = torch.randn(ways + n_query, 3, size, size)
        boxes = torch.tensor([[21.0, 21.0, 63.0, 63.0]]).repeat(n_query, 1)
        with torch.inference_mode():
            features = model.forward_features(images)
            embeddings = model.embed(features)
            refs = embeddings[:ways].unsqueeze(1)[torch.arange(n_query) % ways]  # (Q, 1, D)
            q_feat, q_emb, q_img = features[ways:], embeddings[ways:], images[ways:]
            maps = explainer.from_feature_maps(q_feat, refs, size=(size, size))

            def fam_energy_iou() -> None:
                m = explainer.from_feature_maps(q_feat, refs, size=(size, size))
                energy_pointing_game(m, boxes)
                localization_iou(m, boxes)

            def faithfulness() -> None:
                mean_similarity(q_emb, refs)
                mean_similarity(model.embed(model.forward_features(q_img * maps.unsqueeze(1))), refs)

            times = time_round_robin({"forward": lambda: model.embed(model.forward_features(images)),
                                      "maps": fam_energy_iou, "faith": faithfulness}, device, repeats)
        forward_s.append(times["forward"])
        maps_s.append(times["maps"])
        faith_s.append(times["faith"])
        print(f"  callback, {n_query:4d} queries ({ways + n_query} images): forward {times['forward'] * 1e3:8.1f} ms, "
              f"FAM + energy + IoU {times['maps'] * 1e3:7.1f} ms ({times['maps'] / times['forward']:.3f} x forward), "
              f"AD / IC pass {times['faith'] * 1e3:7.1f} ms", flush=True)
    return [
        ("callback per batch: FAM + energy + IoU", list(query_counts), maps_s, "s"),
        ("callback per batch: AD / IC pass", list(query_counts), faith_s, "s"),
        ("  the batch's forward (reference)", list(query_counts), forward_s, "s"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["data", "knn", "bank", "callback"],
                        choices=["data", "knn", "bank", "callback"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--faiss-queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="sizes / 100: a smoke run of the script itself")
    args = parser.parse_args()
    data_sizes, bank_sizes = DATA_SIZES, BANK_SIZES
    if args.quick:
        data_sizes = tuple(n // 100 for n in DATA_SIZES)
        bank_sizes = tuple(n // 100 for n in BANK_SIZES)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(f"machine: {os.cpu_count()} CPUs, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
          f"torch {torch.__version__}, {args.threads} threads; load average {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    if "data" in args.parts:
        rows += part_data(data_sizes)
    if "knn" in args.parts:
        rows += part_knn(bank_sizes, args.threads, args.faiss_queries)
    if "bank" in args.parts:
        rows += part_bank(bank_sizes, args.threads)
    if "callback" in args.parts:
        rows += part_callback((8, 32, 128), args.repeats)
    print("\n| what | sizes | seconds | growth exponent | extrapolated |")
    print("|---|---|---|---|---|")
    for name, sizes, seconds, _ in rows:
        slope = growth(sizes, seconds)
        target = IMAGENET_TRAIN if name.startswith("data") else None
        extra = f"{extrapolate(sizes, seconds, target):.1f} s at {target:,d} files" if target else ""
        shown = " / ".join(f"{n:,d}" for n in sizes)
        print(f"| {name} | {shown} | {' / '.join(f'{s:.3g}' for s in seconds)} | {slope:.2f} | {extra} |")
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
