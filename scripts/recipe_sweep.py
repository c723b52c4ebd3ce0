"""One recipe variant of a synthetic config, trained and scored through the real model and data module.

    python scripts/recipe_sweep.py retrieval --steps 300 [--lr 0.003] [--classes 64] [--product 128] ...
    python scripts/recipe_sweep.py fewshot --epochs 5 --val-episodes 150 [--lr 0.002] [--image-size 96] ...

A plain Lightning fit with no callback, logger or checkpoint (nothing written but the synthetic data), then
one validation; the last line printed is ``RESULT {arguments} metric=value ...``. The defaults are those of
``configs/retrieval/ms_synthetic.yaml`` and ``configs/quickstart.yaml``. Retrieval also scores Recall@1
among the un-augmented training-class images (``train_recall@1``): how well the model fits the classes it
was trained on, against how well it transfers to the unseen combinations (``val/recall@1``), and on the first
30 test images of each class (``test_recall@1_first30``: the default gallery, whatever ``--images-per-class``).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from fam_lightning.backbones import build_backbone
from fam_lightning.datamodules import FewShotDataModule, RetrievalDataModule
from fam_lightning.models import FewShotClassifier, RetrievalModel


class ProductFeatures(nn.Module):
    """A backbone whose maps are ``(U a) * (V a)`` per position (two 1x1 convolutions multiplied, a low-rank
    bilinear layer): each output channel is a product of two feature mixtures at one place, so it can code
    a conjunction (this colour and this shape at the same position) that pooling then keeps."""

    def __init__(self, backbone: str, width: int, backbone_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.inner = build_backbone(backbone, backbone_kwargs=backbone_kwargs, slope=0.1)
        self.u = nn.Conv2d(self.inner.out_channels, width, 1)
        self.v = nn.Conv2d(self.inner.out_channels, width, 1)
        self.out_channels = width

    def forward_features(self, x: Tensor) -> Tensor:
        features = self.inner.forward_features(x)
        return self.u(features) * self.v(features)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)


class AugmentedFewShot(FewShotClassifier):
    """The few-shot model with a training-time augmentation of every episode image (the data module has none):
    ``flip`` (horizontal, p 0.5) and / or ``shift`` (up to 8 px, reflect-padded), from a seeded generator."""

    def __init__(self, augment: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.augment = augment
        self.generator = torch.Generator().manual_seed(123)

    def _augment(self, images: Tensor) -> Tensor:
        n, size, pad = images.shape[0], images.shape[-1], 8
        if "flip" in self.augment:
            flip = torch.rand(n, generator=self.generator) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        if "shift" in self.augment:
            padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
            offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=self.generator).tolist()
            images = torch.stack([padded[i, :, y:y + size, x:x + size] for i, (y, x) in enumerate(offsets)])
        return images

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        batch = dict(batch)
        for key in ("support", "query"):
            batch[key] = self._augment(batch[key].flatten(0, -4)).view_as(batch[key])
        return super().training_step(batch, batch_idx)


def _width(args: argparse.Namespace) -> dict[str, Any] | None:
    """The backbone's ``channels`` (Conv4 / Conv64F width), or None for the published 64."""
    return {"channels": args.width} if args.width else None


def _trainer(max_epochs: int) -> L.Trainer:
    return L.Trainer(max_epochs=max_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, num_sanity_val_steps=0, check_val_every_n_epoch=10**6)


def _recall(model: RetrievalModel, datamodule: RetrievalDataModule, split: str, per_class: int = 30) -> float:
    """Recall@1 (%) of each of the first ``per_class`` images of every class of ``split`` against the others,
    un-augmented: with more synthetic images per class these are the same images (each is seeded by its class
    and its number), so the gallery stays that of the default 30."""
    dataset = datamodule._split(split).dataset
    loader = DataLoader(dataset, batch_size=64)  # no flips or crops
    model.eval()
    with torch.no_grad():
        batches = [(F.normalize(model(batch["image"]), dim=1), batch["label"]) for batch in loader]
    e, y = (torch.cat(parts) for parts in zip(*batches))
    rank = F.one_hot(y).cumsum(0).gather(1, y[:, None]).squeeze(1) - 1  # the image's number in its class
    keep = rank < per_class
    e, y = e[keep], y[keep]
    similarity = (e @ e.T).fill_diagonal_(-2.0)
    return float((y[similarity.argmax(1)] == y).float().mean() * 100)


