"""CUB-200-2011 metadata: the five text files parsed, cross-checked, and checked against the images.

The folder layout is the one CUB-200-2011 ships with::

    root/
      images.txt              <image_id> <relative path under images/>
      image_class_labels.txt  <image_id> <class_id>
      train_test_split.txt    <image_id> <is_train: 0 | 1>
      bounding_boxes.txt      <image_id> <x> <y> <width> <height>   (floats, pixels)
      classes.txt             <class_id> <name>
      images/<NNN.class_name>/<file>.jpg
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import checks

CUB_FILES: tuple[str, ...] = (
    "images.txt",
    "image_class_labels.txt",
    "train_test_split.txt",
    "bounding_boxes.txt",
    "classes.txt",
)


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
