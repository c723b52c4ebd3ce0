"""Up-front data checks: every problem of a data set found at setup and reported together.

- :func:`check_files_exist`: one ``stat`` per listed file (no decode); ONE
  error listing the missing ones (the first 20 and the count).
- :func:`read_image_sizes`: ``(width, height)`` from each image's header (PIL
  opens lazily: nothing is decoded); unreadable headers are one error.
- :func:`check_boxes`: boxes against their image's size. A box partly outside
  is clipped, with ONE warning giving the count and an example; a box with no
  area inside its image is an error naming the file and line (all of them
  together).
- :func:`check_aspect_ratios`: a PASCAL-VOC ``<size>`` whose aspect ratio
  contradicts the image file's warns (the boxes were drawn on another image).
- :func:`verify_images`: opt-in full decode of every image, all broken ones
  in one error.

Sets larger than :data:`PROGRESS_MIN_ITEMS` show a progress bar on stderr.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from PIL import Image
from tqdm import tqdm

from .geometry import Box

T = TypeVar("T")

PROGRESS_MIN_ITEMS = 5000
SHOWN = 20
# Relative difference of width / height ratios beyond which a VOC <size> is taken to describe another image.
ASPECT_TOLERANCE = 0.02


class DataCheckWarning(UserWarning):
    """A data defect that was repaired (a clipped box) or may be harmless (a resized copy)."""


def _progress(items: Sequence[T], what: str) -> Iterator[T]:
    return iter(tqdm(items, desc=what, unit="file", disable=len(items) < PROGRESS_MIN_ITEMS, leave=False))


def _listing(lines: Sequence[str], total: int) -> str:
    shown = "\n  ".join(lines[:SHOWN])
    more = f"\n  ... and {total - SHOWN} more" if total > SHOWN else ""
    return f"\n  {shown}{more}"


def check_files_exist(paths: Sequence[Path], what: str) -> None:
    """Stat every file of ``paths``.

    Raises:
        FileNotFoundError: Listing every missing file (first 20, then the count).
    """
    missing = [str(p) for p in _progress(paths, f"checking {what}") if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {len(paths)} {what} are missing:{_listing(missing, len(missing))}"
        )


# JPEG start-of-frame markers (they hold the image size); 0xC4 (DHT), 0xC8 (JPG), 0xCC (DAC) are not frames.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _header_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` of a JPEG (first start-of-frame) or PNG (IHDR) read from its header.

    The same numbers ``PIL.Image.open(path).size`` gives, at about a fifth of its cost: the
    JPEG's marker segments are skipped by their lengths, nothing else is parsed. None for any
    other format or anything unexpected; the caller then asks PIL (which names the problem).
    """
    with open(path, "rb") as f:
        head = f.read(24)
        if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
            width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
            return (width, height) if width > 0 and height > 0 else None
        if head[:2] != b"\xff\xd8":
            return None
        f.seek(2)
        while True:
            marker = f.read(2)
            if len(marker) < 2 or marker[0] != 0xFF:
                return None
            code = marker[1]
            if code == 0xFF:  # fill byte
                f.seek(-1, 1)
                continue
            if code == 0x01 or 0xD0 <= code <= 0xD8:  # markers without a length
                continue
            if code in (0xD9, 0xDA):  # end of image / start of scan before any frame
                return None
            length = f.read(2)
            if len(length) < 2:
                return None
            size = int.from_bytes(length, "big")
            if code in _JPEG_SOF:
                frame = f.read(5)
                if len(frame) < 5:
                    return None
                height, width = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big")
                return (width, height) if width > 0 and height > 0 else None
            if size < 2:
                return None
            f.seek(size - 2, 1)


