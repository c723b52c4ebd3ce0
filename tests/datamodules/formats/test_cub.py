"""CUB-200-2011 reader on a tiny CUB-layout folder written by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from fam_lightning.datamodules.formats.cub import CUBDataset
from fam_lightning.datamodules.formats.cub_metadata import CUB_FILES, read_cub_metadata
from fam_lightning.datamodules.formats.images import IMAGENET_MEAN, IMAGENET_STD
from fam_lightning.datamodules.splits import fewshot_class_split, retrieval_class_split
from tests.datamodules.tiny_data import IMAGES_PER_CLASS, NUM_CLASSES, write_tiny_cub

@pytest.fixture
def cub_root(tmp_path: Path) -> Path:
    return write_tiny_cub(tmp_path / "cub")


def test_metadata_is_parsed_and_aligned(cub_root: Path) -> None:
    meta = read_cub_metadata(cub_root)
    assert len(meta) == NUM_CLASSES * IMAGES_PER_CLASS
    assert meta.image_ids == list(range(1, 25))
    assert meta.paths[0] == "001.Bird_1/img_0.jpg"
    assert meta.class_ids[3] == 2
    assert meta.is_train[:3] == [True, False, False]
    assert meta.boxes_xywh[0] == (20.0, 10.0, 40.0, 30.0)
    assert meta.class_names[1] == "001.Bird_1"
    assert meta.sorted_class_ids == list(range(1, 9))


def test_fewshot_split_follows_chen_et_al() -> None:
    ids = list(range(1, 201))
    base, val, novel = (fewshot_class_split(ids, s) for s in ("base", "val", "novel"))
    assert (len(base), len(val), len(novel)) == (100, 50, 50)
    assert base[:3] == [1, 3, 5] and val[:3] == [2, 6, 10] and novel[:3] == [4, 8, 12]
    assert sorted(base + val + novel) == ids
    assert fewshot_class_split(ids, "train") == base and fewshot_class_split(ids, "test") == novel
    with pytest.raises(ValueError, match="unknown few-shot split 'bogus'"):
        fewshot_class_split(ids, "bogus")


def test_retrieval_split_halves() -> None:
    ids = list(range(1, 201))
    assert retrieval_class_split(ids, "train") == list(range(1, 101))
    assert retrieval_class_split(ids, "test") == list(range(101, 201))


def test_dataset_labels_splits_and_items(cub_root: Path) -> None:
    base = CUBDataset(cub_root, split="base", image_size=32)
    assert base.class_ids == [1, 3, 5, 7]
    assert base.classes == ["Bird_1", "Bird_3", "Bird_5", "Bird_7"]
    assert base.num_classes == 4 and len(base) == 12
    assert base.labels.dtype == torch.long
    assert base.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    item = base[4]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["label"] == 1
    assert CUBDataset(cub_root, split="val").class_ids == [2, 6]
    assert CUBDataset(cub_root, split="novel").class_ids == [4, 8]
    assert len(CUBDataset(cub_root, split="train", protocol="classification")) == NUM_CLASSES


def test_image_is_normalised(cub_root: Path) -> None:
    item = CUBDataset(cub_root, split="base", image_size=16)[1]  # solid colour (30, 80, 100)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = (item["image"] * std + mean) * 255
    assert torch.allclose(pixels.mean((1, 2)), torch.tensor([30.0, 80.0, 100.0]), atol=3.0)


def test_box_is_scaled_with_the_resize(cub_root: Path) -> None:
    item = CUBDataset(cub_root, split="base", image_size=50)[0]  # 200x100, box x=20 y=10 w=40 h=30
    assert torch.allclose(item["box"], torch.tensor([5.0, 5.0, 15.0, 20.0]))


def test_cache_returns_the_same_item(cub_root: Path) -> None:
    dataset = CUBDataset(cub_root, split="base", image_size=24, cache=True)
    first = dataset[2]
    (cub_root / "images" / "001.Bird_1" / "img_2.jpg").unlink()  # a cached item no longer needs its file
    second = dataset[2]
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["box"], second["box"])


def test_missing_root_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.*images.txt"):
        read_cub_metadata(tmp_path / "nowhere")


@pytest.mark.parametrize("name", CUB_FILES)
def test_each_missing_file_is_named(cub_root: Path, name: str) -> None:
    (cub_root / name).unlink()
    with pytest.raises(FileNotFoundError, match=name.replace(".", r"\.")):
        read_cub_metadata(cub_root)


def test_malformed_line_names_file_and_line(cub_root: Path) -> None:
    path = cub_root / "bounding_boxes.txt"
    lines = path.read_text().splitlines()
    lines[2] = "3 1.0 2.0 oops 4.0"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"bounding_boxes\.txt, line 3"):
        read_cub_metadata(cub_root)


def test_ids_missing_from_one_file_are_named(cub_root: Path) -> None:
    path = cub_root / "train_test_split.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-2]) + "\n")
    with pytest.raises(ValueError, match=r"23, 24 .*train_test_split\.txt"):
        read_cub_metadata(cub_root)


def test_corrupt_image_is_named(cub_root: Path) -> None:
    bad = cub_root / "images" / "001.Bird_1" / "img_1.jpg"
    bad.write_bytes(b"this is not a jpeg" * 10)
    dataset = CUBDataset(cub_root, split="base", image_size=16)
    with pytest.raises(ValueError, match="img_1.jpg"):
        dataset[1]


def test_missing_image_is_named(cub_root: Path) -> None:
    (cub_root / "images" / "001.Bird_1" / "img_0.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="img_0.jpg"):
        CUBDataset(cub_root, split="base", image_size=16)[0]


def test_byte_order_mark_in_the_lists_is_not_part_of_the_first_id(cub_root: Path) -> None:
    for name in CUB_FILES:  # every list as Windows Notepad saves it: UTF-8 with a BOM, CRLF
        path = cub_root / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_text().replace("\n", "\r\n").encode())
    meta = read_cub_metadata(cub_root)
    assert meta.image_ids[0] == 1 and meta.class_names[1] == "001.Bird_1" and meta.paths[0] == "001.Bird_1/img_0.jpg"
    assert len(CUBDataset(cub_root, split="base", image_size=16)) == 4 * IMAGES_PER_CLASS


def test_16_bit_greyscale_png_is_scaled_to_8_bits_not_clipped(tmp_path: Path) -> None:
    import numpy as np

    from fam_lightning.datamodules.formats.images import decode_rgb, load_resized_image

    grey8 = np.tile(np.arange(60, 200, dtype=np.uint16), (50, 1))  # 8-bit mean 129.5
    path = tmp_path / "grey16.png"
    Image.fromarray(grey8 * 257).save(path)  # 16-bit PNG: 0 ... 65535
    with Image.open(path) as image:
        assert image.mode.startswith("I;16")
        assert np.asarray(image.convert("RGB")).mean() == 255  # what a plain convert("RGB") makes of it
    decoded = np.asarray(decode_rgb(path))
    assert decoded.shape == (50, 140, 3) and decoded.mean() == pytest.approx(129.5)
    assert (decoded[..., 0] == grey8).all() and (decoded[..., 0] == decoded[..., 2]).all()
    resized, size = load_resized_image(path, 20)
    assert size == (140, 50) and resized.float().mean().item() == pytest.approx(129.5, abs=1.0)
    big_endian = tmp_path / "grey16b.tif"  # I;16B, and a 32-bit integer image (mode I) holding 16-bit values
    Image.frombytes("I;16B", (140, 50), (grey8 * 257).astype(">u2").tobytes()).save(big_endian)
    wide = tmp_path / "grey_i.tif"
    Image.fromarray((grey8 * 257).astype(np.int32), mode="I").save(wide)
    for other in (big_endian, wide):
        assert np.asarray(decode_rgb(other)).mean() == pytest.approx(129.5)
