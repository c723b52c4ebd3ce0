"""Metric-learning retrieval data: CUB retrieval split (first half of the classes train, rest test).

Training batches are class-balanced (M classes x K images). Validation and
test run two passes over the test split: loader 0 embeds every image (the
gallery, and Recall@K / MAP@R), loader 1 re-reads a fixed subset of queries
whose top-1 retrievals are explained. Both eval loaders shard the data across
DDP ranks without padding, so no image is counted twice.

Lightning cannot inject its DistributedSampler into a batch sampler: configs
using this DataModule set ``trainer.use_distributed_sampler: false`` (the
samplers here handle ranks themselves).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from fam_lightning.seeding import global_seed, mix_seed

from .base import CUBSource
from .formats.cub import CUBDataset
from .sampling.samplers import ClassBalancedBatchSampler, ShardSampler, fit_progress
from .synthetic.drawing import DEFAULT_DISTRACTORS


class IndexedDataset(Dataset):
    """Adds ``"index"`` (the item's position) to every item dict, and optional flips / crops for training.

    A key may be ``(index, item_seed)`` (``ClassBalancedBatchSampler(item_seeds=True)``): the flip and
    the crop are then drawn from the seed, so a resumed run sees what the uninterrupted one saw.
    ``crop_scale=(lo, hi)``: a random resized crop (area fraction in ``[lo, hi]``, aspect ratio in
    [3/4, 4/3], as torchvision's ``RandomResizedCrop``), resized back to the image's side (boxes follow,
    clipped to the crop).
    """

    def __init__(self, dataset: CUBDataset, flip: bool = False,
                 crop_scale: tuple[float, float] | None = None) -> None:
        if crop_scale is not None and not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must be (lo, hi) with 0 < lo <= hi <= 1, got {tuple(crop_scale)}")
        self.dataset = dataset
        self.flip = flip
        self.crop_scale = None if crop_scale is None else (float(crop_scale[0]), float(crop_scale[1]))
        self.labels = dataset.labels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, item_seed = key if isinstance(key, tuple) else (key, None)
        item = dict(self.dataset[index])
        item["index"] = index
        generator = None if item_seed is None else torch.Generator().manual_seed(item_seed)
        if self.flip and torch.rand((), generator=generator) < 0.5:
            width = item["image"].shape[-1]
            item["image"] = item["image"].flip(-1)
            x0, y0, x1, y1 = item["box"].unbind()
            item["box"] = torch.stack([width - x1, y0, width - x0, y1])
        if self.crop_scale is not None:
            item["image"], item["box"] = random_resized_crop(item["image"], item["box"], self.crop_scale, generator)
        return item


def random_resized_crop(image: Tensor, box: Tensor, scale: tuple[float, float],
                        generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """torchvision's random resized crop of ``image`` (3, H, W) (area fraction in ``scale``, aspect ratio in
    [3/4, 4/3]) resized back to (H, W); ``box`` (x0, y0, x1, y1) moved with it and clipped to the crop. The crop
    is drawn from ``generator`` when given (seeded items), else from the global RNG."""
    height, width = image.shape[-2:]
    with torch.random.fork_rng(devices=[], enabled=generator is not None):
        if generator is not None:
            torch.manual_seed(int(torch.randint(2**62, (), generator=generator)))
        top, left, crop_h, crop_w = RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3])
    boxes = tv_tensors.BoundingBoxes(box.unsqueeze(0), format="XYXY", canvas_size=(height, width))
    moved = TF.resized_crop(boxes, top, left, crop_h, crop_w, [height, width])
    resized = TF.resized_crop(image, top, left, crop_h, crop_w, [height, width], antialias=True)
    return resized, moved.as_subclass(Tensor)[0].to(box.dtype)


class SubsetDataset(Dataset):
    """Items ``indices`` of a dataset, keeping their original ``"index"``."""

    def __init__(self, dataset: IndexedDataset, indices: torch.Tensor) -> None:
        self.dataset = dataset
        self.indices = indices.tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.dataset[self.indices[i]]


class RetrievalDataModule(CUBSource, L.LightningDataModule):
    """CUB-layout retrieval data (the synthetic CUB-layout set by default).

    Args:
        root: CUB-200-2011 root, or None for the synthetic default under ``data_dir``.
        data_dir: Where the synthetic default lives.
        image_size: Side of the square images.
        classes_per_batch: M classes per training batch.
        samples_per_class: K images per class per training batch.
        train_batches: Training batches per epoch (per rank).
        batch_size: Evaluation batch size.
        explain_queries: Test images whose top-1 retrieval is explained per
            evaluation (a fixed seeded subset); None explains every image.
        flip: Random horizontal flips in training (boxes follow).
        crop_scale: Random resized crops in training, ``(lo, hi)`` area fractions (e.g. ``[0.35, 1.0]``);
            None (the default): the whole image.
        num_workers, pin_memory, cache_images, seed: as in FewShotDataModule.
        synthetic_*: parameters of the synthetic default.
        verify_images: Decode every image once at setup and report all broken
            ones together (slow on large sets; by default setup only checks
            that every file exists and every box lies inside its image).
    """

    def __init__(
        self,
        root: str | None = None,
        data_dir: str = "data",
        image_size: int = 84,
        classes_per_batch: int = 8,
        samples_per_class: int = 4,
        train_batches: int = 50,
        batch_size: int = 64,
        explain_queries: int | None = 256,
        flip: bool = True,
        crop_scale: tuple[float, float] | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        cache_images: bool = True,
        seed: int = 0,
        synthetic_classes: int = 64,
        synthetic_images_per_class: int = 30,
        synthetic_image_size: int = 96,
        synthetic_seed: int = 0,
        synthetic_distractors: int = DEFAULT_DISTRACTORS,
        verify_images: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.image_size = image_size
        self._init_source()
        self._sets: dict[str, IndexedDataset] = {}

    @property
    def num_train_classes(self) -> int:
        """Classes of the training half (the Margin loss's per-class beta)."""
        return self._split("train").dataset.num_classes

    def setup(self, stage: str | None = None) -> None:
        self._split("train")
        self._split("test")
        if self.hparams.classes_per_batch > self._split("train").dataset.num_classes:
            raise ValueError(
                f"classes_per_batch={self.hparams.classes_per_batch} but the training split has only "
                f"{self._split('train').dataset.num_classes} classes"
            )

    def _split(self, name: str) -> IndexedDataset:
        if name not in self._sets:
            images = CUBDataset(
                self.data_root, split=name, protocol="retrieval", image_size=self.image_size,
                mean=self.mean, std=self.std, cache=self.hparams.cache_images, metadata=self.metadata,
            )
            train = name == "train"
            self._sets[name] = IndexedDataset(images, flip=self.hparams.flip and train,
                                              crop_scale=self.hparams.crop_scale if train else None)
        return self._sets[name]

    def train_dataloader(self) -> DataLoader:
        train = self._split("train")
        sampler = ClassBalancedBatchSampler(
            train.labels, self.hparams.classes_per_batch, self.hparams.samples_per_class,
            self.hparams.train_batches, seed=mix_seed(global_seed(), self.hparams.seed),
            progress=self._progress, item_seeds=True,
        )
        # Its own generator: the worker base seed must not come from (and shift) the global RNG.
        return DataLoader(train, batch_sampler=sampler, num_workers=self.hparams.num_workers,
                          generator=torch.Generator().manual_seed(self.hparams.seed),
                          pin_memory=self.hparams.pin_memory, persistent_workers=self.hparams.num_workers > 0)

    def _progress(self) -> tuple[int, int]:
        return fit_progress(self.trainer, all_ranks=False)  # this sampler splits ranks itself

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=self.hparams.batch_size, sampler=ShardSampler(len(dataset)),
                          num_workers=self.hparams.num_workers, pin_memory=self.hparams.pin_memory)

    def query_indices(self) -> torch.Tensor:
        """The fixed subset of test images whose retrievals are explained."""
        count = len(self._split("test"))
        order = torch.randperm(count, generator=torch.Generator().manual_seed(self.hparams.seed + 3))
        limit = self.hparams.explain_queries
        return order if limit is None else order[: min(limit, count)].sort().values

    def val_dataloader(self) -> list[DataLoader]:
        """[0] every test image (gallery + Recall@K); [1] the queries to explain."""
        test = self._split("test")
        return [self._eval_loader(test), self._eval_loader(SubsetDataset(test, self.query_indices()))]

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()

    def images_at(self, indices: torch.Tensor) -> torch.Tensor:
        """(len(indices), 3, S, S) test images by index (for showing retrieved images)."""
        test = self._split("test").dataset
        return torch.stack([test[i]["image"] for i in indices.tolist()])

    def probe_batch(self) -> dict[str, Any]:
        """A fixed batch of 8 test queries for visualisation callbacks."""
        test = self._split("test")
        items = [test[i] for i in self.query_indices()[:8].tolist()]
        return torch.utils.data.default_collate(items)
