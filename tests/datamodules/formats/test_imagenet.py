"""ImageNet reader on a tiny ImageNet-layout folder written by hand."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from fam_lightning.datamodules.formats.imagenet import ImageNetDataset, collate_with_boxes
from fam_lightning.datamodules.formats.imagenet_index import read_imagenet_split
from fam_lightning.datamodules.formats.images import IMAGENET_MEAN, IMAGENET_STD
from fam_lightning.datamodules.formats.voc import parse_voc_xml
from tests.datamodules.tiny_data import WNIDS, voc, write_tiny_imagenet

@pytest.fixture
def imagenet_root(tmp_path: Path) -> Path:
    return write_tiny_imagenet(tmp_path / "imagenet")


def test_voc_corners_become_zero_based_exclusive(tmp_path: Path) -> None:
    path = tmp_path / "a.xml"
    path.write_text(voc(500, 375, (1, 1, 500, 375), (101, 51, 200, 150), name="n01440764"))
    annotation = parse_voc_xml(path)
    assert annotation.size == (500, 375)
    # xmin=1 is the first column, xmax=500 the last: the whole 500-pixel-wide image is [0, 500).
    assert annotation.boxes == [(0.0, 0.0, 500.0, 375.0), (100.0, 50.0, 200.0, 150.0)]
    assert annotation.names == ["n01440764", "n01440764"]


def test_reader_lists_classes_labels_and_paths_in_order(imagenet_root: Path) -> None:
    train = read_imagenet_split(imagenet_root, "train")
    assert train.wnids == WNIDS and train.class_names == WNIDS
    assert len(train) == 9 and train.labels == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [p.name for p in train.paths[:3]] == ["t_0.JPEG", "t_1.JPEG", "t_2.JPEG"]
    assert train.paths[0] == imagenet_root / "train" / WNIDS[0] / "t_0.JPEG"
    # Val lacks class 3, yet keeps the training label order.
    val = read_imagenet_split(imagenet_root, "val")
    assert val.wnids == WNIDS and val.labels == [0, 0, 1, 1]


def test_boxes_are_found_beside_the_image_and_in_the_boxes_folder(imagenet_root: Path) -> None:
    train = read_imagenet_split(imagenet_root, "train")
    assert train.boxes[0] == [(20.0, 10.0, 60.0, 40.0), (0.0, 0.0, 200.0, 100.0)]
    assert train.box_sizes[0] == (200, 100) and train.box_files[0] == imagenet_root / "train" / WNIDS[0] / "t_0.xml"
    assert train.boxes[1:] == [[]] * 8 and train.box_sizes[1] is None and train.box_files[1] is None
    val = read_imagenet_split(imagenet_root, "val")
    assert [len(b) for b in val.boxes] == [0, 1, 0, 1]
    assert val.box_files[1] == imagenet_root / "boxes" / "val" / WNIDS[0] / "v_1.xml"
    assert read_imagenet_split(imagenet_root, "train", read_boxes=False).boxes[0] == []


def test_ilsvrc_flat_annotation_folder_is_searched(imagenet_root: Path, tmp_path: Path) -> None:
    # ILSVRC ships val annotations flat: Annotations/CLS-LOC/val/<stem>.xml.
    annotations = tmp_path / "Annotations" / "CLS-LOC"
    (annotations / "val").mkdir(parents=True)
    (annotations / "val" / "v_0.xml").write_text(voc(60, 40, (1, 1, 10, 10)))
    val = read_imagenet_split(imagenet_root, "val", boxes_dir=annotations)
    assert val.boxes[0] == [(0.0, 0.0, 10.0, 10.0)] and val.boxes[2] == [(0.0, 0.0, 10.0, 10.0)]
    assert val.boxes[1] == []  # root/boxes is not searched once boxes_dir is given


def test_item_boxes_are_scaled_with_the_resize(imagenet_root: Path) -> None:
    dataset = ImageNetDataset(imagenet_root, "train", image_size=50)
    item = dataset[0]  # 200x100 -> 50x50: x / 4, y / 2
    assert item["image"].shape == (3, 50, 50) and item["image"].dtype == torch.float32
    assert item["label"] == 0 and item["index"] == 0
    assert item["boxes"].dtype == torch.float32
    assert torch.equal(item["boxes"], torch.tensor([[5.0, 5.0, 15.0, 20.0], [0.0, 0.0, 50.0, 50.0]]))
    assert dataset[4]["boxes"].shape == (0, 4) and dataset[4]["index"] == 4 and dataset[4]["label"] == 1


def test_xml_size_scales_boxes_of_pre_resized_images(imagenet_root: Path) -> None:
    # A copy stored at half size keeps the original annotation: the XML <size> says what the box refers to.
    path = imagenet_root / "train" / WNIDS[0] / "t_0.JPEG"
    Image.new("RGB", (100, 50), (0, 0, 0)).save(path)
    item = ImageNetDataset(imagenet_root, "train", image_size=50)[0]
    assert torch.equal(item["boxes"][0], torch.tensor([5.0, 5.0, 15.0, 20.0]))


def test_boxes_without_size_use_the_image_and_are_clipped(imagenet_root: Path) -> None:
    xml = imagenet_root / "train" / WNIDS[1] / "t_0.xml"  # the image is 60x40
    xml.write_text("<annotation><object><bndbox><xmin>0</xmin><ymin>31</ymin><xmax>70</xmax><ymax>40</ymax>"
                   "</bndbox></object></annotation>")
    item = ImageNetDataset(imagenet_root, "train", image_size=30)[3]
    assert torch.allclose(item["boxes"], torch.tensor([[0.0, 22.5, 30.0, 30.0]]))


def test_dataset_attributes_and_normalisation(imagenet_root: Path) -> None:
    (imagenet_root / "LOC_synset_mapping.txt").write_text("n00000001 tench, Tinca tinca\nn00000002 goldfish\n")
    dataset = ImageNetDataset(imagenet_root, "train", image_size=16, with_boxes=False)
    assert dataset.classes == WNIDS and dataset.num_classes == 3 and len(dataset) == 9
    assert dataset.class_names == ["tench, Tinca tinca", "goldfish", "n00000003"]
    assert dataset.labels.dtype == torch.long and dataset.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    item = dataset[4]  # solid colour (80, 60, 100)
    assert set(item) == {"image", "label", "index"}
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    pixels = (item["image"] * std + mean) * 255
    assert torch.allclose(pixels.mean((1, 2)), torch.tensor([80.0, 60.0, 100.0]), atol=3.0)


def test_cache_returns_the_same_item(imagenet_root: Path) -> None:
    dataset = ImageNetDataset(imagenet_root, "train", image_size=24, cache=True)
    first = dataset[0]
    (imagenet_root / "train" / WNIDS[0] / "t_0.JPEG").unlink()
    second = dataset[0]
    assert torch.equal(first["image"], second["image"]) and torch.equal(first["boxes"], second["boxes"])


def test_collate_keeps_boxes_as_a_list(imagenet_root: Path) -> None:
    dataset = ImageNetDataset(imagenet_root, "train", image_size=20)
    batch = collate_with_boxes([dataset[i] for i in (0, 1, 5)])
    assert batch["image"].shape == (3, 3, 20, 20)
    assert batch["label"].tolist() == [0, 0, 1] and batch["index"].tolist() == [0, 1, 5]
    assert batch["label"].dtype == torch.long
    assert [tuple(b.shape) for b in batch["boxes"]] == [(2, 4), (0, 4), (0, 4)]
    with pytest.raises(ValueError, match="item 1 has keys"):
        collate_with_boxes([dataset[0], {"image": dataset[1]["image"]}])


def test_missing_root_and_split_are_named(imagenet_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_imagenet_split(tmp_path / "nowhere", "train")
    shutil.rmtree(imagenet_root / "val")
    with pytest.raises(FileNotFoundError, match=r"imagenet/val is missing"):
        ImageNetDataset(imagenet_root, "val")
    with pytest.raises(ValueError, match="unknown ImageNet split 'test'"):
        read_imagenet_split(imagenet_root, "test")


def test_class_folder_without_images_is_named(imagenet_root: Path) -> None:
    (imagenet_root / "train" / "n00000009").mkdir()
    (imagenet_root / "train" / "n00000009" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"class folder .*train/n00000009 has no images"):
        read_imagenet_split(imagenet_root, "train")


def test_val_class_unknown_to_training_is_named(imagenet_root: Path) -> None:
    (imagenet_root / "val" / "n00000042").mkdir()
    Image.new("RGB", (8, 8)).save(imagenet_root / "val" / "n00000042" / "x.JPEG")
    with pytest.raises(ValueError, match=r"n00000042.*not among the 3 training classes"):
        read_imagenet_split(imagenet_root, "val")


def test_flat_val_layout_is_refused_with_advice(imagenet_root: Path) -> None:
    Image.new("RGB", (8, 8)).save(imagenet_root / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(ValueError, match=r"ILSVRC2012_val_00000001\.JPEG.*flat ILSVRC val layout"):
        read_imagenet_split(imagenet_root, "val")


def test_corrupt_image_is_named(imagenet_root: Path) -> None:
    (imagenet_root / "train" / WNIDS[0] / "t_2.JPEG").write_bytes(b"this is not a jpeg" * 10)
    dataset = ImageNetDataset(imagenet_root, "train", image_size=16)
    with pytest.raises(ValueError, match=r"cannot decode image .*t_2\.JPEG"):
        dataset[2]


def test_malformed_xml_is_named(imagenet_root: Path) -> None:
    (imagenet_root / "boxes" / "val" / WNIDS[1] / "v_1.xml").write_text("<annotation><object>")
    with pytest.raises(ValueError, match=r"malformed VOC annotation file .*v_1\.xml"):
        read_imagenet_split(imagenet_root, "val")


@pytest.mark.parametrize(
    ("bndbox", "message"),
    [
        ("<xmin>1</xmin><ymin>1</ymin><xmax>9</xmax>", r"object 2 has no <ymax>"),
        ("<xmin>1</xmin><ymin>1</ymin><xmax>nine</xmax><ymax>9</ymax>", r"object 2 <xmax> is not a number: 'nine'"),
        ("<xmin>9</xmin><ymin>1</ymin><xmax>3</xmax><ymax>9</ymax>", r"object 2 has xmax < xmin"),
    ],
)
def test_bad_box_names_file_and_object(tmp_path: Path, bndbox: str, message: str) -> None:
    path = tmp_path / "bad.xml"
    good = "<object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
    path.write_text(f"<annotation>{good}<object><bndbox>{bndbox}</bndbox></object></annotation>")
    with pytest.raises(ValueError, match=r"bad\.xml: " + message):
        parse_voc_xml(path)
