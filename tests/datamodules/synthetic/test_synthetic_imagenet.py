"""Synthetic ImageNet-layout writer: determinism, atomic writes, class-object boxes, readable by the ImageNet reader."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fam_lightning.datamodules.synthetic import drawing
from fam_lightning.datamodules.formats.imagenet import ImageNetDataset
from fam_lightning.datamodules.formats.imagenet_index import read_imagenet_split
from fam_lightning.datamodules.synthetic.cub_layout import write_synthetic_cub
from fam_lightning.datamodules.synthetic.drawing import synthetic_classes
from fam_lightning.datamodules.synthetic.folder import MARKER_FILE
from fam_lightning.datamodules.synthetic.imagenet_layout import (
    default_synthetic_imagenet_root,
    image_rng,
    render_imagenet_sample,
    write_synthetic_imagenet,
)

TINY = {"num_classes": 4, "train_per_class": 8, "val_per_class": 3, "image_size": 40, "seed": 3}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_imagenet(tmp_path_factory.mktemp("synthetic_imagenet") / "imagenet", **TINY)


def _text_files(root: Path) -> dict[Path, bytes]:
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.suffix in (".xml", ".txt")}


def test_layout_is_read_by_the_imagenet_reader(tiny_root: Path) -> None:
    train = read_imagenet_split(tiny_root, "train")
    val = read_imagenet_split(tiny_root, "val")
    assert train.wnids == ["n00000001", "n00000002", "n00000003", "n00000004"]
    assert train.class_names == [c.name for c in synthetic_classes(4, seed=3)]
    assert len(train) == 4 * 8 and len(val) == 4 * 3
    assert train.paths[0].relative_to(tiny_root).as_posix() == "train/n00000001/n00000001_0001.JPEG"
    assert val.paths[3].relative_to(tiny_root).as_posix() == "val/n00000002/ILSVRC2012_val_00000004.JPEG"
    assert val.box_files[3] == tiny_root / "boxes" / "val" / "n00000002" / "ILSVRC2012_val_00000004.xml"
    # Every image has its boxes; some have two (the writer's multi-object images).
    counts = [len(b) for b in train.boxes + val.boxes]
    assert set(counts) == {1, 2}
    assert all(size == (40, 40) for size in train.box_sizes + val.box_sizes)


def test_writer_is_deterministic(tmp_path: Path, tiny_root: Path) -> None:
    again = write_synthetic_imagenet(tmp_path / "again", **TINY)
    assert _text_files(again) == _text_files(tiny_root)
    for path in sorted(tiny_root.rglob("*.JPEG"))[::5]:
        twin = again / path.relative_to(tiny_root)
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(twin)))


def test_writing_leaves_no_temporary_folder(tiny_root: Path) -> None:
    assert [p.name for p in tiny_root.parent.iterdir()] == [tiny_root.name]


def test_complete_root_is_reused_untouched(tiny_root: Path) -> None:
    marker = tiny_root / MARKER_FILE
    before = (tiny_root.stat().st_mtime_ns, marker.stat().st_mtime_ns)
    assert write_synthetic_imagenet(tiny_root, **TINY) == tiny_root
    assert (tiny_root.stat().st_mtime_ns, marker.stat().st_mtime_ns) == before


def test_root_with_other_parameters_is_refused(tiny_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="written with"):
        write_synthetic_imagenet(tiny_root, **{**TINY, "seed": 4})
    cub = write_synthetic_cub(tmp_path / "cub", num_classes=2, images_per_class=2, image_size=16)
    with pytest.raises(ValueError, match="written with"):
        write_synthetic_imagenet(cub, **TINY)


def test_incomplete_root_is_not_mistaken_for_data(tmp_path: Path) -> None:
    (tmp_path / "imagenet" / "train").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a complete synthetic data set"):
        write_synthetic_imagenet(tmp_path / "imagenet", **TINY)


def test_failed_write_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(drawing, "render_scene", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        write_synthetic_imagenet(tmp_path / "imagenet", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_only_class_objects_are_boxed_among_distractors() -> None:
    classes = synthetic_classes(8, seed=0)
    two = 0
    for k in range(60):
        spec = classes[k % 8]
        scene = render_imagenet_sample(spec, 64, np.random.default_rng([5, k]))
        assert len(scene.masks) == len(scene.boxes) in (1, 2)
        assert all(o.spec == spec for o in scene.objects if o.annotated)
        assert len(scene.distractors) >= 2 and all(o.spec != spec for o in scene.distractors)
        two += len(scene.boxes) == 2
        boxed = np.zeros((64, 64), dtype=bool)
        for mask, (x0, y0, x1, y1) in zip(scene.masks, scene.boxes):
            ys, xs = np.nonzero(mask)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
            boxed[y0:y1, x0:x1] = True
        # Distractors are drawn, but nowhere inside a box.
        for distractor in scene.distractors:
            assert distractor.mask.any() and not (distractor.mask[boxed] > 0).any()
    assert 3 <= two <= 25


def test_distractors_reach_the_xml_files_only_as_pixels(tmp_path: Path) -> None:
    params = {**TINY, "num_classes": 2, "train_per_class": 3, "val_per_class": 2}
    root = write_synthetic_imagenet(tmp_path / "d5", **params, distractors=5)
    assert json.loads((root / MARKER_FILE).read_text())["params"]["distractors"] == 5
    scene = render_imagenet_sample(synthetic_classes(2, seed=3)[1], 40, image_rng(3, "val", 1, 0), distractors=5)
    item = ImageNetDataset(root, "val", image_size=40)[2]
    assert torch.equal(item["boxes"], torch.tensor(scene.boxes, dtype=torch.float32))
    assert len(scene.distractors) >= 3
    with pytest.raises(ValueError, match="written with"):
        write_synthetic_imagenet(root, **params, distractors=0)


def test_written_boxes_match_the_drawing(tiny_root: Path) -> None:
    dataset = ImageNetDataset(tiny_root, "val", image_size=40)  # stored at 40: resize is the identity
    spec = synthetic_classes(4, seed=3)[2]
    for k in range(3):
        sample = render_imagenet_sample(spec, 40, image_rng(3, "val", 2, k))
        item = dataset[2 * 3 + k]
        assert item["label"] == 2 and item["index"] == 6 + k
        assert torch.equal(item["boxes"], torch.tensor(sample.boxes, dtype=torch.float32))
    half = ImageNetDataset(tiny_root, "val", image_size=20)[6]["boxes"]
    assert torch.equal(half, dataset[6]["boxes"] / 2)


def test_default_root_names_every_parameter(tmp_path: Path) -> None:
    root = default_synthetic_imagenet_root(
        tmp_path, num_classes=5, train_per_class=7, val_per_class=2, image_size=32, seed=9
    )
    assert root.parent == tmp_path
    assert root.name.startswith("synthetic_imagenet-c5-tr7-va2-s32-d3-seed9-v")
    assert default_synthetic_imagenet_root().name.startswith("synthetic_imagenet-c10-tr60-va20-s96-d3-seed0-v")
    assert default_synthetic_imagenet_root("data") != default_synthetic_imagenet_root("data", distractors=0)
    assert default_synthetic_imagenet_root("data") != default_synthetic_imagenet_root("data", seed=1)
    with pytest.raises(TypeError, match="bogus"):
        default_synthetic_imagenet_root("data", bogus=1)


def test_bad_parameters_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_classes.*1000"):
        write_synthetic_imagenet(tmp_path / "x", num_classes=1000)
    with pytest.raises(ValueError, match="val_per_class.*0"):
        write_synthetic_imagenet(tmp_path / "x", val_per_class=0)
    assert not os.listdir(tmp_path)


def test_marker_records_parameters_and_wnids(tiny_root: Path) -> None:
    marker = json.loads((tiny_root / MARKER_FILE).read_text())
    assert marker["params"]["layout"] == "imagenet" and marker["params"]["train_per_class"] == 8
    assert [c["wnid"] for c in marker["classes"]] == ["n00000001", "n00000002", "n00000003", "n00000004"]
