"""Tiny data folders written by hand, shared by the data tests: a CUB-layout and an ImageNet-layout one."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from fam_lightning.datamodules.formats.cub_metadata import CUB_FILES

NUM_CLASSES = 8
IMAGES_PER_CLASS = 3


def write_tiny_cub(root: Path) -> Path:
    """8 classes x 3 images; image 1 is 200x100 with box (20, 10, 40, 30), the rest 60x40."""
    lines = {name: [] for name in CUB_FILES}
    for c in range(1, NUM_CLASSES + 1):
        folder = f"{c:03d}.Bird_{c}"
        (root / "images" / folder).mkdir(parents=True)
        lines["classes.txt"].append(f"{c} {folder}")
        for k in range(IMAGES_PER_CLASS):
            image_id = (c - 1) * IMAGES_PER_CLASS + k + 1
            size = (200, 100) if image_id == 1 else (60, 40)
            colour = (c * 30 % 256, k * 80, 100)
            Image.new("RGB", size, colour).save(root / "images" / folder / f"img_{k}.jpg", quality=95)
            box = (20.0, 10.0, 40.0, 30.0) if image_id == 1 else (5.0, 4.0, 30.0, 20.0)
            lines["images.txt"].append(f"{image_id} {folder}/img_{k}.jpg")
            lines["image_class_labels.txt"].append(f"{image_id} {c}")
            lines["train_test_split.txt"].append(f"{image_id} {int(k == 0)}")
            lines["bounding_boxes.txt"].append(f"{image_id} " + " ".join(f"{v:.1f}" for v in box))
    for name, content in lines.items():
        (root / name).write_text("\n".join(content) + "\n")
    return root


WNIDS = ["n00000001", "n00000002", "n00000003"]


def voc(width: int, height: int, *boxes: tuple[int, int, int, int], name: str = "n00000001") -> str:
    """A VOC annotation; ``boxes`` as VOC writes them: (xmin, ymin, xmax, ymax), 1-based, inclusive."""
    objects = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax>"
        "</bndbox></object>"
        for a, b, c, d in boxes
    )
    size = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
    return f"<annotation>{size}{objects}</annotation>"


def write_tiny_imagenet(root: Path) -> Path:
    """3 classes x 3 train images, 2 val images each (class 3 has no val folder).

    train/n00000001/a_0.JPEG is 200x100 with two boxes in an XML file beside it;
    val boxes live in root/boxes/val/<wnid>/; every other image is 60x40.
    """
    for c, wnid in enumerate(WNIDS):
        for split, count in (("train", 3), ("val", 2 if c < 2 else 0)):
            if count == 0:
                continue
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for k in range(count):
                size = (200, 100) if (split, c, k) == ("train", 0, 0) else (60, 40)
                Image.new("RGB", size, (c * 80, k * 60, 100)).save(folder / f"{split[0]}_{k}.JPEG", quality=95)
    (root / "train" / WNIDS[0] / "t_0.xml").write_text(voc(200, 100, (21, 11, 60, 40), (1, 1, 200, 100)))
    for wnid in WNIDS[:2]:
        (root / "boxes" / "val" / wnid).mkdir(parents=True)
        (root / "boxes" / "val" / wnid / "v_1.xml").write_text(voc(60, 40, (7, 5, 30, 20), name=wnid))
    return root
