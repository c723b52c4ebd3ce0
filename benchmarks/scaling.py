"""How costs grow with the data: per-size figures and the fitted growth exponent of each.

``t ~ c * n^p``: ``p`` is the least-squares slope of log t over log n (1 = linear;
anything clearly above 1 is a bug, not a figure). Four parts, each on its own:

- ``data``: ImageNet-layout setup on a listing of 10 k, 100 k, 300 k tiny files
  under /tmp (1000 class folders; every image a hard link to its class's one
  8 x 8 JPEG, every VOC XML box one to its class's one XML file: one directory
  entry and one stat per file as with separate files, but creating and deleting
  600 k names costs seconds, not the minutes that 600 k separate files took
  on a disk mounted with ``discard``), deleted afterwards: the listing +
  existence check the training split gets (``read_boxes=False``), and the
  listing + XML parsing + header / box checks a boxed split gets, each
  extrapolated to 1.28 M files with the fitted exponent. The page cache is
  warm (the files were just written): a cold disk adds its seek time.
- ``knn``: 10 k queries, NPID's weighted vote (K = 200) over banks of 100 k,
  400 k and 1.28 M x 128 (torch backend, bounded blocks; faiss-cpu with 1 k
  queries, scaled x 10), each in a fresh process whose peak resident memory
  (``VmHWM``) is printed. In the same process, a bare reference: matmul +
  ``topk`` over fixed 64-query blocks (1 k queries, scaled x 10), whose work
  per query and bank row does not depend on N, so its growth exponent is the
  machine's (caches, memory bandwidth, load) and the index's exponent is read
  beside it. Then the peak at 1.28 M for ``max_chunk_bytes`` 256 MiB and 4 GiB
  (the 1 GiB default is the main run's), each over one block + 1 query (the
  second block reuses the first one's buffer).
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
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.scaling_data import part_data  # noqa: E402
from benchmarks.scaling_knn import DIM, part_knn  # noqa: E402

IMAGENET_TRAIN = 1_281_167
DATA_SIZES = (10_000, 100_000, 300_000)
BANK_SIZES = (100_000, 400_000, 1_280_000)


def growth(sizes: list[float], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) over log(size)."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def extrapolate(sizes: list[float], seconds: list[float], target: float) -> float:
    """Seconds at ``target`` from the power law fitted to the measured points."""
    slope, intercept = np.polyfit(np.log(sizes), np.log(seconds), 1)
    return float(math.exp(intercept + slope * math.log(target)))


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
    rows, part_seconds = [], {}
    parts = {"data": lambda: part_data(data_sizes), "knn": lambda: part_knn(bank_sizes, args.threads, args.faiss_queries),
             "bank": lambda: part_bank(bank_sizes, args.threads), "callback": lambda: part_callback((8, 32, 128), args.repeats)}
    for name, run in parts.items():
        if name in args.parts:
            start = time.perf_counter()
            rows += run()
            part_seconds[name] = time.perf_counter() - start
    print("\n| what | sizes | seconds | growth exponent | extrapolated |")
    print("|---|---|---|---|---|")
    for name, sizes, seconds, _ in rows:
        slope = growth(sizes, seconds)
        target = IMAGENET_TRAIN if name.startswith("data") else None
        extra = f"{extrapolate(sizes, seconds, target):.1f} s at {target:,d} files" if target else ""
        shown = " / ".join(f"{n:,d}" for n in sizes)
        print(f"| {name} | {shown} | {' / '.join(f'{s:.3g}' for s in seconds)} | {slope:.2f} | {extra} |")
    spent = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in part_seconds.items())
    print(f"\ntotal {time.perf_counter() - started:.0f} s ({spent}); load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
