"""ImageNet (ILSVRC 2012) reader: class folders, PASCAL-VOC XML boxes, a map-style image data set.

The folder layout is the usual one, with the validation images re-organised
into class folders as for training (e.g. by ILSVRC's ``LOC_val_solution.csv``
or the common ``valprep.sh``)::

    root/
      train/<wnid>/<stem>.JPEG        e.g. train/n01440764/n01440764_10026.JPEG
      val/<wnid>/<stem>.JPEG          e.g. val/n01440764/ILSVRC2012_val_00000293.JPEG
      boxes/<split>/<wnid>/<stem>.xml optional PASCAL-VOC boxes (see below)
      LOC_synset_mapping.txt          optional "<wnid> <name>" lines: display names

Labels are positions in the sorted list of wnids (class folder names) of the
training split, so train and val agree; image files (``.JPEG``, ``.jpeg``,
``.jpg``, ``.png``, any case) are taken in sorted file-name order per class.

Boxes: one PASCAL-VOC XML file per image, looked up in this order (the first
hit wins; an image without one has no boxes)::

    root/<split>/<wnid>/<stem>.xml        beside the image
    <boxes_dir>/<split>/<wnid>/<stem>.xml  (ILSVRC's Annotations/CLS-LOC/train)
    <boxes_dir>/<split>/<stem>.xml         (ILSVRC's flat Annotations/CLS-LOC/val)

``boxes_dir`` defaults to ``root/boxes``; pass ``.../Annotations/CLS-LOC`` for
the annotations as ILSVRC ships them. Every ``<object>`` of the file counts
(ILSVRC lists only objects of the image's class). VOC corners are 1-based and
inclusive: ``xmin = 1`` is the first pixel column and ``xmax`` the last one
covered. They are converted to ``(x0, y0, x1, y1)`` 0-based with exclusive
ends, ``x0 = xmin - 1``, ``x1 = xmax`` (so the width is ``xmax - xmin + 1``),
then scaled like the image: by default the whole image is resized to
``S x S`` without cropping, so the boxes stay exact; ``preprocess="center_crop"``
is the published evaluation protocol instead (shorter side to 256, centre
224 x 224 for ``S = 224``), with the boxes moved, clipped, and dropped when
cropped away. The scale uses the XML's ``<size>`` (the
image the boxes were drawn on), which keeps boxes right for copies of ImageNet
stored pre-resized; the decoded image's size is used when ``<size>`` is absent.
Boxes are finally clipped to the image, ``[0, S]``.
"""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .cub import IMAGENET_MEAN, IMAGENET_STD, decode_rgb, load_resized_image

from . import checks

SPLITS: tuple[str, ...] = ("train", "val")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpeg", ".jpg", ".png")
SYNSET_MAPPING_FILE = "LOC_synset_mapping.txt"

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class VOCAnnotation:
    """What a PASCAL-VOC XML file says about one image.

    Attributes:
        path: The XML file.
        size: ``(width, height)`` from ``<size>``, or None when absent or zero.
        boxes: ``(x0, y0, x1, y1)`` per ``<object>``, 0-based, exclusive ends,
            in the pixels of the annotated image (not clipped).
        names: ``<name>`` of each object ("" when absent).
    """

    path: Path
    size: tuple[int, int] | None
    boxes: list[Box]
    names: list[str]


@dataclass(frozen=True)
class ImageNetIndex:
    """One split of an ImageNet-layout folder, without decoding any image.

    All per-image lists share one order: sorted wnid, then sorted file name.

    Attributes:
        root: The ImageNet root folder.
        split: "train" or "val".
        wnids: The label order: ``labels[i]`` indexes this list (sorted).
        class_names: Display name per wnid (LOC_synset_mapping.txt, else the wnid).
        paths: Absolute path of every image.
        labels: Label of every image.
        boxes: Boxes of every image, 0-based exclusive, annotated-image pixels
            (empty lists when boxes were not read or no XML file was found).
        box_sizes: ``(width, height)`` of the annotated image from the XML
            ``<size>``, or None.
        box_files: The XML file of every image, or None.
    """

    root: Path
    split: str
    wnids: list[str]
    class_names: list[str]
    paths: list[Path]
    labels: list[int]
    boxes: list[list[Box]]
    box_sizes: list[tuple[int, int] | None]
    box_files: list[Path | None]

    def __len__(self) -> int:
        return len(self.paths)


