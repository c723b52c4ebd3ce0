"""Cost of the FAM callback on a validation epoch, against the same epoch without it.

Validates a Conv4 few-shot model on synthetic episodes (5-way 1-shot 15-query,
84x84) four times in one process: without the callback (reference), with maps +
localisation metrics, with maps + localisation + faithfulness (AD / IC), and the
full callback including the probe grid written to TensorBoard, and the maps +
localisation setting again with the torch union-find labelling that CPU tensors
used before scipy's. Prints seconds and the ratio to the reference.

    python benchmarks/callback_overhead.py [--episodes 20] [--accelerator cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fam_lightning.callbacks import FAMCallback  # noqa: E402
from fam_lightning.datamodules import FewShotDataModule  # noqa: E402
from fam_lightning.metrics import localization  # noqa: E402
from fam_lightning.models import FewShotClassifier  # noqa: E402


@contextlib.contextmanager
def iou_labeller(labeller: str):
    """Run the IoU's component labelling with ``labeller`` ("auto": scipy on CPU; "union_find": the torch one)."""
    original = localization.largest_connected_component
    localization.largest_connected_component = functools.partial(original, labeller=labeller)
    try:
        yield
    finally:
        localization.largest_connected_component = original


def validate_seconds(model, datamodule, callbacks, accelerator: str, log_dir: str, repeats: int,
                     labeller: str = "auto") -> float:
    best = float("inf")
    for _ in range(repeats):
        with iou_labeller(labeller):
            best = min(best, _validate_once(model, datamodule, callbacks, accelerator, log_dir))
    return best


def _validate_once(model, datamodule, callbacks, accelerator: str, log_dir: str) -> float:
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, logger=L.pytorch.loggers.TensorBoardLogger(log_dir),
        callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.validate(model, datamodule=datamodule, verbose=False)
    if accelerator != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--backbone", default="conv4")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    datamodule = FewShotDataModule(data_dir=args.data_dir, val_episodes=args.episodes)
    datamodule.prepare_data()
    model = FewShotClassifier(backbone=args.backbone, num_classes=datamodule.num_base_classes)
    settings = {
        "no callback (reference)": [],
        "FAM maps + energy + IoU": [FAMCallback(faithfulness=False)],
        "+ Average Drop / IC": [FAMCallback()],
        "maps + energy + IoU, torch union-find labelling (before)": [FAMCallback(faithfulness=False)],
    }
    with tempfile.TemporaryDirectory() as log_dir:
        validate_seconds(model, datamodule, [], args.accelerator, log_dir, 1)  # warm-up
        results = {name: validate_seconds(model, datamodule, cbs, args.accelerator, log_dir, args.repeats,
                                          "union_find" if "union-find" in name else "auto")
                   for name, cbs in settings.items()}
    reference = results["no callback (reference)"]
    print(f"\nvalidation epoch of {args.episodes} episodes, {args.backbone}, {args.accelerator} (best of {args.repeats})")
    for name, seconds in results.items():
        print(f"  {name:<56s} {seconds:8.2f} s   {seconds / reference:6.3f}")


if __name__ == "__main__":
    main()
