"""CUB-200-2011 reader: metadata, class splits and a map-style image data set.

The folder layout is the one CUB-200-2011 ships with::

    root/
      images.txt              <image_id> <relative path under images/>
      image_class_labels.txt  <image_id> <class_id>
      train_test_split.txt    <image_id> <is_train: 0 | 1>
      bounding_boxes.txt      <image_id> <x> <y> <width> <height>   (floats, pixels)
      classes.txt             <class_id> <name>
      images/<NNN.class_name>/<file>.jpg

Boxes come out as ``(x0, y0, x1, y1)`` in pixels of the *resized* image, with
``x1`` and ``y1`` exclusive (the box covers ``map[y0:y1, x0:x1]``). The whole
image is resized to ``S x S`` without cropping, so the boxes stay exact.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from . import checks

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

CUB_FILES: tuple[str, ...] = (
    "images.txt",
    "image_class_labels.txt",
    "train_test_split.txt",
    "bounding_boxes.txt",
    "classes.txt",
)

FEWSHOT_SPLITS: dict[str, str] = {"base": "base", "train": "base", "val": "val", "novel": "novel", "test": "novel"}
RETRIEVAL_SPLITS: tuple[str, ...] = ("train", "test")
CLASSIFICATION_SPLITS: tuple[str, ...] = ("train", "test")
PROTOCOLS: tuple[str, ...] = ("fewshot", "retrieval", "classification")

# CUB class names carry their id as a prefix ("001.Black_footed_Albatross").
_CLASS_PREFIX = re.compile(r"^\d+\.")


@dataclass(frozen=True)
class CUBMetadata:
    """Everything the five CUB text files say, aligned by image.

    All per-image lists share one order: ascending image id.

    Attributes:
        root: The CUB root folder.
        image_ids: Image ids, ascending.
        paths: Path of each image relative to ``root / "images"``.
        class_ids: CUB class id of each image.
        is_train: CUB's own train/test flag of each image.
        boxes_xywh: ``(x, y, width, height)`` of each image, original pixels.
        class_names: CUB class id -> name as written in classes.txt.
    """

    root: Path
    image_ids: list[int]
    paths: list[str]
    class_ids: list[int]
    is_train: list[bool]
    boxes_xywh: list[tuple[float, float, float, float]]
    class_names: dict[int, str]

    @property
    def sorted_class_ids(self) -> list[int]:
        """Class ids of classes.txt, ascending: the order the splits index into."""
        return sorted(self.class_names)

    def __len__(self) -> int:
        return len(self.image_ids)


def _read_table(path: Path, num_fields: int) -> list[tuple[int, list[str], int]]:
    """Read a whitespace-separated text file of ``num_fields`` fields per line.

    The last field takes the rest of the line, so names and paths may hold
    spaces. Blank lines are skipped.

    Returns:
        ``(line_number, fields, id)`` per line, ``id`` the first field as int.

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: On a line with too few fields or a non-integer id.
    """
    if not path.is_file():
        raise FileNotFoundError(f"CUB metadata file {path} is missing (a CUB root must contain {', '.join(CUB_FILES)})")
    rows: list[tuple[int, list[str], int]] = []
    with path.open(encoding="utf-8-sig") as handle:  # -sig: a byte-order mark is not part of the first id
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.split(maxsplit=num_fields - 1)
            if len(fields) != num_fields:
                raise ValueError(
                    f"{path}, line {line_number}: expected {num_fields} whitespace-separated fields, "
                    f"got {len(fields)}: {line.rstrip()!r}"
                )
            rows.append((line_number, [f.strip() for f in fields], _parse_int(fields[0], path, line_number)))
    return rows


def _parse_int(text: str, path: Path, line_number: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path}, line {line_number}: expected an integer, got {text!r}") from None


def _parse_float(text: str, path: Path, line_number: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}, line {line_number}: expected a number, got {text!r}") from None


def _index_by_id(path: Path, rows: list[tuple[int, list[str], int]]) -> dict[int, tuple[int, list[str]]]:
    """Map the id column to ``(line_number, fields)``; duplicate ids are an error."""
    table: dict[int, tuple[int, list[str]]] = {}
    for line_number, fields, key in rows:
        if key in table:
            raise ValueError(f"{path}, line {line_number}: id {key} already appeared on line {table[key][0]}")
        table[key] = (line_number, fields)
    return table


def _few(ids: Sequence[int] | set[int], limit: int = 5) -> str:
    ordered = sorted(ids)
    shown = ", ".join(str(i) for i in ordered[:limit])
    return shown + (f", ... ({len(ordered)} in all)" if len(ordered) > limit else "")


def _check_same_ids(tables: dict[str, dict[int, tuple[int, list[str]]]]) -> list[int]:
    """Every per-image file must list the same image ids as images.txt."""
    reference = set(tables["images.txt"])
    for name, table in tables.items():
        ids = set(table)
        missing, extra = reference - ids, ids - reference
        if missing:
            raise ValueError(f"image ids {_few(missing)} of images.txt are missing from {name}")
        if extra:
            raise ValueError(f"image ids {_few(extra)} of {name} are not listed in images.txt")
    return sorted(reference)


def read_cub_metadata(root: str | Path) -> CUBMetadata:
    """Parse the five CUB-200-2011 text files of ``root``.

    Args:
        root: The CUB root folder (the one holding images.txt and images/).

    Returns:
        The parsed, cross-checked metadata.

    Raises:
        FileNotFoundError: If ``root`` or one of the text files is missing.
        ValueError: On a malformed line, duplicate ids, image ids listed in
            one file but not another, or an unknown class id.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"CUB root {root} does not exist or is not a folder; a CUB-200-2011 root must contain "
            f"{', '.join(CUB_FILES)} and images/"
        )
    per_image = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "bounding_boxes.txt")
    fields = {"images.txt": 2, "image_class_labels.txt": 2, "train_test_split.txt": 2, "bounding_boxes.txt": 5}
    tables = {name: _index_by_id(root / name, _read_table(root / name, fields[name])) for name in per_image}
    classes_path = root / "classes.txt"
    class_names = {key: f[1] for key, (_, f) in _index_by_id(classes_path, _read_table(classes_path, 2)).items()}
    image_ids = _check_same_ids(tables)
    return CUBMetadata(
        root=root,
        image_ids=image_ids,
        paths=[tables["images.txt"][i][1][1] for i in image_ids],
        class_ids=_parse_labels(
            root / "image_class_labels.txt", tables["image_class_labels.txt"], image_ids, class_names
        ),
        is_train=_parse_flags(root / "train_test_split.txt", tables["train_test_split.txt"], image_ids),
        boxes_xywh=_parse_boxes(root / "bounding_boxes.txt", tables["bounding_boxes.txt"], image_ids),
        class_names=class_names,
    )