def parse_voc_xml(path: str | Path) -> VOCAnnotation:
    """Parse a PASCAL-VOC annotation file.

    VOC's 1-based inclusive corners become 0-based exclusive ones:
    ``(xmin - 1, ymin - 1, xmax, ymax)``.

    Args:
        path: The XML file.

    Returns:
        The image size and every object's box.

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: If the file is not well-formed XML, not an
            ``<annotation>``, or an object's ``<bndbox>`` lacks a corner, holds
            a non-number, or has ``xmax < xmin`` or ``ymax < ymin``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VOC annotation file {path} is missing")
    try:
        tree = ET.parse(path)
    except ET.ParseError as err:
        raise ValueError(f"malformed VOC annotation file {path}: {err}") from err
    annotation = tree.getroot()
    if annotation.tag != "annotation":
        raise ValueError(f"VOC annotation file {path}: root element is <{annotation.tag}>, expected <annotation>")
    boxes, names = [], []
    for number, obj in enumerate(annotation.iter("object"), start=1):
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise ValueError(f"VOC annotation file {path}: object {number} has no <bndbox>")
        corners = (_number(bndbox, tag, path, f"object {number}") for tag in ("xmin", "ymin", "xmax", "ymax"))
        xmin, ymin, xmax, ymax = corners
        if xmax < xmin or ymax < ymin:
            raise ValueError(
                f"VOC annotation file {path}: object {number} has xmax < xmin or ymax < ymin "
                f"(xmin={xmin:g}, ymin={ymin:g}, xmax={xmax:g}, ymax={ymax:g})"
            )
        boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))
        names.append((obj.findtext("name") or "").strip())
    return VOCAnnotation(path=path, size=_voc_size(annotation, path), boxes=boxes, names=names)


def _number(parent: ET.Element, tag: str, path: Path, where: str) -> float:
    text = parent.findtext(tag)
    if text is None:
        raise ValueError(f"VOC annotation file {path}: {where} has no <{tag}>")
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"VOC annotation file {path}: {where} <{tag}> is not a number: {text.strip()!r}") from None


def _voc_size(annotation: ET.Element, path: Path) -> tuple[int, int] | None:
    size = annotation.find("size")
    if size is None or size.find("width") is None or size.find("height") is None:
        return None
    width, height = (_number(size, tag, path, "<size>") for tag in ("width", "height"))
    # Some tools write 0 for an unknown size: fall back to the decoded image then.
    return (int(width), int(height)) if width > 0 and height > 0 else None


def read_imagenet_split(
    root: str | Path,
    split: str = "train",
    boxes_dir: str | Path | None = None,
    wnids: Sequence[str] | None = None,
    read_boxes: bool = True,
) -> ImageNetIndex:
    """List one split of an ImageNet-layout folder and parse its boxes.

    Args:
        root: The root folder holding ``train/`` and ``val/``.
        split: "train" or "val".
        boxes_dir: Folder with per-split annotation folders (see the module
            docstring); default ``root/boxes``.
        wnids: The label order. Default: the sorted class folders of
            ``root/train`` (so val labels match train labels, even when val
            lacks a class); ``train/`` must then exist. Every class folder of
            the split must be one of them.
        read_boxes: Parse the XML files. False only lists images (fast, for
            training without boxes).

    Returns:
        The index of the split.

    Raises:
        FileNotFoundError: If ``root`` or the split folder is missing.
        ValueError: On an unknown split, a split folder holding images directly
            (the flat ILSVRC val layout), a class folder with no images, a
            class folder not among ``wnids``, or a malformed XML file.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown ImageNet split {split!r}; expected one of {list(SPLITS)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"ImageNet root {root} does not exist or is not a folder; it must contain train/<wnid>/*.JPEG "
            "and val/<wnid>/*.JPEG"
        )
    split_dir = root / split
    folders = _class_folders(split_dir)
    label_order = list(wnids) if wnids is not None else _class_folders(root / "train")
    label_of = {wnid: i for i, wnid in enumerate(label_order)}
    unknown = [f for f in folders if f not in label_of]
    if unknown:
        raise ValueError(
            f"class folders {unknown[:5]} of {split_dir} are not among the {len(label_order)} training classes "
            f"(the class folders of {root / 'train'}); labels would not match"
        )
    annotations = Path(boxes_dir) if boxes_dir is not None else root / "boxes"
    paths, labels, boxes, sizes, files = [], [], [], [], []
    # the flat annotation folder (ILSVRC val) is listed once, not once per class: O(files), not O(classes x files)
    flat = (annotations / split, _xml_stems(annotations / split)) if read_boxes else None
    for wnid in folders:
        images, beside = _list_class_folder(split_dir / wnid)
        xml_dirs = [(split_dir / wnid, beside)]
        if read_boxes:
            xml_dirs += [(annotations / split / wnid, _xml_stems(annotations / split / wnid)), flat]
        for image in images:
            xml = _find_xml(image.stem, xml_dirs) if read_boxes else None
            parsed = parse_voc_xml(xml) if xml is not None else None
            paths.append(image)
            labels.append(label_of[wnid])
            boxes.append(parsed.boxes if parsed is not None else [])
            sizes.append(parsed.size if parsed is not None else None)
            files.append(xml)
    return ImageNetIndex(
        root=root,
        split=split,
        wnids=label_order,
        class_names=_class_names(root, label_order),
        paths=paths,
        labels=labels,
        boxes=boxes,
        box_sizes=sizes,
        box_files=files,
    )


