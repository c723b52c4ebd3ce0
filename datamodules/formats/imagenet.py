"""ImageNet (ILSVRC 2012) reader: a map-style image data set over one listed split, and its batching.

The layout, the box lookup and the listing: :mod:`fam_lightning.datamodules.formats.imagenet_index`.
By default the whole image is resized to ``S x S`` without cropping, so the boxes stay exact;
``preprocess="center_crop"`` is the published evaluation protocol instead (shorter side to 256,
centre 224 x 224 for ``S = 224``), with the boxes moved, clipped, and dropped when cropped away.
Boxes are scaled by the XML's ``<size>`` (the image the boxes were drawn on), else by the decoded
image's size, and finally clipped to the image, ``[0, S]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .geometry import CROP_RATIO, PREPROCESSING, Box, center_crop_boxes, center_crop_geometry, scale_boxes
from .images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Normalisation,
    decode_rgb,
    load_center_cropped_image,
    load_image,
    load_resized_image,
)
from .imagenet_index import (
    IMAGE_EXTENSIONS,
    SPLITS,
    SYNSET_MAPPING_FILE,
    ImageNetIndex,
    check_imagenet_index,
    read_imagenet_split,
)
from .voc import VOCAnnotation, parse_voc_xml

__all__ = [
    "ImageNetDataset",
    "collate_with_boxes",
    # The names the module fam_lightning.datamodules.imagenet held before the 0.3 layout (it is an alias of this one).
    "Box",
    "CROP_RATIO",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "ImageNetIndex",
    "PREPROCESSING",
    "SPLITS",
    "SYNSET_MAPPING_FILE",
    "VOCAnnotation",
    "center_crop_boxes",
    "center_crop_geometry",
    "check_imagenet_index",
    "decode_rgb",
    "load_center_cropped_image",
    "load_image",
    "load_resized_image",
    "parse_voc_xml",
    "read_imagenet_split",
    "scale_boxes",
]


class ImageNetDataset(Dataset):
    """Images of one split of an ImageNet-layout folder, resized to ``S x S`` (or resized and centre-cropped).

    Items are dicts::

        {"image": float (3, S, S), normalised with mean/std,
         "label": int, position of the wnid in ``classes``,
         "index": int, the item's position in this data set (memory-bank row),
         "boxes": float (n, 4), (x0, y0, x1, y1) in resized pixels, x1/y1
                  exclusive; n >= 0 (only with ``with_boxes``)}

    Batch them with :func:`collate_with_boxes` (boxes vary in number).

    Attributes:
        labels: LongTensor (N,) of every item's label, so samplers never load images.
        classes: The wnids, in label order.
        class_names: Display names (LOC_synset_mapping.txt, else the wnids).
        num_classes: Number of classes (of the label order, i.e. of training).
        split: The split name.
        split_index: The :class:`ImageNetIndex` read.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: int = 224,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        with_boxes: bool = True,
        cache: bool = False,
        boxes_dir: str | Path | None = None,
        split_index: ImageNetIndex | None = None,
        preprocess: str = "resize",
    ) -> None:
        """Index the split; nothing is decoded yet.

        Args:
            root: ImageNet root folder.
            split: "train" or "val".
            image_size: Side ``S`` of the square output images.
            mean: Per-channel normalisation mean (images in [0, 1]).
            std: Per-channel normalisation standard deviation.
            transform: Optional photometric transform of the uint8 (3, S, S)
                image before normalisation (it may return uint8 or float in
                [0, 1]). It must not move pixels: boxes are not updated.
            with_boxes: Read the XML files and return "boxes".
            cache: Keep decoded, resized uint8 images in memory after first
                load (per process: each DataLoader worker has its own cache).
            boxes_dir: Annotation folder (see :func:`read_imagenet_split`).
            split_index: An already read listing of ``root``/``split``, to skip listing.
            preprocess: "resize" (default): the whole image to ``S x S``, boxes
                exact. "center_crop": the published evaluation protocol
                (lemniscate, MoCo): the shorter side resized to
                ``round(S / 0.875)`` (256 for 224), the centred ``S x S`` cropped,
                the boxes moved with it (clipped; a box cropped away is dropped).

        Raises:
            FileNotFoundError: If ``root`` or the split folder is missing.
            ValueError: On a bad split, size, normalisation, layout or XML file.
        """
        super().__init__()
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if preprocess not in PREPROCESSING:
            raise ValueError(f"preprocess must be one of {PREPROCESSING}, got {preprocess!r}")
        self._normalise = Normalisation(mean, std)
        if split_index is None:
            split_index = read_imagenet_split(root, split, boxes_dir, read_boxes=with_boxes)
        self.split_index = split_index
        self.root = Path(root)
        self.split = split
        self.image_size = image_size
        self.preprocess = preprocess
        self.transform = transform
        self.with_boxes = with_boxes
        self.classes: list[str] = list(self.split_index.wnids)
        self.class_names: list[str] = list(self.split_index.class_names)
        self.num_classes: int = len(self.classes)
        self.labels: torch.Tensor = torch.tensor(self.split_index.labels, dtype=torch.long)
        self._cache: list[tuple[torch.Tensor, torch.Tensor] | None] | None = [None] * len(self) if cache else None

    def __len__(self) -> int:
        return len(self.split_index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images of split {self.split!r}")
        index = index % len(self)
        image, boxes = self._load_resized(index)
        if self.transform is not None:
            # Clone so an in-place transform cannot corrupt the cached copy.
            image = self.transform(image.clone())
        item: dict[str, Any] = {"image": self.normalise(image), "label": int(self.labels[index]), "index": index}
        if self.with_boxes:
            item["boxes"] = boxes.clone()
        return item

    def _load_resized(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (3, S, S) image and its (n, 4) boxes in resized pixels, from cache when possible."""
        if self._cache is not None and self._cache[index] is not None:
            return self._cache[index]
        path, size = self.split_index.paths[index], self.image_size
        if self.preprocess == "center_crop":
            resize_size = round(size / CROP_RATIO)
            image, decoded_size = load_center_cropped_image(path, size, resize_size)
            width, height = self.split_index.box_sizes[index] or decoded_size
            boxes = center_crop_boxes(self.split_index.boxes[index], width, height, size, resize_size, decoded_size)
        else:
            image, decoded_size = load_resized_image(path, size)
            width, height = self.split_index.box_sizes[index] or decoded_size
            boxes = scale_boxes(self.split_index.boxes[index], width, height, size)
        if self._cache is not None:
            self._cache[index] = (image, boxes)
        return image, boxes

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """uint8, or float in [0, 1], (3, H, W) -> float normalised with this data set's mean/std."""
        return self._normalise(image)


def collate_with_boxes(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch item dicts whose "boxes" differ in number.

    Tensors of equal shape are stacked, Python numbers become a tensor, and
    "boxes" stays a list::

        {"image": (B, 3, S, S), "label": (B,) long, "index": (B,) long,
         "boxes": [(n_0, 4), ..., (n_{B-1}, 4)] float}

    Lightning moves the list's tensors to the device with the rest.

    Raises:
        ValueError: On an empty list, or items with different keys.
    """
    if not items:
        raise ValueError("cannot collate an empty list of items")
    keys = list(items[0])
    for position, item in enumerate(items):
        if list(item) != keys:
            raise ValueError(f"item {position} has keys {sorted(item)}, but item 0 has {sorted(keys)}")
    batch: dict[str, Any] = {}
    for key in keys:
        values = [item[key] for item in items]
        if key == "boxes":
            batch[key] = [torch.as_tensor(v, dtype=torch.float32).view(-1, 4) for v in values]
        elif isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        else:
            batch[key] = torch.tensor(values)
    return batch
