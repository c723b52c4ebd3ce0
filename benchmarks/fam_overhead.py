"""FAM cost relative to the forward pass it explains (Conv4, 5-way 1-shot 15-query episodes).

Prints, per device: forward time of one episode (80 images at 84x84, inference),
FAM time for its 75 queries from the already computed feature maps (what the
callback does), FAM + localisation metrics, and the Average Drop / Increase in
Confidence pass, each as a ratio to the forward time.

    python benchmarks/fam_overhead.py [--batch 80] [--size 84] [--backbone conv4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import devices, time_call  # noqa: E402
from fam_lightning.explainers import FAMExplainer  # noqa: E402
from fam_lightning.metrics import energy_pointing_game, localization_iou  # noqa: E402
from fam_lightning.models import FewShotClassifier  # noqa: E402
from fam_lightning.similarity import mean_similarity  # noqa: E402


def run(device: torch.device, backbone: str, ways: int, shots: int, queries: int, size: int, repeats: int) -> None:
    model = FewShotClassifier(backbone=backbone, num_classes=10).to(device).eval()
    if device.type == "cpu":
        model = model.to(memory_format=torch.contiguous_format)
    n_support, n_query = ways * shots, ways * queries
    images = torch.randn(n_support + n_query, 3, size, size, device=device)
    boxes = torch.tensor([[size * 0.25, size * 0.25, size * 0.75, size * 0.75]], device=device).repeat(n_query, 1)
    explainer = FAMExplainer(model)

    with torch.inference_mode():
        features = model.forward_features(images)
        embeddings = model.embed(features)
        support = embeddings[:n_support].view(ways, shots, -1)
        refs = support[torch.arange(n_query, device=device) % ways]  # (Q, S, D)
        q_feat, q_emb, q_img = features[n_support:], embeddings[n_support:], images[n_support:]

        forward = time_call(lambda: model.embed(model.forward_features(images)), device, repeats)
        fam_only = time_call(lambda: explainer.from_feature_maps(q_feat, refs, size=(size, size)), device, repeats)

        def fam_and_localisation() -> None:
            maps = explainer.from_feature_maps(q_feat, refs, size=(size, size))
            energy_pointing_game(maps, boxes)
            localization_iou(maps, boxes)

        maps = explainer.from_feature_maps(q_feat, refs, size=(size, size))

        def faithfulness() -> None:
            mean_similarity(q_emb, refs)
            masked = q_img * maps.unsqueeze(1)
            mean_similarity(model.embed(model.forward_features(masked)), refs)

        localisation = time_call(fam_and_localisation, device, repeats)
        faithful = time_call(faithfulness, device, repeats)

    print(f"\n[{device.type}] {backbone}, {ways}-way {shots}-shot {queries}-query episode "
          f"({n_support + n_query} images at {size}x{size}), median of {repeats}")
    print(f"  forward (reference)            {forward * 1e3:9.3f} ms   1.000")
    print(f"  FAM maps for {n_query} queries        {fam_only * 1e3:9.3f} ms   {fam_only / forward:.3f}")
    print(f"  FAM + energy + IoU             {localisation * 1e3:9.3f} ms   {localisation / forward:.3f}")
    print(f"  Average Drop / IC pass         {faithful * 1e3:9.3f} ms   {faithful / forward:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="conv4")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    for device in devices():
        run(device, args.backbone, args.ways, args.shots, args.queries, args.size, args.repeats)


if __name__ == "__main__":
    main()
