"""ImageNet (ILSVRC 2012) listing: class folders, PASCAL-VOC XML boxes, setup checks; nothing decoded.

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import checks
from .geometry import Box
from .voc import parse_voc_xml

SPLITS: tuple[str, ...] = ("train", "val")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpeg", ".jpg", ".png")
SYNSET_MAPPING_FILE = "LOC_synset_mapping.txt"


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
