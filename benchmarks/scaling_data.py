"""``scaling.py --parts data``: ImageNet-layout setup (listing, existence, XML boxes, header / box checks) on
10 k / 100 k / 300 k hard-linked tiny files under /tmp (see :mod:`benchmarks.scaling`)."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from pathlib import Path

CLASSES = 1000


def _tiny_jpeg() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 30, 200)).save(out, "JPEG")
    return out.getvalue()


XML = ("<annotation><size><width>8</width><height>8</height></size><object><name>{wnid}</name>"
       "<bndbox><xmin>2</xmin><ymin>2</ymin><xmax>7</xmax><ymax>7</ymax></bndbox></object></annotation>")


def _grow(root: Path, total: int, jpeg: bytes) -> float:
    """Add files until ``root/train`` holds ``total`` images (and as many XML boxes); returns seconds.

    Every image is a hard link to its class's ``root/sources/<wnid>.JPEG`` and every box one to its class's
    ``root/sources/<wnid>.xml`` (outside the listed folders; one source per class: ext4 allows 65 000 links
    to a file).
    """
    start = time.perf_counter()
    sources = root / "sources"
    sources.mkdir(exist_ok=True)
    classes = min(CLASSES, total)
    per_class = total // classes
    for c in range(classes):
        wnid = f"n{c:08d}"
        images, boxes = root / "train" / wnid, root / "boxes" / "train" / wnid
        images.mkdir(parents=True, exist_ok=True)
        boxes.mkdir(parents=True, exist_ok=True)
        have = len(os.listdir(images))
        image_source, xml_source = sources / f"{wnid}.JPEG", sources / f"{wnid}.xml"
        if not xml_source.exists():
            image_source.write_bytes(jpeg)
            xml_source.write_bytes(XML.format(wnid=wnid).encode())
        for i in range(have, per_class):
            stem = f"{wnid}_{i:06d}"
            os.link(image_source, images / f"{stem}.JPEG")
            os.link(xml_source, boxes / f"{stem}.xml")
    return time.perf_counter() - start


def _best_of(fn, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def part_data(sizes: tuple[int, ...]) -> list[tuple[str, list[int], list[float], str]]:
    from fam_lightning.datamodules.formats.imagenet_index import check_imagenet_index, read_imagenet_split

    root = Path(tempfile.mkdtemp(prefix="fam_scaling_", dir="/tmp"))
    jpeg = _tiny_jpeg()
    listing, boxed = [], []
    try:
        for n in sizes:
            written = _grow(root, n, jpeg)
            index = read_imagenet_split(root, "train", read_boxes=False)
            assert len(index) == n, (len(index), n)

            def train_setup() -> None:  # what ContrastiveDataModule does for the training split
                check_imagenet_index(read_imagenet_split(root, "train", read_boxes=False))

            def boxed_setup() -> None:  # a split with boxes: XML parsing, header reads, box checks
                checked = check_imagenet_index(read_imagenet_split(root, "train", boxes_dir=root / "boxes"))
                assert sum(len(b) for b in checked.boxes) == n

            listing.append(_best_of(train_setup))
            boxed.append(_best_of(boxed_setup, repeats=1))
            print(f"  data {n:>9,d} files (written in {written:6.1f} s): listing + existence {listing[-1]:7.2f} s, "
                  f"with XML boxes + header / box checks {boxed[-1]:7.2f} s", flush=True)
    finally:
        start = time.perf_counter()
        shutil.rmtree(root, ignore_errors=True)
        print(f"  data: {sizes[-1]:,d} images + boxes deleted in {time.perf_counter() - start:.1f} s", flush=True)
    return [
        ("data setup: listing + existence check (training split)", list(sizes), listing, "s"),
        ("data setup: listing + XML boxes + header / box checks", list(sizes), boxed, "s"),
    ]
