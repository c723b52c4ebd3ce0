"""CUB-200-2011 reader: a map-style image data set over one class split of a CUB-layout folder.

The folder layout and its metadata: :mod:`fam_lightning.datamodules.formats.cub_metadata`; the class
splits: :mod:`fam_lightning.datamodules.splits`.

Boxes come out as ``(x0, y0, x1, y1)`` in pixels of the *resized* image, with
``x1`` and ``y1`` exclusive (the box covers ``map[y0:y1, x0:x1]``). The whole
image is resized to ``S x S`` without cropping, so the boxes stay exact.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..splits import FEWSHOT_SPLITS, RETRIEVAL_SPLITS, fewshot_class_split, retrieval_class_split
from .cub_metadata import CUB_FILES, CUBMetadata, check_cub_data, read_cub_metadata
from .geometry import scale_box_xywh
from .images import IMAGENET_MEAN, IMAGENET_STD, WIDE_GREY_MODES, Normalisation, decode_rgb, load_resized_image

__all__ = [
    "CLASSIFICATION_SPLITS",
    "CUBDataset",
    "PROTOCOLS",
    "display_class_name",
    # The names the module fam_lightning.datamodules.cub held before the 0.3 layout (it is an alias of this one).
    "CUB_FILES",
    "CUBMetadata",
    "FEWSHOT_SPLITS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RETRIEVAL_SPLITS",
    "WIDE_GREY_MODES",
    "check_cub_data",
    "decode_rgb",
    "fewshot_class_split",
    "load_resized_image",
    "read_cub_metadata",
    "retrieval_class_split",
    "scale_box_xywh",
]

CLASSIFICATION_SPLITS: tuple[str, ...] = ("train", "test")
PROTOCOLS: tuple[str, ...] = ("fewshot", "retrieval", "classification")

# CUB class names carry their id as a prefix ("001.Black_footed_Albatross").
_CLASS_PREFIX = re.compile(r"^\d+\.")


def display_class_name(name: str) -> str:
    """Drop CUB's numeric prefix: "001.Black_footed_Albatross" -> "Black_footed_Albatross"."""
    return _CLASS_PREFIX.sub("", name, count=1)


class CUBDataset(Dataset):
    """Images of one class split of a CUB-layout folder, resized to ``S x S``.

    Items are dicts::

        {"image": float (3, S, S), normalised with mean/std,
         "label": int, index of the class in this split's sorted class list,
         "box":   float (4,), (x0, y0, x1, y1) in resized pixels, x1/y1 exclusive}

    Attributes:
        labels: LongTensor (N,) of every item's label, so samplers never load images.
        classes: Display names of the split's classes (CUB's "NNN." prefix dropped).
        class_ids: CUB class ids of the split, ascending (label i is class_ids[i]).
        num_classes: Number of classes in the split.
        split: The split name as given.
        image_paths: Absolute path of every item's image.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "base",
        protocol: str = "fewshot",
        image_size: int = 84,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        cache: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        metadata: CUBMetadata | None = None,
    ) -> None:
        """Select the split's images; nothing is decoded yet.

        Args:
            root: CUB root folder.
            split: Few-shot: "base"/"train", "val", "novel"/"test". Retrieval:
                "train", "test" (class halves). Classification: "train",
                "test" (CUB's own train_test_split.txt, all classes).
            protocol: "fewshot", "retrieval" or "classification".
            image_size: Side ``S`` of the square output images.
            mean: Per-channel normalisation mean (images in [0, 1]).
            std: Per-channel normalisation standard deviation.
            cache: Keep decoded, resized uint8 images in memory after first
                load (per process: each DataLoader worker has its own cache).
            transform: Optional photometric transform applied to the uint8
                (3, S, S) image before normalisation (e.g. ColorJitter). It
                must not move pixels: boxes are not updated. It may return
                uint8 or float in [0, 1].
            metadata: Already parsed metadata of ``root``, to skip re-reading.

        Raises:
            FileNotFoundError: If ``root``, a text file or ``root/images`` is missing.
            ValueError: On a bad split, protocol, image size or normalisation.
        """
        super().__init__()
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self._normalise = Normalisation(mean, std)
        self.root = Path(root)
        self.split = split
        self.protocol = protocol
        self.image_size = image_size
        self.transform = transform
        meta = metadata if metadata is not None else read_cub_metadata(self.root)
        if not (self.root / "images").is_dir():
            raise FileNotFoundError(f"CUB image folder {self.root / 'images'} is missing")
        self._select(meta)
        self._cache: list[tuple[torch.Tensor, torch.Tensor] | None] | None = (
            [None] * len(self.image_paths) if cache else None
        )

    def _select(self, meta: CUBMetadata) -> None:
        """Pick the split's images and number its classes 0..num_classes-1."""
        if self.protocol in ("fewshot", "retrieval"):
            split_fn = fewshot_class_split if self.protocol == "fewshot" else retrieval_class_split
            class_ids = split_fn(meta.sorted_class_ids, self.split)
            chosen = set(class_ids)
            keep = [c in chosen for c in meta.class_ids]
        elif self.protocol == "classification":
            if self.split not in CLASSIFICATION_SPLITS:
                raise ValueError(
                    f"unknown classification split {self.split!r}; expected one of {CLASSIFICATION_SPLITS}"
                )
            class_ids = meta.sorted_class_ids
            keep = [flag == (self.split == "train") for flag in meta.is_train]
        else:
            raise ValueError(f"unknown protocol {self.protocol!r}; expected one of {PROTOCOLS}")
        label_of = {c: i for i, c in enumerate(class_ids)}
        rows = [i for i, k in enumerate(keep) if k]
        self.class_ids: list[int] = class_ids
        self.classes: list[str] = [display_class_name(meta.class_names[c]) for c in class_ids]
        self.num_classes: int = len(class_ids)
        self.image_paths: list[Path] = [meta.root / "images" / meta.paths[i] for i in rows]
        self.labels: torch.Tensor = torch.tensor([label_of[meta.class_ids[i]] for i in rows], dtype=torch.long)
        self._boxes_xywh = torch.tensor([meta.boxes_xywh[i] for i in rows], dtype=torch.float32).view(-1, 4)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images of split {self.split!r}")
        index = index % len(self)
        image, box = self._load_resized(index)
        if self.transform is not None:
            # Clone so an in-place transform cannot corrupt the cached copy.
            image = self.transform(image.clone())
        return {"image": self._normalise(image), "label": int(self.labels[index]), "box": box.clone()}

    def _load_resized(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (3, S, S) image and its box in resized pixels, from cache when possible."""
        if self._cache is not None and self._cache[index] is not None:
            return self._cache[index]
        image, (width, height) = load_resized_image(self.image_paths[index], self.image_size)
        box = scale_box_xywh(self._boxes_xywh[index], width, height, self.image_size)
        if self._cache is not None:
            self._cache[index] = (image, box)
        return image, box
