"""What both synthetic layouts share: the atomic publish of a written folder, its marker, checks, JPEG saving.

Writing is atomic (:func:`write_atomically`): the data set is written into a
hidden temporary sibling of ``root`` named after the writing process and
renamed into place at the end; a complete ``root`` (one whose
``synthetic.json`` records the same parameters) is reused as it is, and the
leftovers of writes that were killed half-way are removed by the next write.
The files inside the temporary folder are plain writes: nothing under ``root``
is ever seen before the rename publishes the whole folder.
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

from .drawing import check_distractors
from .objects import COLOURS, MAX_CLASSES, SHAPES, TEXTURES

MARKER_FILE = "synthetic.json"
JPEG_QUALITY = 90
# A temporary folder of another host (or of an unknown owner) untouched this long belongs to a dead write.
STALE_TEMP_AGE_S = 6 * 3600.0
_TEMP_INFIX = ".tmp-"


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


def check_common_params(num_classes: int, image_size: int, seed: int, distractors: int) -> None:
    """Checks shared by both layouts' parameters."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(
            f"num_classes must be in [1, {MAX_CLASSES}] ({len(SHAPES)} shapes x {len(COLOURS)} "
            f"colours x {len(TEXTURES)} textures), got {num_classes}"
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
