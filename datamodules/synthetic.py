"""Synthetic few-shot data written to disk in the CUB-200-2011 layout.

Nothing can be downloaded at run time, so the default data set is drawn here
and read back by the real CUB reader (:mod:`fam_lightning.datamodules.formats.cub`).

Each class is one combination shape x colour x texture (``circle_red_stripes``).
Every image holds one object of its class and ``distractors`` objects of other
combinations of the same vocabulary, equally salient, in disjoint places, on
saturated clutter drawn the same way for every class (see
:mod:`fam_lightning.datamodules.drawing`, the drawing core both layouts share). Novel classes
are unseen combinations of attribute values that the base classes show, so a
learner that picks up shape, colour and texture transfers to them.
``bounding_boxes.txt`` holds the exact tight box of the class object only.

Writing is atomic (:func:`write_atomically`): the data set is written into a
hidden temporary sibling of ``root`` named after the writing process and
renamed into place at the end; a complete ``root`` (one whose
``synthetic.json`` records the same parameters) is reused as it is, and the
leftovers of writes that were killed half-way are removed by the next write.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import drawing
from .drawing import DEFAULT_DISTRACTORS, MAX_CLASSES, SyntheticClass, check_distractors, synthetic_classes

__all__ = [
    "DEFAULT_DISTRACTORS",
    "FORMAT_VERSION",
    "JPEG_QUALITY",
    "MARKER_FILE",
    "MAX_CLASSES",
    "STALE_TEMP_AGE_S",
    "SyntheticClass",
    "default_synthetic_root",
    "remove_stale_temporaries",
    "synthetic_classes",
    "write_atomically",
    "write_synthetic_cub",
]

# Bump when the layout changes; the drawing has its own version (drawing.DRAWING_VERSION). Both are
# part of the default folder name, so stale data is never reused.
FORMAT_VERSION = 2
MARKER_FILE = "synthetic.json"
JPEG_QUALITY = 90
# A temporary folder of another host (or of an unknown owner) untouched this long belongs to a dead write.
STALE_TEMP_AGE_S = 6 * 3600.0
_TEMP_INFIX = ".tmp-"


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


def write_atomically(
    root: str | Path, params: Mapping[str, Any], write: Callable[[Path, Mapping[str, Any]], None]
) -> Path:
    """Run ``write(folder, params)`` into a hidden temporary sibling of ``root``, then rename it to ``root``.

    ``write`` must write ``MARKER_FILE`` (``{"params": params, ...}``) last.
    Leftover temporary folders of killed writes to ``root`` are removed first
    (:func:`remove_stale_temporaries`). A complete ``root`` with these
    ``params`` is reused untouched.

    Raises:
        ValueError: If ``root`` holds synthetic data written with other parameters.
        FileExistsError: If ``root`` exists, is not empty and is not complete.
    """
    root = Path(root)
    params = dict(params)
    remove_stale_temporaries(root)
    if _is_complete(root, params):
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(
            f"{root} exists but is not a complete synthetic data set (no valid {MARKER_FILE}); "
            "delete it or choose another root"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    # Hidden and named after its writer, so a killed write's leftover is never mistaken for data
    # and a later run can tell whether its owner is still alive.
    prefix = f"{_temp_prefix(root)}{socket.gethostname()}-{os.getpid()}-"
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=root.parent))
    try:
        os.chmod(tmp, 0o755)
        write(tmp, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _publish(tmp, root, params)


def remove_stale_temporaries(root: str | Path, max_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Remove the temporary folders that killed writes to ``root`` left beside it.

    A temporary folder ``.<root name>.tmp-<host>-<pid>-<random>`` is stale
    when its host is this one and no process ``pid`` is alive; one of another
    host, or with a name that names no owner, when nothing in it changed for
    ``max_age_s`` seconds. Live writers (other DDP ranks, other runs) are
    never disturbed.

    Returns:
        The folders removed.
    """
    root = Path(root)
    if not root.parent.is_dir():
        return []
    prefix = _temp_prefix(root)
    removed = []
    for entry in root.parent.iterdir():
        if entry.name.startswith(prefix) and entry.is_dir() and _is_stale(entry, prefix, max_age_s):
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                removed.append(entry)
    return removed


def _temp_prefix(root: Path) -> str:
    return f".{root.name}{_TEMP_INFIX}"


def _is_stale(folder: Path, prefix: str, max_age_s: float) -> bool:
    # <host>-<pid>-<random>: the host may hold dashes, the pid and tempfile's random part never do.
    owner = folder.name[len(prefix) :].rsplit("-", 2)
    if len(owner) == 3 and owner[0] == socket.gethostname() and owner[1].isdigit():
        return not _pid_alive(int(owner[1]))
    return time.time() - _last_change(folder) > max_age_s


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _last_change(folder: Path) -> float:
    """Newest modification time of ``folder`` and the folders inside it (files land in those)."""
    newest = 0.0
    for current, _, _ in os.walk(folder):
        try:
            newest = max(newest, os.stat(current).st_mtime)
        except FileNotFoundError:  # removed meanwhile
            continue
    return newest


def _check_params(
    num_classes: int, images_per_class: int, image_size: int, seed: int, distractors: int
) -> dict[str, int]:
    _check_common(num_classes, image_size, seed, distractors)
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


def _check_common(num_classes: int, image_size: int, seed: int, distractors: int) -> None:
    """Checks shared by both layouts' parameters."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(
            f"num_classes must be in [1, {MAX_CLASSES}] ({len(drawing.SHAPES)} shapes x {len(drawing.COLOURS)} "
            f"colours x {len(drawing.TEXTURES)} textures), got {num_classes}"
        )
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 pixels for the objects to be drawable, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    check_distractors(distractors)


def _is_complete(root: Path, params: Mapping[str, Any]) -> bool:
    """True if ``root`` holds a finished data set with exactly these parameters.

    Raises:
        ValueError: If ``root`` holds a finished data set with other parameters.
    """
    marker = root / MARKER_FILE
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))["params"]
    except (ValueError, KeyError) as err:
        raise ValueError(f"{marker} is unreadable ({err}); delete {root} to rewrite it") from err
    if recorded != dict(params):
        raise ValueError(f"{root} holds synthetic data written with {recorded}, but {dict(params)} was asked for")
    return True


def _publish(tmp: Path, root: Path, params: Mapping[str, Any]) -> Path:
    """Rename the finished ``tmp`` to ``root``; if another process won the race, reuse its copy."""
    try:
        # rename() replaces an empty folder and fails on a non-empty one: exactly one writer wins.
        os.rename(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_complete(root, params):
            raise
    return root


def parallel_map(function: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """``[function(item) for item in items]`` on a few threads.

    Threads overlap file creation (slow on some file systems) with drawing;
    each image has its own seeded generator, so results do not depend on scheduling.
    """
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(function, items))


def save_jpeg(image: np.ndarray, path: Path) -> None:
    """Save a uint8 (H, W, 3) image as the synthetic data sets store it."""
    Image.fromarray(image).save(path, quality=JPEG_QUALITY, subsampling=0)


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
