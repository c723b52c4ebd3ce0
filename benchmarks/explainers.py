"""Explainer suite side by side: cost and quality on synthetic few-shot episodes (Conv4).

For a Conv4 FewShotClassifier (``--ckpt_path`` to a trained one; untrained
otherwise, as the output says) on 5-way 1-shot 15-query test episodes of the
synthetic CUB-layout data set, prints one Markdown table with, per explainer:

- ms per batch: maps for the 75 queries of one episode, given the feature maps
  the decision already computed (what a callback pays), median of ``--repeats``
  (explainers with > 10 backbone passes per image: one call after no warm-up);
- x forward: that time over the forward time (backbone + embed) of the same
  75 queries, measured in the same run;
- passes / image: backbone forwards, extra head (pool + projection) forwards,
  head backwards;
- energy pointing game, IoU, Average Drop, Increase in Confidence (as
  ``fam_lightning.callbacks.FAMCallback``, but ``Y`` re-embedded in a batch shaped like
  ``O``'s) and deletion / insertion AUC of the raw decision score
  (``fam_lightning.metrics.deletion_insertion``), on correctly classified
  queries of ``--episodes`` episodes.

A uniform map is listed as the chance level of the quality columns.

    python benchmarks/explainers.py [--ckpt_path last.ckpt] [--episodes 3] [--explainers fam gradcam ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from lightning.pytorch.utilities import move_data_to_device
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import time_call  # noqa: E402
from fam_lightning.datamodules import FewShotDataModule  # noqa: E402
from fam_lightning.explainers import EXPLAINERS  # noqa: E402
from fam_lightning.metrics import (  # noqa: E402
    average_drop,
    energy_pointing_game,
    increase_in_confidence,
    localization_iou,
)
from fam_lightning.metrics.deletion_insertion import deletion_insertion_auc  # noqa: E402
from fam_lightning.models import FewShotClassifier  # noqa: E402
from fam_lightning.similarity import mean_similarity  # noqa: E402

UNIFORM = "(uniform map)"


def build_model(ckpt_path: str | None, device: torch.device) -> tuple[FewShotClassifier, str]:
    if ckpt_path:
        from fam_lightning.loading import load_model

        return load_model(ckpt_path, device=device), f"trained checkpoint {ckpt_path}"
    torch.manual_seed(0)
    model = FewShotClassifier(backbone="conv4", num_classes=None).to(device).eval()
    return model, "UNTRAINED Conv4 (random weights; pass --ckpt_path for a trained one)"


def quality(model, explainer, inputs, steps: int) -> dict[str, Tensor]:
    """Per-sample metrics of one episode's correct queries."""
    keep = inputs.correct.nonzero().squeeze(1)
    images, features, refs = inputs.images[keep], inputs.feature_maps[keep], inputs.references[keep]
    boxes = inputs.boxes[keep]
    if explainer is None:
        maps = torch.ones(images.shape[0], *images.shape[-2:], device=images.device)
    else:
        maps = explainer(images, refs, feature_maps=features)
    with torch.no_grad():
        # Y re-embeds the same images in a batch of the same shape as O's: batch-size-dependent
        # kernels (cuDNN, TF32) would otherwise make an unchanged image "increase" half the time.
        y = mean_similarity(model.embed(model.forward_features(images)), refs, model.similarity)
        masked = images * maps.unsqueeze(1)
        o = mean_similarity(model.embed(model.forward_features(masked)), refs, model.similarity)
        deletion, insertion = deletion_insertion_auc(model, images, maps, refs, steps=steps)
    return {
        "energy": energy_pointing_game(maps, boxes), "iou": localization_iou(maps, boxes),
        "y": y, "o": o, "deletion": deletion, "insertion": insertion,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", default=None)
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--image_size", type=int, default=84)
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--explainers", nargs="+", default=list(EXPLAINERS), choices=sorted(EXPLAINERS))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="deletion / insertion curve steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    model, description = build_model(args.ckpt_path, device)

    data = FewShotDataModule(
        data_dir=args.data_dir, image_size=args.image_size, eval_ways=5, eval_shots=1, eval_queries=15,
        test_episodes=args.episodes, num_workers=0,
    )
    data.setup("test")
    with torch.no_grad():
        episodes = [model.explanation_inputs(move_data_to_device(b, device)) for b in data.test_dataloader()]
    first = episodes[0]
    queries, features, refs = first.images, first.feature_maps, first.references
    channels = features.shape[1]

    with torch.inference_mode():
        forward = time_call(lambda: model.embed(model.forward_features(queries)), device, args.repeats, args.warmup)

    rows = []
    for name in [*args.explainers, UNIFORM]:
        explainer = None if name == UNIFORM else EXPLAINERS[name](model)
        row = {"name": name, "ms": "", "ratio": "", "passes": ""}
        if explainer is not None:
            passes = explainer.forward_passes_per_image(channels)
            costly = passes.backbone > 10
            with torch.inference_mode():
                seconds = time_call(
                    lambda: explainer(queries, refs, feature_maps=features), device,
                    repeats=1 if costly else args.repeats, warmup=0 if costly else args.warmup,
                )
            row.update(ms=f"{seconds * 1e3:.1f}", ratio=f"{seconds / forward:.3f}", passes=str(passes))
        parts = [quality(model, explainer, inputs, args.steps) for inputs in episodes]
        metric = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
        row.update(
            energy=f"{100 * metric['energy'].mean():.1f}", iou=f"{100 * metric['iou'].mean():.1f}",
            ad=f"{average_drop(metric['y'], metric['o']):.1f}",
            ic=f"{increase_in_confidence(metric['y'], metric['o']):.1f}",
            deletion=f"{metric['deletion'].mean():.3f}", insertion=f"{metric['insertion'].mean():.3f}",
        )
        rows.append(row)
        print(f"  done: {name}", file=sys.stderr)

    correct = sum(int(e.correct.sum()) for e in episodes)
    total = sum(e.correct.numel() for e in episodes)
    print(f"\nModel: {description}")
    print(f"Device: {device} ({torch.get_num_threads()} threads). Batch: the {queries.shape[0]} queries of a "
          f"5-way 1-shot 15-query episode at {args.image_size}x{args.image_size}, feature maps "
          f"{tuple(features.shape[1:])}; forward (backbone + embed) {forward * 1e3:.1f} ms.")
    print(f"Quality on {correct}/{total} correctly classified queries of {len(episodes)} test episodes; "
          f"deletion / insertion: raw cosine score, {args.steps} steps, zero (mean colour) baseline.\n")
    print("| explainer | ms / batch | x forward | passes / image | energy (%) | IoU (%) | AD (%) lower | "
          "IC (%) higher | deletion AUC lower | insertion AUC higher |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {r['ms']} | {r['ratio']} | {r['passes']} | {r['energy']} | {r['iou']} | "
              f"{r['ad']} | {r['ic']} | {r['deletion']} | {r['insertion']} |")


if __name__ == "__main__":
    main()