def read_image_sizes(paths: Sequence[Path], what: str) -> list[tuple[int, int]]:
    """``(width, height)`` of every image from its header, nothing decoded.

    JPEG and PNG headers are read directly (:func:`_header_size`); other formats and any
    header that does not parse go through PIL, which names what is wrong.

    Raises:
        ValueError: Listing every file whose header cannot be read.
    """
    sizes: list[tuple[int, int]] = []
    broken: list[str] = []
    for path in _progress(paths, f"reading {what} sizes"):
        try:
            size = _header_size(path)
            if size is None:
                with Image.open(path) as image:
                    size = image.size
            sizes.append(size)
        except (OSError, SyntaxError, Image.DecompressionBombError) as err:
            broken.append(f"{path}: {err}")
            sizes.append((0, 0))
    if broken:
        raise ValueError(f"{len(broken)} of {len(paths)} {what} are not readable images:{_listing(broken, len(broken))}")
    return sizes


def check_boxes(
    boxes: Sequence[Sequence[Box]], sizes: Sequence[tuple[int, int]], sources: Sequence[str], what: str
) -> list[list[Box]]:
    """Check ``(x0, y0, x1, y1)`` boxes (exclusive ends) against ``(width, height)`` of their image.

    Args:
        boxes: Per image, its boxes in the pixels of ``sizes``.
        sizes: Per image, the size the boxes refer to.
        sources: Per image, where its boxes come from, e.g. "bounding_boxes.txt, line 12 (images/a.jpg)".
        what: The data set, for messages.

    Returns:
        The boxes, those partly outside clipped to their image.

    Raises:
        ValueError: Naming every box with no area inside its image.
    """
    clipped: list[list[Box]] = []
    outside: list[str] = []
    repaired: list[str] = []
    for image_boxes, (width, height), source in zip(boxes, sizes, sources):
        kept = []
        for number, box in enumerate(image_boxes, start=1):
            where = f"{source}, object {number}" if len(image_boxes) > 1 else source
            x0, y0, x1, y1 = box
            inside = (max(0.0, min(x0, width)), max(0.0, min(y0, height)), max(0.0, min(x1, width)), max(0.0, min(y1, height)))
            if inside[2] <= inside[0] or inside[3] <= inside[1]:
                outside.append(f"{where}: box {_fmt(box)} has no area inside the {width}x{height} image")
            elif inside != tuple(box):
                repaired.append(f"{where}: {_fmt(box)} -> {_fmt(inside)} in the {width}x{height} image")
            kept.append(inside)
        clipped.append(kept)
    if outside:
        raise ValueError(
            f"{len(outside)} boxes of {what} have no area inside their image:{_listing(outside, len(outside))}"
        )
    if repaired:
        warnings.warn(
            f"{len(repaired)} boxes of {what} reach outside their image and were clipped to it, e.g. {repaired[0]}",
            DataCheckWarning,
            stacklevel=2,
        )
    return clipped


def check_aspect_ratios(
    declared: Sequence[tuple[int, int] | None], actual: Sequence[tuple[int, int]], sources: Sequence[str], what: str
) -> None:
    """Warn when a declared (VOC ``<size>``) aspect ratio contradicts the image file's (one warning, count + example)."""
    bad = []
    for size, (width, height), source in zip(declared, actual, sources):
        if size is None or width <= 0 or height <= 0:
            continue
        ratio, real = size[0] / size[1], width / height
        if abs(ratio - real) > ASPECT_TOLERANCE * real:
            bad.append(f"{source} says {size[0]}x{size[1]} but the image is {width}x{height}")
    if bad:
        warnings.warn(
            f"{len(bad)} annotation sizes of {what} contradict their image's aspect ratio (boxes drawn on another "
            f"image? they are scaled by the annotation's size), e.g. {bad[0]}",
            DataCheckWarning,
            stacklevel=2,
        )


def verify_images(paths: Sequence[Path], what: str) -> None:
    """Decode every image once (slow: opt-in).

    Raises:
        ValueError: Listing every image that fails to decode.
    """
    broken = []
    for path in tqdm(paths, desc=f"decoding {what}", unit="image", disable=len(paths) < 100, leave=False):
        try:
            with Image.open(path) as image:
                image.convert("RGB")
        except (OSError, SyntaxError, Image.DecompressionBombError) as err:
            broken.append(f"{path}: {err}")
    if broken:
        raise ValueError(f"{len(broken)} of {len(paths)} {what} cannot be decoded:{_listing(broken, len(broken))}")


def _fmt(box: Iterable[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in box) + ")"