def run_retrieval(args: argparse.Namespace) -> dict[str, Any]:
    datamodule = RetrievalDataModule(
        data_dir=args.data_dir, image_size=args.image_size, classes_per_batch=args.classes_per_batch,
        samples_per_class=args.samples_per_class, train_batches=100, batch_size=64, explain_queries=8,
        synthetic_classes=args.classes, synthetic_distractors=args.distractors,
        synthetic_images_per_class=args.images_per_class,
    )
    epochs = max(1, args.steps // 100)
    backbone = ProductFeatures(args.backbone, args.product, _width(args)) if args.product else args.backbone
    model = RetrievalModel(backbone=backbone, embedding_dim=args.embedding_dim, pooling=args.pooling, loss=args.loss,
                           lr=args.lr, weight_decay=args.weight_decay, max_epochs_hint=epochs,
                           backbone_kwargs=None if args.product else _width(args))
    trainer = _trainer(epochs)
    start = time.perf_counter()
    trainer.fit(model, datamodule)
    fit_seconds = time.perf_counter() - start
    result = trainer.validate(model, datamodule, verbose=False)[0]
    return {"val/recall@1": result["val/recall@1"], "test_recall@1_first30": _recall(model, datamodule, "test"),
            "train_recall@1": _recall(model, datamodule, "train"), "fit_s": fit_seconds}


def run_fewshot(args: argparse.Namespace) -> dict[str, Any]:
    datamodule = FewShotDataModule(
        data_dir=args.data_dir, image_size=args.image_size, train_ways=args.ways, train_shots=args.shots,
        train_queries=args.queries, eval_ways=5, eval_shots=1, eval_queries=15, train_episodes=args.episodes,
        val_episodes=args.val_episodes, synthetic_classes=args.classes, synthetic_distractors=args.distractors,
    )
    options = dict(backbone=args.backbone, pooling=args.pooling, similarity="cosine", multitask=True,
                   optimizer="adam", lr=args.lr, weight_decay=args.weight_decay, scheduler="cosine",
                   backbone_kwargs=_width(args))
    model = AugmentedFewShot(args.augment, **options) if args.augment != "none" else FewShotClassifier(**options)
    trainer = _trainer(args.epochs)
    start = time.perf_counter()
    trainer.fit(model, datamodule)
    fit_seconds = time.perf_counter() - start
    result = trainer.validate(model, datamodule, verbose=False)[0]
    return {"val/acc": result["val/acc"], "val/acc_ci95": result["val/acc_ci95"], "fit_s": fit_seconds}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    families = parser.add_subparsers(dest="family", required=True)
    retrieval = families.add_parser("retrieval", help="configs/retrieval/ms_synthetic.yaml's recipe")
    retrieval.add_argument("--steps", type=int, default=500, help="training steps (100 batches an epoch)")
    retrieval.add_argument("--loss", choices=("ms", "margin"), default="ms")
    retrieval.add_argument("--backbone", default="conv64f")
    retrieval.add_argument("--pooling", choices=("gap", "gmp", "lse"), default="gmp")
    retrieval.add_argument("--embedding-dim", type=int, default=128)
    retrieval.add_argument("--product", type=int, default=0, help="width of a ProductFeatures layer (0: none)")
    retrieval.add_argument("--lr", type=float, default=0.003)
    retrieval.add_argument("--classes-per-batch", type=int, default=8)
    retrieval.add_argument("--samples-per-class", type=int, default=4)
    retrieval.add_argument("--image-size", type=int, default=96)
    retrieval.add_argument("--distractors", type=int, default=2)
    retrieval.add_argument("--images-per-class", type=int, default=30,
                           help="synthetic images per class (Recall@1 is also scored on the first 30 of each)")
    fewshot = families.add_parser("fewshot", help="configs/quickstart.yaml's recipe")
    fewshot.add_argument("--epochs", type=int, default=5)
    fewshot.add_argument("--episodes", type=int, default=70, help="training episodes per epoch")
    fewshot.add_argument("--val-episodes", type=int, default=150)
    fewshot.add_argument("--ways", type=int, default=10)
    fewshot.add_argument("--shots", type=int, default=3)
    fewshot.add_argument("--queries", type=int, default=1)
    fewshot.add_argument("--backbone", default="conv4")
    fewshot.add_argument("--pooling", choices=("gap", "gmp", "lse"), default="gap")
    fewshot.add_argument("--lr", type=float, default=0.002)
    fewshot.add_argument("--image-size", type=int, default=84)
    fewshot.add_argument("--distractors", type=int, default=3)
    fewshot.add_argument("--augment", choices=("none", "flip", "shift", "flipshift"), default="none",
                         help="a training-time augmentation of the episode images (AugmentedFewShot)")
    for sub in (retrieval, fewshot):
        sub.add_argument("--classes", type=int, default=64, help="synthetic classes (half train, CUB split)")
        sub.add_argument("--weight-decay", type=float, default=5e-4)
        sub.add_argument("--width", type=int, default=0, help="Conv4 / Conv64F channels (0: the published 64)")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--data-dir", default="data")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    L.seed_everything(args.seed, verbose=False)
    result = (run_retrieval if args.family == "retrieval" else run_fewshot)(args)
    print(f"RESULT {vars(args)} " + " ".join(f"{k}={v:.2f}" for k, v in result.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