def check_cub_data(meta: CUBMetadata, verify_images: bool = False) -> CUBMetadata:
    """Check a CUB folder before training; every problem of a kind is reported in one message.

    Every image of images.txt must exist (one stat each, no decode); every box
    of bounding_boxes.txt is checked against its image's size read from the
    file header: partly outside is clipped (one warning with the count and an
    example), no area inside is an error naming the file and line. With
    ``verify_images`` every image is also decoded once.

    Returns:
        ``meta`` with the clipped boxes.

    Raises:
        FileNotFoundError: Listing the missing images.
        ValueError: Listing unreadable images or boxes outside their image.
    """
    root = meta.root
    paths = [root / "images" / p for p in meta.paths]
    checks.check_files_exist(paths, f"images listed in {root / 'images.txt'}")
    sizes = checks.read_image_sizes(paths, f"images of {root}")
    box_file = root / "bounding_boxes.txt"
    lines = {key: line for key, (line, _) in _index_by_id(box_file, _read_table(box_file, 5)).items()}
    sources = [f"{box_file}, line {lines[i]} (images/{p})" for i, p in zip(meta.image_ids, meta.paths)]
    corners = [[(x, y, x + w, y + h)] for x, y, w, h in meta.boxes_xywh]
    clipped = checks.check_boxes(corners, sizes, sources, str(box_file))
    if verify_images:
        checks.verify_images(paths, f"images of {root}")
    boxes = [(x0, y0, x1 - x0, y1 - y0) for ((x0, y0, x1, y1),) in clipped]
    return dataclasses.replace(meta, boxes_xywh=boxes)


def _parse_labels(
    path: Path, table: dict[int, tuple[int, list[str]]], image_ids: list[int], class_names: dict[int, str]
) -> list[int]:
    labels = []
    for image_id in image_ids:
        line_number, fields = table[image_id]
        label = _parse_int(fields[1], path, line_number)
        if label not in class_names:
            raise ValueError(f"{path}, line {line_number}: class id {label} is not listed in classes.txt")
        labels.append(label)
    return labels


def _parse_flags(path: Path, table: dict[int, tuple[int, list[str]]], image_ids: list[int]) -> list[bool]:
    flags = []
    for image_id in image_ids:
        line_number, fields = table[image_id]
        flag = _parse_int(fields[1], path, line_number)
        if flag not in (0, 1):
            raise ValueError(f"{path}, line {line_number}: is_train must be 0 or 1, got {flag}")
        flags.append(flag == 1)
    return flags


def _parse_boxes(
    path: Path, table: dict[int, tuple[int, list[str]]], image_ids: list[int]
) -> list[tuple[float, float, float, float]]:
    boxes = []
    for image_id in image_ids:
        line_number, fields = table[image_id]
        x, y, w, h = (_parse_float(f, path, line_number) for f in fields[1:])
        if w < 0 or h < 0:
            raise ValueError(f"{path}, line {line_number}: box width and height must be >= 0, got w={w}, h={h}")
        boxes.append((x, y, w, h))
    return boxes