def check_imagenet_index(index: ImageNetIndex, verify_images: bool = False) -> ImageNetIndex:
    """Check a listed split before training; every problem of a kind is reported in one message.

    Every image must exist (one stat each). Images with boxes: the image size
    is read from the file header (no decode); a VOC ``<size>`` whose aspect
    ratio contradicts it warns; boxes are checked against the annotated size
    (``<size>``, else the header's): partly outside is clipped (one warning),
    no area inside is an error naming the XML file and object. With
    ``verify_images`` every image is also decoded once.

    Returns:
        ``index`` with the clipped boxes.

    Raises:
        FileNotFoundError: Listing the missing images.
        ValueError: Listing unreadable images or boxes outside their image.
    """
    what = f"images of {index.root / index.split}"
    checks.check_files_exist(index.paths, what)
    boxed = [i for i, boxes in enumerate(index.boxes) if boxes]
    if boxed:
        header = checks.read_image_sizes([index.paths[i] for i in boxed], f"boxed {what}")
        declared = [index.box_sizes[i] for i in boxed]
        sources = [str(index.box_files[i]) for i in boxed]
        checks.check_aspect_ratios(declared, header, sources, f"the boxes of {index.root / index.split}")
        reference = [size or real for size, real in zip(declared, header)]
        clipped = checks.check_boxes([index.boxes[i] for i in boxed], reference, sources, f"{index.root / index.split}")
        boxes = list(index.boxes)
        for i, kept in zip(boxed, clipped):
            boxes[i] = kept
        index = dataclasses.replace(index, boxes=boxes)
    if verify_images:
        checks.verify_images(index.paths, what)
    return index


def _class_folders(split_dir: Path) -> list[str]:
    """Sorted class folder names of a split folder (hidden entries skipped)."""
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"ImageNet split folder {split_dir} is missing; expected {split_dir.name}/<wnid>/*.JPEG under the root"
        )
    entries = [e for e in os.scandir(split_dir) if not e.name.startswith(".")]
    loose = [e.name for e in entries if e.is_file() and _is_image(e.name)]
    if loose:
        raise ValueError(
            f"{split_dir} holds images directly (e.g. {sorted(loose)[0]}): the flat ILSVRC val layout is not "
            f"supported; move each image into {split_dir.name}/<wnid>/ (e.g. with LOC_val_solution.csv)"
        )
    folders = sorted(e.name for e in entries if e.is_dir())
    if not folders:
        raise ValueError(f"ImageNet split folder {split_dir} has no class folders; expected <wnid>/*.JPEG inside")
    return folders


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _list_class_folder(folder: Path) -> tuple[list[Path], set[str]]:
    """Sorted image paths of a class folder, and the stems of the XML files beside them."""
    names = sorted(e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))
    images = [folder / n for n in names if _is_image(n)]
    if not images:
        raise ValueError(f"class folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)}, any case)")
    return images, {n[:-4] for n in names if n.lower().endswith(".xml")}


def _xml_stems(folder: Path) -> set[str]:
    """Stems of the XML files in ``folder`` (one listing per folder, not one stat per image)."""
    if not folder.is_dir():
        return set()
    return {e.name[:-4] for e in os.scandir(folder) if e.name.lower().endswith(".xml") and e.is_file()}


def _find_xml(stem: str, xml_dirs: list[tuple[Path, set[str]]]) -> Path | None:
    for folder, stems in xml_dirs:
        if stem in stems:
            return folder / f"{stem}.xml"
    return None


