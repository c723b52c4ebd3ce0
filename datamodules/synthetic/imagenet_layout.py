"""Synthetic classification data written to disk in the ImageNet (ILSVRC 2012) layout.

Nothing can be downloaded at run time, so the default data set of the
contrastive models is drawn here and read back by the real ImageNet reader
(:mod:`fam_lightning.datamodules.formats.imagenet`)::

    root/
      train/n00000001/n00000001_0001.JPEG
      val/n00000001/ILSVRC2012_val_00000001.JPEG
      boxes/train/n00000001/n00000001_0001.xml      PASCAL-VOC, one per image
      boxes/val/n00000001/ILSVRC2012_val_00000001.xml
      LOC_synset_mapping.txt                        "n00000001 circle_red_stripes"
      synthetic.json                                parameters, written last

Classes and scenes come from the drawing core both layouts share
(:mod:`fam_lightning.datamodules.synthetic.drawing`): the class object plus ``distractors`` equally
salient objects of other combinations of the vocabulary, on saturated
class-agnostic clutter. About one image in five holds two objects of its
class (``TWO_OBJECT_SHARE``; a second one that finds no free place is left
out), so readers and metrics meet several boxes per image. Only class
objects are boxed; each XML box is the exact tight box of its object's drawn
pixels, written the VOC way (1-based, inclusive): ``xmin = x0 + 1``,
``xmax = x1`` for a 0-based box ``[x0, x1)``.

Writing is atomic and reuses a complete folder, exactly as for the synthetic
CUB-layout data (:func:`fam_lightning.datamodules.synthetic.folder.write_atomically`).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import drawing
from .drawing import DEFAULT_DISTRACTORS, SyntheticClass, synthetic_classes
from ..formats.imagenet_index import SYNSET_MAPPING_FILE
from .folder import MARKER_FILE, check_common_params, parallel_map, save_jpeg, write_atomically

# Bump when the layout or the annotation changes; the drawing has its own version (drawing.DRAWING_VERSION).
FORMAT_VERSION = 2
TWO_OBJECT_SHARE = 0.2
# Streams of the per-image generators: train and val images never share one.
_SPLIT_STREAM = {"train": 0, "val": 1}


def default_synthetic_imagenet_root(data_dir: str | Path = "data", **params: int) -> Path:
    """Folder of the synthetic ImageNet-layout data set for these parameters, under ``data_dir``.

    The name spells out every parameter, this module's format version and the
    drawing's, so different parameters never reuse stale data, e.g.
    ``data/synthetic_imagenet-c10-tr60-va20-s96-d3-seed0-v2.2``.

    Args:
        data_dir: Parent folder.
        **params: Any of num_classes, train_per_class, val_per_class,
            image_size, distractors, seed (defaults as in :func:`write_synthetic_imagenet`).

    Returns:
        The folder path (not created here).

    Raises:
        TypeError: On an unknown parameter name.
    """
    values = {
        "num_classes": 10, "train_per_class": 60, "val_per_class": 20, "image_size": 96,
        "distractors": DEFAULT_DISTRACTORS, "seed": 0,
    }
    unknown = set(params) - set(values)
    if unknown:
        raise TypeError(f"unknown synthetic ImageNet parameters {sorted(unknown)}; expected some of {sorted(values)}")
    values.update(params)
    name = (
        f"synthetic_imagenet-c{values['num_classes']}-tr{values['train_per_class']}-va{values['val_per_class']}"
        f"-s{values['image_size']}-d{values['distractors']}-seed{values['seed']}"
        f"-v{FORMAT_VERSION}.{drawing.DRAWING_VERSION}"
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
    distractors: int = DEFAULT_DISTRACTORS,
) -> Path:
    """Write a synthetic data set in ImageNet layout to ``root``, atomically.

    If ``root`` already holds a complete data set with these parameters it is
    reused without touching it. Safe when several processes call this at once
    (e.g. DDP ranks): each writes its own temporary folder, the first rename
    wins, the others delete theirs and reuse the winner's. Leftovers of killed
    writes are removed.

    Args:
        root: Target folder; its parent is created if needed.
        num_classes: Number of classes (at most ``drawing.MAX_CLASSES``).
        train_per_class: Training images per class.
        val_per_class: Validation images per class.
        image_size: Side of the square images in pixels.
        seed: Seed of the class choice and every drawing: same arguments give
            byte-identical XML and text files and identical pixels.
        distractors: Distractor objects per image (other combinations of the
            vocabulary, never boxed).

    Returns:
        ``root`` as a Path.

    Raises:
        ValueError: On out-of-range parameters, or if ``root`` holds synthetic
            data written with other parameters.
        FileExistsError: If ``root`` exists, is not empty and is not a
            complete synthetic data set.
    """
    params = _check_params(num_classes, train_per_class, val_per_class, image_size, seed, distractors)
    return write_atomically(root, params, _write_dataset)


def _check_params(
    num_classes: int, train_per_class: int, val_per_class: int, image_size: int, seed: int, distractors: int
) -> dict[str, int | str]:
    check_common_params(num_classes, image_size, seed, distractors)
    if train_per_class < 1 or val_per_class < 1:
        raise ValueError(
            f"train_per_class and val_per_class must be >= 1, got {train_per_class} and {val_per_class}"
        )
    return {
        "layout": "imagenet",  # a CUB-layout folder with equal numbers is never taken for this one
        "num_classes": num_classes,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "image_size": image_size,
        "seed": seed,
        "distractors": distractors,
        "format_version": FORMAT_VERSION,
        "drawing_version": drawing.DRAWING_VERSION,
    }


def image_stem(split: str, class_index: int, k: int, per_class: int) -> str:
    """File stem of image ``k`` of a class, named as ILSVRC names its files."""
    if split == "train":
        return f"{wnid(class_index)}_{k + 1:04d}"
    return f"ILSVRC2012_val_{class_index * per_class + k + 1:08d}"


def image_rng(seed: int, split: str, class_index: int, k: int) -> np.random.Generator:
    """The generator that draws image ``k`` of a class in a split (tests redraw images with it)."""
    return np.random.default_rng([seed, _SPLIT_STREAM[split], class_index, k])


def _write_dataset(folder: Path, params: Mapping[str, Any]) -> None:
    """Draw every image and its XML file, then the synset mapping, then the marker last."""
    classes = synthetic_classes(int(params["num_classes"]), int(params["seed"]))
    jobs = [(split, c, spec) for split in ("train", "val") for c, spec in enumerate(classes)]
    parallel_map(lambda job: _write_class(folder, params, *job), jobs)
    mapping = "".join(f"{wnid(c)} {spec.name}\n" for c, spec in enumerate(classes))
    (folder / SYNSET_MAPPING_FILE).write_text(mapping, encoding="utf-8")
    marker = {
        "params": dict(params), "classes": [vars(c) | {"name": c.name, "wnid": wnid(i)} for i, c in enumerate(classes)]
    }
    (folder / MARKER_FILE).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")


def _write_class(folder: Path, params: Mapping[str, Any], split: str, class_index: int, spec: SyntheticClass) -> None:
    """Draw and save the images of one class in one split, each with its VOC file."""
    per_class = int(params[f"{split}_per_class"])
    size, seed, distractors = int(params["image_size"]), int(params["seed"]), int(params["distractors"])
    image_dir = folder / split / wnid(class_index)
    box_dir = folder / "boxes" / split / wnid(class_index)
    image_dir.mkdir(parents=True)
    box_dir.mkdir(parents=True)
    for k in range(per_class):
        stem = image_stem(split, class_index, k, per_class)
        scene = render_imagenet_sample(spec, size, image_rng(seed, split, class_index, k), distractors)
        save_jpeg(scene.image, image_dir / f"{stem}.JPEG")
        (box_dir / f"{stem}.xml").write_bytes(voc_xml(wnid(class_index), stem, size, scene.boxes))


def render_imagenet_sample(
    spec: SyntheticClass, size: int, rng: np.random.Generator, distractors: int = DEFAULT_DISTRACTORS
) -> drawing.Scene:
    """Draw one image of class ``spec``: one class object, or with probability ``TWO_OBJECT_SHARE`` two.

    The scene comes from :func:`fam_lightning.datamodules.synthetic.drawing.render_scene` with
    ``distractors`` distractor objects; every class object is boxed, no
    distractor is. A second class object that finds no free place is left
    out (the scene then keeps one).

    Args:
        spec: The class to draw.
        size: Image side in pixels.
        rng: Source of every random choice.
        distractors: Distractor objects per image.

    Returns:
        The scene; ``scene.boxes`` are the class objects' boxes (x0, y0, x1, y1).
    """
    class_instances = 2 if rng.random() < TWO_OBJECT_SHARE else 1
    return drawing.render_scene(spec, size, rng, distractors, class_instances)


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
