"""FAM cost relative to the forward pass it explains (Conv4, 5-way 1-shot 15-query episodes).

Prints, per device: forward time of one episode (80 images at 84x84, inference),
FAM time for its 75 queries from the already computed feature maps (what the
callback does), FAM + localisation metrics, and the Average Drop / Increase in
Confidence pass, each as a ratio to the forward time. All rows are timed in
turns (``common.time_round_robin``), so the ratios hold on a busy machine.

Two extra rows time the same FAM + energy + IoU with the IoU's largest
component found by the previous implementation (3x3 max-pool label
propagation with a convergence test every 4 rounds, kept here as the
reference) and, where kornia is installed, by kornia's
``connected_components_union_find``: the before/after of issue 11.

    python benchmarks/fam_overhead.py [--batch 80] [--size 84] [--backbone conv4] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import devices, time_round_robin  # noqa: E402
from fam_lightning.explainers import FAMExplainer  # noqa: E402
from fam_lightning.metrics import localization  # noqa: E402
from fam_lightning.metrics import energy_pointing_game, localization_iou  # noqa: E402
from fam_lightning.models import FewShotClassifier  # noqa: E402
from fam_lightning.similarity import mean_similarity  # noqa: E402


def label_propagation_lcc(mask: torch.Tensor, check_every: int = 4) -> torch.Tensor:
    """The previous largest 8-connected component: max-pool label propagation + pointer jumps."""
    batch, height, width = mask.shape
    num_pixels = height * width
    mask_f = mask.float()
    labels = (num_pixels - torch.arange(num_pixels, dtype=torch.float32, device=mask.device)).view(1, height, width)
    labels = labels * mask_f
    for rounds in range(0, num_pixels, check_every):
        previous = labels
        for _ in range(check_every):
            pooled = F.max_pool2d(labels.unsqueeze(1), 3, stride=1, padding=1).squeeze(1) * mask_f
            flat = pooled.reshape(batch, num_pixels)
            target = (num_pixels - flat.long()).clamp_(0, num_pixels - 1)
            labels = (flat.gather(1, target) * mask_f.reshape(batch, num_pixels)).view(batch, height, width)
        if torch.equal(labels, previous):
            break
    flat = labels.reshape(batch, num_pixels).long()
    counts = torch.zeros(batch, num_pixels + 1, dtype=torch.long, device=mask.device)
    counts.scatter_add_(1, flat, mask.reshape(batch, num_pixels).long())
    score = counts * (num_pixels + 1) + torch.arange(num_pixels + 1, device=mask.device)
    score[:, 0] = -1
    return (flat == score.argmax(dim=1)[:, None]).view(batch, height, width) & mask


def kornia_lcc() -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Largest component with kornia's union-find labelling (same tie rule), or None without kornia."""
    try:
        from kornia.contrib import connected_components_union_find
    except ImportError:
        return None

    def largest(mask: torch.Tensor) -> torch.Tensor:
        batch, height, width = mask.shape
        pixels, blocks = height * width, ((height + 1) // 2) * ((width + 1) // 2)
        # kornia's labels: 1 + the smallest block index of the component, over the whole batch.
        labels = connected_components_union_find(mask.unsqueeze(1)).flatten()
        counts = torch.zeros(batch * blocks + 1, dtype=torch.long, device=mask.device)
        counts.scatter_add_(0, labels, mask.flatten().long())
        index = torch.arange(pixels, device=mask.device).repeat(batch)
        first = torch.full_like(counts, pixels).scatter_reduce_(0, labels, index, "amin")
        score = torch.where(counts > 0, counts * (pixels + 1) + (pixels - first), -1)
        score[0] = -1
        best = score[1:].view(batch, blocks).argmax(1) + torch.arange(batch, device=mask.device) * blocks + 1
        return (labels.view(batch, pixels) == best[:, None]).view(batch, height, width) & mask

    return largest


@contextlib.contextmanager
def largest_component_by(fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Let ``localization_iou`` find the largest component with ``fn`` for a while."""
    original = localization.largest_connected_component
    localization.largest_connected_component = fn
    try:
        yield
    finally:
        localization.largest_connected_component = original


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

        maps = explainer.from_feature_maps(q_feat, refs, size=(size, size))

        def fam_and_localisation() -> None:
            maps = explainer.from_feature_maps(q_feat, refs, size=(size, size))
            energy_pointing_game(maps, boxes)
            localization_iou(maps, boxes)

        def faithfulness() -> None:
            mean_similarity(q_emb, refs)
            masked = q_img * maps.unsqueeze(1)
            mean_similarity(model.embed(model.forward_features(masked)), refs)

        def with_component(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
            def timed() -> None:
                with largest_component_by(fn):
                    fam_and_localisation()

            return timed

        methods = {
            "forward (reference)": lambda: model.embed(model.forward_features(images)),
            f"FAM maps for {n_query} queries": lambda: explainer.from_feature_maps(q_feat, refs, size=(size, size)),
            "FAM + energy + IoU": fam_and_localisation,
            "Average Drop / IC pass": faithfulness,
            "  IoU by label propagation (before)": with_component(label_propagation_lcc),
        }
        others = {"label propagation (before)": label_propagation_lcc}
        kornia = kornia_lcc()
        if kornia is not None:
            methods["  IoU by kornia union-find"] = with_component(kornia)
            others["kornia"] = kornia
        # Every largest-component variant must agree with ours on these maps.
        peak = maps.amax(dim=(1, 2), keepdim=True)
        mask = (maps >= 0.2 * peak) & (peak > 0)
        ours = localization.largest_connected_component(mask)
        for name, fn in others.items():
            if not torch.equal(fn(mask), ours):
                raise AssertionError(f"the largest component by {name} differs from localization's")
        times = time_round_robin(methods, device, repeats)

    forward = times["forward (reference)"]
    where = f"{torch.get_num_threads()} torch threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"\n[{device.type}: {where}] {backbone}, {ways}-way {shots}-shot {queries}-query episode "
          f"({n_support + n_query} images at {size}x{size}), median of {repeats} rounds")
    for name, seconds in times.items():
        print(f"  {name:36s} {seconds * 1e3:9.3f} ms   {seconds / forward:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="conv4")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for device in devices():
        run(device, args.backbone, args.ways, args.shots, args.queries, args.size, args.repeats)


if __name__ == "__main__":
    main()