def _class_names(root: Path, wnids: list[str]) -> list[str]:
    """Display names from ``LOC_synset_mapping.txt`` when present, else the wnids."""
    path = root / SYNSET_MAPPING_FILE
    if not path.is_file():
        return list(wnids)
    names: dict[str, str] = {}
    with path.open(encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.split(maxsplit=1)
            if len(fields) != 2:
                raise ValueError(f"{path}, line {line_number}: expected '<wnid> <name>', got {line.rstrip()!r}")
            names[fields[0]] = fields[1].strip()
    return [names.get(w, w) for w in wnids]


def load_image(path: Path) -> torch.Tensor:
    """Decode an image as RGB at its own size.

    Returns:
        uint8 (3, H, W).

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: If the file cannot be decoded (corrupt, truncated, not an image).
    """
    rgb = decode_rgb(path)
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def scale_boxes(boxes: Sequence[Box], width: int, height: int, size: int) -> torch.Tensor:
    """Boxes in pixels of a ``width x height`` image -> pixels of its ``size x size`` resize, clipped.

    Returns:
        float (n, 4), ``(x0, y0, x1, y1)``, exclusive ends, within ``[0, size]``.
    """
    out = torch.tensor(boxes, dtype=torch.float32).view(-1, 4)
    out *= torch.tensor([size / width, size / height, size / width, size / height])
    return out.clamp_(0.0, float(size))


PREPROCESSING: tuple[str, ...] = ("resize", "center_crop")
CROP_RATIO = 224 / 256  # the published protocol (lemniscate, MoCo): resize the shorter side to 256, crop 224


def center_crop_geometry(width: int, height: int, size: int, resize_size: int) -> tuple[int, int, int, int]:
    """Where torchvision's ``Resize(resize_size)`` then ``CenterCrop(size)`` put a ``width x height`` image.

    Returns:
        ``(resized_width, resized_height, left, top)``: the shorter side
        becomes ``resize_size`` (the longer ``int(resize_size * long / short)``),
        and the crop is ``[left, left + size) x [top, top + size)`` of it.

    Raises:
        ValueError: If ``resize_size < size`` (the crop would not fit).
    """
    if resize_size < size:
        raise ValueError(f"resize_size must be >= the crop size {size}, got {resize_size}")
    if width <= height:
        resized = (resize_size, int(resize_size * height / width))
    else:
        resized = (int(resize_size * width / height), resize_size)
    left = int(round((resized[0] - size) / 2.0))
    top = int(round((resized[1] - size) / 2.0))
    return resized[0], resized[1], left, top


def center_crop_boxes(
    boxes: Sequence[Box], width: int, height: int, size: int, resize_size: int,
    decoded_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Boxes in pixels of a ``width x height`` image -> pixels of its resize + centre crop, clipped.

    ``decoded_size``: the size of the decoded image when the boxes were drawn on
    another (a pre-resized copy); the crop geometry follows the decoded image.
    Boxes left with no area inside the crop (the object was cropped away) are dropped.

    Returns:
        float (n', 4), ``(x0, y0, x1, y1)``, exclusive ends, within ``[0, size]``.
    """
    decoded_width, decoded_height = decoded_size or (width, height)
    resized_width, resized_height, left, top = center_crop_geometry(decoded_width, decoded_height, size, resize_size)
    out = torch.tensor(boxes, dtype=torch.float32).view(-1, 4)
    out *= torch.tensor([resized_width / width, resized_height / height] * 2)
    out -= torch.tensor([left, top, left, top], dtype=torch.float32)
    out.clamp_(0.0, float(size))
    return out[(out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])]


def load_center_cropped_image(path: Path, size: int, resize_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decode an image as RGB, resize its shorter side to ``resize_size`` (bilinear), crop the centred ``size x size``.

    Returns:
        The uint8 (3, size, size) image and the decoded ``(width, height)``.
    """
    rgb = decode_rgb(path)
    resized_width, resized_height, left, top = center_crop_geometry(*rgb.size, size, resize_size)
    resized = rgb.resize((resized_width, resized_height), Image.Resampling.BILINEAR)
    array = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).contiguous(), rgb.size


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
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std must have 3 entries and std > 0, got mean={mean}, std={std}")
        if split_index is None:
            split_index = read_imagenet_split(root, split, boxes_dir, read_boxes=with_boxes)
        self.split_index = split_index
        self.root = Path(root)
        self.split = split
        self.image_size = image_size
        self.preprocess = preprocess
        self.transform = transform
        self.with_boxes = with_boxes
        self._mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
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
        scaled = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        return (scaled - self._mean) / self._std


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
