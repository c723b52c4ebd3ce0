"""FAM, token FAM, Grad-CAM, Eigen-CAM, attention rollout and gradient rollout on a trained few-shot ViT checkpoint.

    python benchmarks/token_explainers.py --ckpt_path logs/vit_tiny_synthetic/version_0/checkpoints/last.ckpt \
        --data_dir data --episodes 40

Test episodes of the checkpoint's own data module (its saved arguments, ``--data_dir`` overriding
where the embedded data lives); the correctly classified queries, each against the support images of
its predicted class (the model's own decision). Per explainer: energy pointing game, localisation
IoU, Average Drop / Increase in Confidence, deletion / insertion AUC of the raw score (10 steps, zero
baseline), the FAM sum-property error ``|sum_k w_k - S|`` and the share of all-zero FAM maps. A uniform
map is the chance level. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch

from fam_lightning.datamodules import FewShotDataModule
from fam_lightning.explainers import EXPLAINERS, TOKEN_EXPLAINERS
from fam_lightning.explainers.base import decision_scores
from fam_lightning.explainers.feature_activation import FAMExplainer
from fam_lightning.metrics.deletion_insertion import deletion_insertion_auc
from fam_lightning.metrics.faithfulness import average_drop, increase_in_confidence
from fam_lightning.metrics.localization import energy_pointing_game, localization_iou
from fam_lightning.models import FewShotClassifier

NAMES = ("fam", "token_fam", "gradcam", "eigencam", "rollout", "grad_rollout", "uniform")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True)
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--episodes", type=int, default=40)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = FewShotClassifier.load_from_checkpoint(args.ckpt_path, map_location="cpu").eval()
    data_args = dict(torch.load(args.ckpt_path, map_location="cpu", weights_only=False)["datamodule_hyper_parameters"])
    data_args = {k: v for k, v in data_args.items() if not k.startswith("_")}  # jsonargparse's bookkeeping
    data_args.update(data_dir=args.data_dir, test_episodes=args.episodes, num_workers=0)
    data = FewShotDataModule(**data_args)
    data.setup("test")
    explainers = {name: {**EXPLAINERS, **TOKEN_EXPLAINERS}[name](model) for name in NAMES if name != "uniform"}
    rows: dict[str, dict[str, list[torch.Tensor]]] = {name: {} for name in NAMES}
    seconds = dict.fromkeys(NAMES, 0.0)
    sum_errors, blank, decisions, queries = [], [], 0, 0
    for batch in data.test_dataloader():
        with torch.no_grad():
            inputs = model.explanation_inputs(batch)
        queries += inputs.correct.numel()
        keep = inputs.correct
        if not bool(keep.any()):
            continue
        images, refs, feats = inputs.images[keep], inputs.references[keep], inputs.feature_maps[keep]
        boxes = inputs.boxes[keep] if isinstance(inputs.boxes, torch.Tensor) else [inputs.boxes[i] for i in keep.nonzero()[:, 0]]
        decisions += images.shape[0]
        with torch.no_grad():
            y = decision_scores(model, model.embed(feats), refs)
            sum_errors.append((FAMExplainer(model).weights(feats, refs).sum(1) - y).abs())
        for name in NAMES:
            start = time.perf_counter()
            if name == "uniform":
                maps = torch.ones(images.shape[0], *images.shape[-2:])
            else:
                explainer = explainers[name]
                maps = explainer(images, refs if explainer.needs_references else None, feature_maps=feats)
            seconds[name] += time.perf_counter() - start
            if name == "fam":
                blank.append(maps.flatten(1).amax(1) == 0)
            with torch.no_grad():
                o = decision_scores(model, model(images * maps.unsqueeze(1)), refs)
                deletion, insertion = deletion_insertion_auc(model, images, maps, refs, steps=10, baseline="zeros")
            for metric, value in (
                ("energy", energy_pointing_game(maps, boxes)), ("iou", localization_iou(maps, boxes)),
                ("y", y), ("o", o), ("deletion", deletion), ("insertion", insertion),
            ):
                rows[name].setdefault(metric, []).append(value.float())
    print(f"{decisions} correct decisions of {queries} queries ({args.episodes} test episodes); "
          f"FAM sum-property error max {torch.cat(sum_errors).max().item():.2e}; "
          f"all-zero FAM maps {100 * torch.cat(blank).float().mean().item():.0f} %")
    print("| explainer | energy % | IoU % | AD % | IC % | deletion AUC | insertion AUC | s / image |")
    print("|---|---|---|---|---|---|---|---|")
    for name in NAMES:
        values = {k: torch.cat(v) for k, v in rows[name].items()}
        ad = average_drop(values["y"], values["o"]).item()
        ic = increase_in_confidence(values["y"], values["o"]).item()
        print(f"| {name} | {100 * values['energy'].mean():.1f} | {100 * values['iou'].mean():.1f} | {ad:.1f} | "
              f"{ic:.1f} | {values['deletion'].mean():.3f} | {values['insertion'].mean():.3f} | "
              f"{seconds[name] / max(1, decisions):.4f} |")


if __name__ == "__main__":
    main()
