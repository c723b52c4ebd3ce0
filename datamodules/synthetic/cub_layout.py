"""Synthetic few-shot data written to disk in the CUB-200-2011 layout.

Nothing can be downloaded at run time, so the default data set is drawn here
and read back by the real CUB reader (:mod:`fam_lightning.datamodules.formats.cub`).

Each class is one combination shape x colour x texture (``circle_red_stripes``).
Every image holds one object of its class and ``distractors`` objects of other
combinations of the same vocabulary, equally salient, in disjoint places, on
saturated clutter drawn the same way for every class (see
:mod:`fam_lightning.datamodules.synthetic.drawing`, the drawing core both layouts share). Novel classes
are unseen combinations of attribute values that the base classes show, so a
learner that picks up shape, colour and texture transfers to them.
``bounding_boxes.txt`` holds the exact tight box of the class object only.

Writing is atomic and reuses a complete folder
(:func:`fam_lightning.datamodules.synthetic.folder.write_atomically`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import drawing
from .drawing import DEFAULT_DISTRACTORS, SyntheticClass, synthetic_classes
from .folder import MARKER_FILE, check_common_params, parallel_map, save_jpeg, write_atomically

# Bump when the layout changes; the drawing has its own version (drawing.DRAWING_VERSION). Both are
# part of the default folder name, so stale data is never reused.
FORMAT_VERSION = 2


def default_synthetic_root(data_dir: str | Path = "data", **params: int) -> Path:
    """Folder of the synthetic data set for these parameters, under ``data_dir``.

    The name spells out every parameter and the format versions, so
    different parameters never reuse stale data, e.g.
    ``data/synthetic_cub-c64-i30-s96-d3-seed0-v2.2``.

    Args:
        data_dir: Parent folder.
        **params: Any of num_classes, images_per_class, image_size,
            distractors, seed (defaults as in :func:`write_synthetic_cub`).

    Returns:
        The folder path (not created here).

    Raises:
        TypeError: On an unknown parameter name.
    """
    values = {
        "num_classes": 64, "images_per_class": 30, "image_size": 96, "distractors": DEFAULT_DISTRACTORS, "seed": 0,
    }
    unknown = set(params) - set(values)
    if unknown:
        raise TypeError(f"unknown synthetic data parameters {sorted(unknown)}; expected some of {sorted(values)}")
    values.update(params)
    name = (
        f"synthetic_cub-c{values['num_classes']}-i{values['images_per_class']}-s{values['image_size']}"
        f"-d{values['distractors']}-seed{values['seed']}-v{FORMAT_VERSION}.{drawing.DRAWING_VERSION}"
    )
    return Path(data_dir) / name


def write_synthetic_cub(
    root: str | Path,
    num_classes: int = 64,
    images_per_class: int = 30,
    image_size: int = 96,
    seed: int = 0,
    distractors: int = DEFAULT_DISTRACTORS,
) -> Path:
    """Write a synthetic data set in CUB-200-2011 layout to ``root``, atomically.

    If ``root`` already holds a complete data set with these parameters it is
    reused without touching it. Safe when several processes call this at once
    (e.g. DDP ranks): each writes its own temporary folder, the first rename
    wins, the others delete theirs and reuse the winner's.

    Args:
        root: Target folder; its parent is created if needed.
        num_classes: Number of classes (at most ``MAX_CLASSES``).
        images_per_class: Images per class.
        image_size: Side of the square images in pixels.
        seed: Seed of the class choice and every drawing: same arguments give
            byte-identical text files and identical pixels.
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
    params = _check_params(num_classes, images_per_class, image_size, seed, distractors)
    return write_atomically(root, params, _write_dataset)


def _check_params(
    num_classes: int, images_per_class: int, image_size: int, seed: int, distractors: int
) -> dict[str, int]:
    check_common_params(num_classes, image_size, seed, distractors)
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be >= 1, got {images_per_class}")
    return {
        "num_classes": num_classes,
        "images_per_class": images_per_class,
        "image_size": image_size,
        "seed": seed,
        "distractors": distractors,
        "format_version": FORMAT_VERSION,
        "drawing_version": drawing.DRAWING_VERSION,
    }


def image_rng(seed: int, class_index: int, k: int) -> np.random.Generator:
    """The generator that draws image ``k`` of a class (tests redraw images with it)."""
    return np.random.default_rng([seed, class_index, k])


def _write_dataset(folder: Path, params: Mapping[str, Any]) -> None:
    """Draw every image and write the five CUB text files, then the marker last."""
    classes = synthetic_classes(params["num_classes"], params["seed"])
    (folder / "images").mkdir()
    per_class = parallel_map(lambda item: _write_class(folder, params, *item), list(enumerate(classes)))
    files = {
        "images.txt": "images",
        "image_class_labels.txt": "labels",
        "train_test_split.txt": "split",
        "bounding_boxes.txt": "boxes",
        "classes.txt": "classes",
    }
    for file_name, key in files.items():
        text = "".join(line + "\n" for lines in per_class for line in lines[key])
        (folder / file_name).write_text(text, encoding="utf-8")
    marker = {"params": dict(params), "classes": [vars(c) | {"name": c.name} for c in classes]}
    (folder / MARKER_FILE).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")


def _write_class(
    folder: Path, params: Mapping[str, Any], class_index: int, spec: SyntheticClass
) -> dict[str, list[str]]:
    """Draw and save the images of one class; return its lines of the five text files."""
    n, size, seed = params["images_per_class"], params["image_size"], params["seed"]
    class_id = class_index + 1
    folder_name = f"{class_id:03d}.{spec.name}"
    (folder / "images" / folder_name).mkdir()
    lines: dict[str, list[str]] = {"classes": [f"{class_id} {folder_name}"]}
    for key in ("images", "labels", "split", "boxes"):
        lines[key] = []
    for k in range(n):
        image_id = class_index * n + k + 1
        relative = f"{folder_name}/{spec.name}_{k + 1:04d}.jpg"
        scene = drawing.render_scene(spec, size, image_rng(seed, class_index, k), params["distractors"])
        save_jpeg(scene.image, folder / "images" / relative)
        x0, y0, x1, y1 = scene.boxes[0]
        lines["images"].append(f"{image_id} {relative}")
        lines["labels"].append(f"{image_id} {class_id}")
        lines["split"].append(f"{image_id} {int(k < (n + 1) // 2)}")
        lines["boxes"].append(f"{image_id} {x0:.1f} {y0:.1f} {x1 - x0:.1f} {y1 - y0:.1f}")
    return lines