def fewshot_class_split(class_ids_sorted: Sequence[int], split: str) -> list[int]:
    """Few-shot class split of Chen et al. 2019 ("A Closer Look at Few-shot Classification").

    With ``i`` the 0-based position of a class in the sorted class list: base
    if ``i % 2 == 0``, val if ``i % 4 == 1``, novel if ``i % 4 == 3``
    (on CUB: 100 / 50 / 50 classes).

    Args:
        class_ids_sorted: All class ids; sorted here again, to be safe.
        split: "base" (alias "train"), "val", or "novel" (alias "test").

    Returns:
        The class ids of the split, ascending.

    Raises:
        ValueError: On an unknown split name.
    """
    if split not in FEWSHOT_SPLITS:
        raise ValueError(f"unknown few-shot split {split!r}; expected one of {sorted(FEWSHOT_SPLITS)}")
    keep = {"base": lambda i: i % 2 == 0, "val": lambda i: i % 4 == 1, "novel": lambda i: i % 4 == 3}
    rule = keep[FEWSHOT_SPLITS[split]]
    return [c for i, c in enumerate(sorted(class_ids_sorted)) if rule(i)]


def retrieval_class_split(class_ids_sorted: Sequence[int], split: str) -> list[int]:
    """Metric-learning retrieval split: first half of the classes train, the rest test.

    On CUB this is the usual 100 / 100 split. With an odd count the train
    half gets the extra class.

    Args:
        class_ids_sorted: All class ids; sorted here again, to be safe.
        split: "train" or "test".

    Returns:
        The class ids of the split, ascending.

    Raises:
        ValueError: On an unknown split name.
    """
    if split not in RETRIEVAL_SPLITS:
        raise ValueError(f"unknown retrieval split {split!r}; expected one of {list(RETRIEVAL_SPLITS)}")
    ordered = sorted(class_ids_sorted)
    half = (len(ordered) + 1) // 2
    return ordered[:half] if split == "train" else ordered[half:]


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
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std must have 3 entries and std > 0, got mean={mean}, std={std}")
        self.root = Path(root)
        self.split = split
        self.protocol = protocol
        self.image_size = image_size
        self.transform = transform
        self._mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
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

    def _normalise(self, image: torch.Tensor) -> torch.Tensor:
        scaled = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        return (scaled - self._mean) / self._std


def load_resized_image(path: Path, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decode an image as RGB and resize the whole of it to ``size x size`` (bilinear).

    Args:
        path: Image file.
        size: Output side in pixels.

    Returns:
        The uint8 (3, size, size) image and the original ``(width, height)``.

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: If the file cannot be decoded (corrupt, truncated, not an image).
    """
    rgb = decode_rgb(path)
    original_size = rgb.size
    array = np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1).contiguous(), original_size


# Greyscale modes of more than 8 bits (16-bit PNG / TIFF): ``convert("RGB")`` clips them to 255.
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def decode_rgb(path: str | Path) -> Image.Image:
    """The image at ``path``, fully decoded as 8-bit RGB; a missing or undecodable file raises an error naming it.

    The one image decoder of the readers and ``fam-explain``. 16-bit greyscale (``I;16``,
    ``I;16B``, and ``I`` holding 0 ... 65535) is scaled to 8 bits (value / 257, rounded), not clipped
    (an ``I`` image whose values all fit 0 ... 255 is taken as 8-bit data).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} is missing")
    try:
        with Image.open(path) as img:
            if img.mode in WIDE_GREY_MODES:
                return _wide_grey_to_rgb(img)
            return img.convert("RGB")  # forces the full decode inside the try
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot decode image {path}: {err}") from err


def _wide_grey_to_rgb(img: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer) greyscale image as 8-bit RGB: 0 ... 65535 -> 0 ... 255."""
    values = np.asarray(img).astype(np.float64)
    # a 32-bit integer image whose values fit 8 bits (written from 8-bit data) is kept as it is
    scale = 1.0 if img.mode == "I" and values.size and values.max() <= 255 and values.min() >= 0 else 257.0
    grey = np.clip(np.rint(values / scale), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def scale_box_xywh(box_xywh: torch.Tensor, width: int, height: int, size: int) -> torch.Tensor:
    """CUB's ``(x, y, w, h)`` in original pixels -> ``(x0, y0, x1, y1)`` in resized pixels.

    Args:
        box_xywh: float (4,) box in the original image.
        width: Original image width.
        height: Original image height.
        size: Side of the square resized image.

    Returns:
        float (4,) box, x1 and y1 exclusive.
    """
    x, y, w, h = box_xywh.tolist()
    sx, sy = size / width, size / height
    return torch.tensor([x * sx, y * sy, (x + w) * sx, (y + h) * sy], dtype=torch.float32)
