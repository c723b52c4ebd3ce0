"""Recall@K evaluation cost: our chunked matmul + topk against a full-sort brute force.

The brute force is what pytorch-metric-learning-style evaluation does without
faiss: the full N x N similarity matrix, self masked, an argsort of every
row, then the label matches of the first K. Ours computes ``chunk_size x N``
blocks and keeps only the top max(K) of each row. Both are exact; the script
checks that they agree, then prints, per device, the median time of each and
their ratio (brute force / ours).

    python benchmarks/retrieval_eval.py [--num 6000] [--dim 512] [--classes 100]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import devices, time_call  # noqa: E402
from fam_lightning.metrics.retrieval import recall_at_k  # noqa: E402

KS = (1, 2, 4, 8)


def brute_force_recall(embeddings: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """Full similarity matrix, argsort, then Recall@K (every class has >= 2 items here)."""
    z = F.normalize(embeddings, dim=1)
    sims = z @ z.t()  # (N, N)
    sims.fill_diagonal_(float("-inf"))
    order = sims.argsort(dim=1, descending=True)  # (N, N)
    matches = labels[order[:, : max(ks)]] == labels.unsqueeze(1)  # (N, max K)
    return {k: matches[:, :k].any(dim=1).float().mean() for k in ks}


def run(device: torch.device, num: int, dim: int, classes: int, chunk_size: int, repeats: int) -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(num) % classes
    centres = torch.randn(classes, dim, generator=gen)  # noise 4 x the centre scale: R@1 about 40%, not saturated
    embeddings = (centres[labels] + 4.0 * torch.randn(num, dim, generator=gen)).to(device)
    labels = labels.to(device)

    ours = recall_at_k(embeddings, labels, KS, chunk_size=chunk_size)
    brute = brute_force_recall(embeddings, labels, KS)
    agree = all(abs(ours[k].item() - brute[k].item()) < 1e-6 for k in KS)

    t_ours = time_call(lambda: recall_at_k(embeddings, labels, KS, chunk_size=chunk_size), device, repeats, warmup=1)
    t_brute = time_call(lambda: brute_force_recall(embeddings, labels, KS), device, repeats, warmup=1)

    recalls = ", ".join(f"R@{k} {100 * ours[k].item():.2f}" for k in KS)
    print(f"\n[{device.type}] {num} x {dim} embeddings, {classes} classes, cosine, median of {repeats}")
    print(f"  {recalls}  (agree with brute force: {agree})")
    print(f"  brute force (N x N argsort)       {t_brute * 1e3:9.1f} ms   1.000")
    print(f"  recall_at_k (chunk {chunk_size}, topk)    {t_ours * 1e3:9.1f} ms   {t_ours / t_brute:.3f}")
    print(f"  speed-up brute / ours             {t_brute / t_ours:9.2f} x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=6000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--chunk-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for device in devices():
        run(device, args.num, args.dim, args.classes, args.chunk_size, args.repeats)


if __name__ == "__main__":
    main()
