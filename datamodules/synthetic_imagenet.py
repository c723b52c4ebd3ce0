"""Synthetic classification data written to disk in the ImageNet (ILSVRC 2012) layout.

Nothing can be downloaded at run time, so the default data set of the
contrastive models is drawn here and read back by the real ImageNet reader
(:mod:`datamodules.imagenet`)::

    root/
      train/n00000001/n00000001_0001.JPEG
      val/n00000001/ILSVRC2012_val_00000001.JPEG
      boxes/train/n00000001/n00000001_0001.xml      PASCAL-VOC, one per image
      boxes/val/n00000001/ILSVRC2012_val_00000001.xml
      LOC_synset_mapping.txt                        "n00000001 circle_red_stripes"
      synthetic.json                                parameters, written last

Classes and drawing are those of :mod:`datamodules.synthetic` (shape x colour
x texture objects on a class-agnostic cluttered background). About one image
in six holds two objects of its class whose boxes do not meet (one in five
is asked, ``TWO_OBJECT_SHARE``; some lack the room), so readers and metrics
meet several boxes per image. Each XML box
is the exact tight box of its object's drawn pixels, written the VOC way
(1-based, inclusive): ``xmin = x0 + 1``, ``xmax = x1`` for a 0-based box
``[x0, x1)``.

Writing is atomic and reuses a complete folder, exactly as for the synthetic
CUB-layout data (same temporary-sibling + rename scheme, same marker file).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules import synthetic
from datamodules.imagenet import SYNSET_MAPPING_FILE
from datamodules.synthetic import JPEG_QUALITY, MARKER_FILE, SyntheticClass, synthetic_classes

# Bump when the layout or the object placement changes; the drawing has its own version (synthetic.FORMAT_VERSION).
FORMAT_VERSION = 1
TWO_OBJECT_SHARE = 0.2
SECOND_OBJECT_TRIES = 4  # draws of a second object that fits beside the first before giving up
# Streams of the per-image generators: train and val images never share one.
_SPLIT_STREAM = {"train": 0, "val": 1}


@dataclass(frozen=True)
class SyntheticImageNetSample:
    """One drawn image with what went into it (for writing and for tests).

    Attributes:
        image: uint8 (H, W, 3), the final image.
        masks: uint8 (H, W) coverage mask of each object (255 = object only).
        boxes: Tight box of each ``mask > 0``: (x0, y0, x1, y1), 0-based, exclusive ends.
    """

    image: np.ndarray
    masks: list[np.ndarray]
    boxes: list[tuple[int, int, int, int]]


def default_synthetic_imagenet_root(data_dir: str | Path = "data", **params: int) -> Path:
    """Folder of the synthetic ImageNet-layout data set for these parameters, under ``data_dir``.

    The name spells out every parameter, this module's format version and the
    drawing's, so different parameters never reuse stale data, e.g.
    ``data/synthetic_imagenet-c10-tr60-va20-s96-seed0-v1.1``.

    Args:
        data_dir: Parent folder.
        **params: Any of num_classes, train_per_class, val_per_class,
            image_size, seed (defaults as in :func:`write_synthetic_imagenet`).

    Returns:
        The folder path (not created here).

    Raises:
        TypeError: On an unknown parameter name.
    """
    values = {"num_classes": 10, "train_per_class": 60, "val_per_class": 20, "image_size": 96, "seed": 0}
    unknown = set(params) - set(values)
    if unknown:
        raise TypeError(f"unknown synthetic ImageNet parameters {sorted(unknown)}; expected some of {sorted(values)}")
    values.update(params)
    name = (
        f"synthetic_imagenet-c{values['num_classes']}-tr{values['train_per_class']}-va{values['val_per_class']}"
        f"-s{values['image_size']}-seed{values['seed']}-v{FORMAT_VERSION}.{synthetic.FORMAT_VERSION}"
    )
    return Path(data_dir) / name


def wnid(class_index: int) -> str:
    """WordNet-id-like folder name of a 0-based class index: 0 -> ``n00000001``."""
    return f"n{class_index + 1:08d}"


def write_synthetic_imagenet(
    root: str | Path,
    num_classes: int = 10,
    train_per_class: int = 60,
    val_per_class: int = 20,
    image_size: int = 96,
    seed: int = 0,
) -> Path:
    """Write a synthetic data set in ImageNet layout to ``root``, atomically.

    If ``root`` already holds a complete data set with these parameters it is
    reused without touching it. Safe when several processes call this at once
    (e.g. DDP ranks): each writes its own temporary folder, the first rename
    wins, the others delete theirs and reuse the winner's.

    Args:
        root: Target folder; its parent is created if needed.
        num_classes: Number of classes (at most ``synthetic.MAX_CLASSES``).
        train_per_class: Training images per class.
        val_per_class: Validation images per class.
        image_size: Side of the square images in pixels.
        seed: Seed of the class choice and every drawing: same arguments give
            byte-identical XML and text files and identical pixels.

    Returns:
        ``root`` as a Path.

    Raises:
        ValueError: On out-of-range parameters, or if ``root`` holds synthetic
            data written with other parameters.
        FileExistsError: If ``root`` exists, is not empty and is not a
            complete synthetic data set.
    """
    root = Path(root)
    params = _check_params(num_classes, train_per_class, val_per_class, image_size, seed)
    if synthetic._is_complete(root, params):
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(
            f"{root} exists but is not a complete synthetic data set (no valid {MARKER_FILE}); "
            "delete it or choose another root"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    # A hidden, uniquely named sibling: a crashed run's leftover is never mistaken for data.
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        os.chmod(tmp, 0o755)
        _write_dataset(tmp, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return synthetic._publish(tmp, root, params)


def _check_params(
    num_classes: int, train_per_class: int, val_per_class: int, image_size: int, seed: int
) -> dict[str, int | str]:
    if not 1 <= num_classes <= synthetic.MAX_CLASSES:
        raise ValueError(f"num_classes must be in [1, {synthetic.MAX_CLASSES}], got {num_classes}")
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError(
            f"train_per_class and val_per_class must be >= 1, got {train_per_class} and {val_per_class}"
        )
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 pixels for the objects to be drawable, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return {
        "layout": "imagenet",  # a CUB-layout folder with equal numbers is never taken for this one
        "num_classes": num_classes,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "image_size": image_size,
        "seed": seed,
        "format_version": FORMAT_VERSION,
        "drawing_version": synthetic.FORMAT_VERSION,
    }


def image_stem(split: str, class_index: int, k: int, per_class: int) -> str:
    """File stem of image ``k`` of a class, named as ILSVRC names its files."""
    if split == "train":
        return f"{wnid(class_index)}_{k + 1:04d}"
    return f"ILSVRC2012_val_{class_index * per_class + k + 1:08d}"


def image_rng(seed: int, split: str, class_index: int, k: int) -> np.random.Generator:
    """The generator that draws image ``k`` of a class in a split (tests redraw images with it)."""
    return np.random.default_rng([seed, _SPLIT_STREAM[split], class_index, k])


def _write_dataset(folder: Path, params: dict[str, int | str]) -> None:
    """Draw every image and its XML file, then the synset mapping, then the marker last."""
    classes = synthetic_classes(int(params["num_classes"]), int(params["seed"]))
    jobs = [(split, c, spec) for split in ("train", "val") for c, spec in enumerate(classes)]
    # Threads overlap file creation with drawing; each image has its own seeded generator,
    # so the result does not depend on scheduling.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(lambda job: _write_class(folder, params, *job), jobs))
    mapping = "".join(f"{wnid(c)} {spec.name}\n" for c, spec in enumerate(classes))
    (folder / SYNSET_MAPPING_FILE).write_text(mapping, encoding="utf-8")
    marker = {"params": params, "classes": [vars(c) | {"name": c.name, "wnid": wnid(i)} for i, c in enumerate(classes)]}
    (folder / MARKER_FILE).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")


def _write_class(
    folder: Path, params: dict[str, int | str], split: str, class_index: int, spec: SyntheticClass
) -> None:
    """Draw and save the images of one class in one split, each with its VOC file."""
    per_class = int(params[f"{split}_per_class"])
    size, seed = int(params["image_size"]), int(params["seed"])
    image_dir = folder / split / wnid(class_index)
    box_dir = folder / "boxes" / split / wnid(class_index)
    image_dir.mkdir(parents=True)
    box_dir.mkdir(parents=True)
    for k in range(per_class):
        stem = image_stem(split, class_index, k, per_class)
        sample = render_imagenet_sample(spec, size, image_rng(seed, split, class_index, k))
        Image.fromarray(sample.image).save(image_dir / f"{stem}.JPEG", quality=JPEG_QUALITY, subsampling=0)
        (box_dir / f"{stem}.xml").write_bytes(voc_xml(wnid(class_index), stem, size, sample.boxes))


def render_imagenet_sample(spec: SyntheticClass, size: int, rng: np.random.Generator) -> SyntheticImageNetSample:
    """Draw one image of class ``spec``: one object, or with probability ``TWO_OBJECT_SHARE`` two.

    The second object is drawn by :func:`datamodules.synthetic.render_sample`
    too, then moved by whole pixels to a place drawn uniformly among those
    where its box does not meet the first box (keeping the drawing's one-pixel
    margin to the border), and composited onto the first image through its
    coverage mask with the drawing's own blend. Both boxes are therefore
    tight and fully visible. When no place is clear (both objects large), the
    second object is redrawn, up to ``SECOND_OBJECT_TRIES`` times; then the
    image keeps one object (about 1 in 8 two-object draws, when the first
    object is too large to leave room), so ~17% of images hold two objects.

    Args:
        spec: The class to draw.
        size: Image side in pixels.
        rng: Source of every random choice.

    Returns:
        The image, one mask per object and each mask's tight box.
    """
    two_objects = rng.random() < TWO_OBJECT_SHARE
    first = synthetic.render_sample(spec, size, rng)
    sample = SyntheticImageNetSample(image=first.image, masks=[first.mask], boxes=[_xyxy(first.box_xywh)])
    if not two_objects:
        return sample
    for _ in range(SECOND_OBJECT_TRIES):
        two = _add_moved_object(sample, synthetic.render_sample(spec, size, rng), rng)
        if two is not None:
            return two
    return sample


def _xyxy(box_xywh: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x, y, w, h = box_xywh
    return x, y, x + w, y + h


def _add_moved_object(
    sample: SyntheticImageNetSample, other: synthetic.RenderedSample, rng: np.random.Generator
) -> SyntheticImageNetSample | None:
    """Move ``other``'s object to a random place clear of ``sample``'s box and composite it there.

    ``other.image - other.background (1 - a)`` (a = its coverage) recovers
    ``object x a`` to within rounding, so no drawing code is repeated here;
    the result is ``image (1 - a) + object x a``, and pixels the object does
    not cover keep ``image`` exactly. None when no place is clear.
    """
    size = sample.image.shape[0]
    fx0, fy0, fx1, fy1 = sample.boxes[0]
    x0, y0, x1, y1 = _xyxy(other.box_xywh)
    w, h = x1 - x0, y1 - y0
    # Every top-left corner inside the 1-pixel margin whose box misses the first box.
    gy, gx = np.mgrid[1 : max(1, size - h), 1 : max(1, size - w)]
    clear = (gx + w <= fx0) | (gx >= fx1) | (gy + h <= fy0) | (gy >= fy1)
    places = np.flatnonzero(clear)
    if len(places) == 0:
        return None
    place = places[rng.integers(len(places))]
    nx, ny = int(gx.flat[place]), int(gy.flat[place])
    window, target = (slice(y0, y1), slice(x0, x1)), (slice(ny, ny + h), slice(nx, nx + w))
    mask = np.zeros_like(other.mask)
    mask[target] = other.mask[window]
    alpha = other.mask[window][..., None].astype(np.float32) / 255.0
    layer = other.image[window].astype(np.float32) - other.background[window].astype(np.float32) * (1.0 - alpha)
    image = sample.image.copy()
    under = image[target].astype(np.float32)
    blended = np.clip(np.rint(under * (1.0 - alpha) + layer), 0, 255).astype(np.uint8)
    image[target] = np.where(alpha > 0, blended, image[target])
    return SyntheticImageNetSample(
        image=image, masks=[*sample.masks, mask], boxes=[*sample.boxes, (nx, ny, nx + w, ny + h)]
    )


def voc_xml(folder: str, stem: str, size: int, boxes: list[tuple[int, int, int, int]]) -> bytes:
    """PASCAL-VOC annotation of a ``size x size`` image; 0-based exclusive boxes written 1-based inclusive."""
    annotation = ET.Element("annotation")
    ET.SubElement(annotation, "folder").text = folder
    ET.SubElement(annotation, "filename").text = stem
    ET.SubElement(ET.SubElement(annotation, "source"), "database").text = "synthetic"
    size_element = ET.SubElement(annotation, "size")
    for tag, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(size_element, tag).text = str(value)
    ET.SubElement(annotation, "segmented").text = "0"
    for x0, y0, x1, y1 in boxes:
        obj = ET.SubElement(annotation, "object")
        for tag, text in (("name", folder), ("pose", "Unspecified"), ("truncated", "0"), ("difficult", "0")):
            ET.SubElement(obj, tag).text = text
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bndbox, tag).text = str(value)
    ET.indent(annotation)
    return ET.tostring(annotation, encoding="utf-8", xml_declaration=False) + b"\n"
