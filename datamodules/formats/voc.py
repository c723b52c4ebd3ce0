"""PASCAL-VOC annotation files: the boxes of an image, 0-based with exclusive ends.

VOC corners are 1-based and inclusive: ``xmin = 1`` is the first pixel column and ``xmax`` the last
one covered. They become ``(x0, y0, x1, y1)`` 0-based with exclusive ends, ``x0 = xmin - 1``,
``x1 = xmax`` (so the width is ``xmax - xmin + 1``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from .geometry import Box


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
