"""Contrastive training data (NPID, MoCo) over an ImageNet-layout folder (the synthetic one by default).

Training items are augmented views of the training images, each carrying its
data set index (NPID's memory-bank row)::

    two_views=True  (MoCo):  {"view1": (3, S, S), "view2": (3, S, S), "label": int, "index": int}
    two_views=False (NPID):  {"image": (3, S, S), "label": int, "index": int}

The augmentation is MoCo v1 / NPID's (He et al. 2020, Wu et al. 2018), with
MoCo v2's Gaussian blur as an option; see :func:`contrastive_augmentation`.
Views are cropped from the image at its stored resolution, not from the
``S x S`` evaluation resize.

Validation is kNN classification of the val images against a bank of
training embeddings, so ``val_dataloader()`` returns a list of two loaders,
in this order (``dataloader_idx`` in ``validation_step``)::

    0  val images, un-augmented, with boxes (batched by collate_with_boxes):
       {"image": (B, 3, S, S), "label": (B,), "index": (B,), "boxes": [(n_i, 4)] * B}
    1  train images, un-augmented, no boxes, for (re)building the bank:
       {"image": (B, 3, S, S), "label": (B,), "index": (B,)}

Lightning runs loader 0 to its end before loader 1, so a model that rebuilds
its bank from loader 1 must keep the val embeddings until
``on_validation_epoch_end`` (or classify against the bank it keeps while
training). Evaluation images are whole images resized to ``S x S`` without
cropping, so boxes stay exact.

Distributed training: these are plain map-style data sets with default
samplers, so Lightning injects a ``DistributedSampler`` by itself. That
sampler pads every rank to the same count by repeating the first indices: a
few val images (at most world size - 1) are counted twice, and a bank rebuilt
from loader 1 gets those rows twice (the same value written to the same index,
harmless). Each rank sees only its share of loader 1: gather the embeddings
and indices across ranks before filling the bank.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from fam_lightning.seeding import global_seed, mix_seed

from .augmentation import (
    BLUR_SIGMA_AT_224,
    DEFAULT_COLOR_JITTER,
    DEFAULT_CROP_SCALE,
    ContrastiveViews,
    LocalCrops,
    TwoViewTransform,
    contrastive_augmentation,
    local_view_side,
    photometric_steps,
)
from .base import ImageNetSource
from .formats.geometry import PREPROCESSING
from .formats.imagenet import ImageNetDataset, collate_with_boxes
from .sampling.samplers import EpochSeededSampler, fit_progress
from .synthetic.drawing import DEFAULT_DISTRACTORS

__all__ = [
    "ContrastiveDataModule",
    "PROBE_SIZE",
    # the augmentation (augmentation.py), as this module held it before the 0.2 layout
    "BLUR_SIGMA_AT_224",
    "DEFAULT_COLOR_JITTER",
    "DEFAULT_CROP_SCALE",
    "ContrastiveViews",
    "TwoViewTransform",
    "contrastive_augmentation",
]

PROBE_SIZE = 8


class ContrastiveDataModule(ImageNetSource, L.LightningDataModule):
    """Augmented training views and kNN evaluation data from an ImageNet-layout folder.

    With ``root=None`` a synthetic ImageNet-layout data set is written once
    under ``data_dir`` (named by its parameters) and reused afterwards;
    writing is atomic, so DDP processes that race to write it are safe.

    Args:
        root: ImageNet root (``train/<wnid>/*.JPEG``, ``val/<wnid>/*.JPEG``),
            or None for the synthetic default.
        data_dir: Where the synthetic default lives.
        image_size: Side of the square images fed to the model.
        batch_size: Images per batch, training and evaluation. Training drops
            the last incomplete batch (MoCo's queue needs a constant size).
        num_workers: DataLoader worker processes.
        pin_memory: Pin batches for faster host-to-GPU copies.
        two_views: Two views per training image (MoCo) or one (NPID).
        gaussian_blur: Add MoCo v2's Gaussian blur to the augmentation.
        crop_scale, color_jitter, color_jitter_p, grayscale_p: the augmentation's
            strengths (:func:`contrastive_augmentation`; defaults MoCo v1 / NPID's).
        local_crop: None (default): views are random resized crops of the whole
            image (``crop_scale``). A fraction ``f`` of the image side: views are
            :class:`LocalCrops` instead, crops of side ``f`` around one random
            centre, shrunk as the evaluation shrinks the whole image (output side
            ``round(f x image_size)``), so the two views of an image show the same
            part of it at the size the model sees it at evaluation.
        local_crop_offset, local_crop_zoom: How far (fraction of the image side)
            and how much (relative side) each local view may move and zoom.
        local_crop_grid: 0: local views anywhere. ``G``: around the centre of one of ``G x G`` cells
            (:class:`LocalCrops`), the item's ``"instance"`` = ``index x G^2 + cell``: NPID with
            ``refresh_bank`` keeps a memory row per part of an image (``instances_per_image``).
        bank_loader: Return the train-images loader as the second validation
            loader. False for models that keep their bank up to date while
            training (NPID), so no epoch re-reads every training image.
        cache_images: Keep decoded images in memory (per process); for small
            data sets such as the synthetic one, never for real ImageNet.
        boxes_dir: Annotation folder for a real root (e.g.
            ``.../Annotations/CLS-LOC``); default ``root/boxes``.
        seed: Seed of the training order and augmentation: the shuffle of
            epoch ``e`` and every view of it are fixed functions of
            ``(seed_everything, seed, e)``, whatever the number of workers, so
            a resumed run sees exactly the views of the uninterrupted one. Under
            DDP Lightning splits each epoch's shuffled items across ranks.
        synthetic_classes: Classes of the synthetic default.
        synthetic_train_per_class: Training images per class of the synthetic default.
        synthetic_val_per_class: Validation images per class of the synthetic default.
        synthetic_image_size: Stored image side of the synthetic default.
        synthetic_seed: Drawing seed of the synthetic default (kept apart from
            ``seed`` so runs with different seeds share one data set).
        synthetic_distractors: Distractor objects per image of the synthetic
            default (never boxed; see :mod:`fam_lightning.datamodules.synthetic.drawing`).
        verify_images: Decode every image once at setup and report all broken
            ones together (slow on large sets; by default setup only checks
            that every file exists and every box lies inside its image).
        eval_preprocess: How evaluation images (val, and the train images of
            the kNN bank) are sized: "resize" (default) the whole image to
            ``image_size`` squared, boxes exact; "center_crop" the published
            protocol of lemniscate / MoCo, the shorter side resized to
            ``round(image_size / 0.875)`` (256 for 224) and the centre cropped,
            boxes moved with it.
    """

    def __init__(
        self,
        root: str | None = None,
        data_dir: str = "data",
        image_size: int = 224,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        two_views: bool = True,
        gaussian_blur: bool = False,
        crop_scale: tuple[float, float] = DEFAULT_CROP_SCALE,
        color_jitter: tuple[float, float, float, float] = DEFAULT_COLOR_JITTER,
        color_jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        local_crop: float | None = None,
        local_crop_offset: float = 0.0625,
        local_crop_zoom: float = 0.15,
        local_crop_grid: int = 0,
        bank_loader: bool = True,
        cache_images: bool = False,
        boxes_dir: str | None = None,
        seed: int = 0,
        synthetic_classes: int = 10,
        synthetic_train_per_class: int = 60,
        synthetic_val_per_class: int = 20,
        synthetic_image_size: int = 96,
        synthetic_seed: int = 0,
        synthetic_distractors: int = DEFAULT_DISTRACTORS,
        verify_images: bool = False,
        eval_preprocess: str = "resize",
    ) -> None:
        super().__init__()
        if eval_preprocess not in PREPROCESSING:
            raise ValueError(f"eval_preprocess must be one of {PREPROCESSING}, got {eval_preprocess!r}")
        if image_size < 1 or batch_size < 1:
            raise ValueError(f"image_size and batch_size must be >= 1, got {image_size} and {batch_size}")
        self.save_hyperparameters()
        self._init_source()
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.two_views = two_views
        self.gaussian_blur = gaussian_blur
        self.augmentation = {
            "crop_scale": tuple(crop_scale), "color_jitter": tuple(color_jitter),
            "color_jitter_p": color_jitter_p, "grayscale_p": grayscale_p,
        }
        if local_crop_grid and local_crop is None:
            raise ValueError(f"local_crop_grid={local_crop_grid} places local views: it needs local_crop")
        self.local_crop = None if local_crop is None else (float(local_crop), float(local_crop_offset),
                                                            float(local_crop_zoom), int(local_crop_grid))
        self._augment()  # bad values fail here
        self.bank_loader = bank_loader
        self.cache_images = cache_images
        self.seed = seed
        self.eval_preprocess = eval_preprocess
        self._datasets: dict[str, Dataset] = {}

    @property
    def train_view_size(self) -> int:
        """Side in pixels of the training views: ``image_size``, or the local crops' smaller side."""
        return self.image_size if self.local_crop is None else local_view_side(self.local_crop[0], self.image_size)

    @property
    def instances_per_image(self) -> int:
        """Parts of a training image that its views come from, each its own ``"instance"`` (1: the image)."""
        return 1 if self.local_crop is None else max(1, self.local_crop[3]) ** 2

    @property
    def num_train_images(self) -> int:
        """Training images (the memory bank's size); readable before ``setup``.

        LightningCLI can link it to the model with ``apply_on="instantiate"``.
        """
        return len(self.split_index("train"))

    @property
    def num_classes(self) -> int:
        """Training classes (the label range of every loader); readable before ``setup``."""
        return len(self.split_index("train").wnids)

    @property
    def train_labels(self) -> torch.Tensor:
        """LongTensor (num_train_images,): the label of every memory-bank row."""
        return torch.tensor(self.split_index("train").labels, dtype=torch.long)

    def setup(self, stage: str | None = None) -> None:
        """Build the data sets of ``stage`` (all of them for None).

        Raises:
            ValueError: If a training batch is larger than the training set
                (with ``drop_last`` there would be no batch at all).
        """
        if stage in (None, "fit"):
            self._train_views()
            if self.batch_size > self.num_train_images:
                raise ValueError(
                    f"batch_size={self.batch_size} exceeds the {self.num_train_images} training images of "
                    f"{self.data_root}; with drop_last=True there would be no training batch"
                )
        if stage in (None, "fit", "validate", "test"):
            self._eval_set("val")
            if self.bank_loader:
                self._eval_set("train")

    def _train_views(self) -> ContrastiveViews:
        if "views" not in self._datasets:
            self._datasets["views"] = ContrastiveViews(
                self.split_index("train"), self._augment(), two_views=self.two_views, cache=self.cache_images
            )
        return self._datasets["views"]

    def _augment(self) -> Callable[[torch.Tensor], Any]:
        """The training views' transform: random resized crops, or local crops around one centre."""
        if self.local_crop is None:
            return contrastive_augmentation(
                self.image_size, self.mean, self.std, self.gaussian_blur, **self.augmentation
            )
        fraction, offset, zoom, grid = self.local_crop
        colour = {k: v for k, v in self.augmentation.items() if k != "crop_scale"}
        steps = photometric_steps(self.train_view_size, self.mean, self.std, self.gaussian_blur, **colour)
        return LocalCrops(fraction, self.image_size, v2.Compose(steps), 2 if self.two_views else 1, offset, zoom,
                          grid)

    def _eval_set(self, split: str) -> ImageNetDataset:
        if split not in self._datasets:
            self._datasets[split] = ImageNetDataset(
                self.data_root,
                split=split,
                image_size=self.image_size,
                mean=self.mean,
                std=self.std,
                with_boxes=split == "val",
                cache=self.cache_images,
                split_index=self.split_index(split),
                preprocess=self.eval_preprocess,
            )
        return self._datasets[split]

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        sampler = None
        if train:
            sampler = EpochSeededSampler(
                len(dataset), seed=mix_seed(global_seed(), self.seed), shuffle=True, progress=self._progress
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            # Its own generator: the worker base seed must not come from (and shift) the global RNG.
            generator=torch.Generator().manual_seed(self.seed) if train else None,
            drop_last=train,
            collate_fn=None if train else collate_with_boxes,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def _progress(self) -> tuple[int, int]:
        return fit_progress(self.trainer, items_per_batch=self.batch_size)

    def train_dataloader(self) -> DataLoader:
        """Shuffled augmented views of the training images, last incomplete batch dropped."""
        return self._loader(self._train_views(), train=True)

    def val_dataloader(self) -> list[DataLoader]:
        """``[val images with boxes, train images for the bank]`` (the second only with ``bank_loader``)."""
        loaders = [self._loader(self._eval_set("val"), train=False)]
        if self.bank_loader:
            loaders.append(self._loader(self._eval_set("train"), train=False))
        return loaders

    def test_dataloader(self) -> list[DataLoader]:
        """The validation loaders: ImageNet's labelled evaluation set is val."""
        return self.val_dataloader()

    def train_images(self, indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Un-augmented training images by data set index (memory-bank row), e.g. kNN neighbours to show.

        Args:
            indices: (B,) data set indices of training images.

        Returns:
            float (B, 3, S, S) on the CPU, normalised like every loader's images.
        """
        dataset = self._eval_set("train")
        rows = torch.as_tensor(indices, dtype=torch.long).flatten().tolist()
        if not rows:
            return torch.empty(0, 3, self.image_size, self.image_size)
        return torch.stack([dataset[r]["image"] for r in rows])

    def probe_batch(self) -> dict[str, Any]:
        """A fixed batch of ``PROBE_SIZE`` val images with boxes, for visualisation callbacks.

        The images are evenly spaced through the class-major val set, so they
        span the classes; the same on every call, with or without ``setup``.
        Keys as in val loader 0.
        """
        dataset = self._eval_set("val")
        count = min(PROBE_SIZE, len(dataset))
        rows = torch.linspace(0, len(dataset) - 1, count).round().long().tolist()
        return collate_with_boxes([dataset[r] for r in rows])
