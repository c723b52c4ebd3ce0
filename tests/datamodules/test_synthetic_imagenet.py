"""Synthetic ImageNet-layout writer: determinism, atomic writes, tight boxes, readable by the ImageNet reader."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import synthetic
from datamodules.imagenet import ImageNetDataset, read_imagenet_split
from datamodules.synthetic import MARKER_FILE, synthetic_classes, write_synthetic_cub
from datamodules.synthetic_imagenet import (
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

    monkeypatch.setattr(synthetic, "render_sample", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        write_synthetic_imagenet(tmp_path / "imagenet", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_boxes_are_tight_and_objects_apart() -> None:
    classes = synthetic_classes(8, seed=0)
    two = 0
    for k in range(60):
        sample = render_imagenet_sample(classes[k % 8], 64, np.random.default_rng([5, k]))
        assert len(sample.masks) == len(sample.boxes) in (1, 2)
        two += len(sample.boxes) == 2
        for mask, (x0, y0, x1, y1) in zip(sample.masks, sample.boxes):
            ys, xs = np.nonzero(mask)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
        if len(sample.boxes) == 2:
            (a0, b0, a1, b1), (c0, d0, c1, d1) = sample.boxes
            assert a1 <= c0 or c1 <= a0 or b1 <= d0 or d1 <= b0  # the boxes do not meet
    assert 3 <= two <= 25


def test_second_object_is_composited_through_its_mask() -> None:
    spec = synthetic_classes(8, seed=0)[2]
    for k in range(40):
        sample = render_imagenet_sample(spec, 64, np.random.default_rng([6, k]))
        if len(sample.boxes) == 2:
            break
    else:
        pytest.fail("no two-object image in 40 draws")
    # Redraw both objects from the same stream: the image is the first drawing with the second
    # object's pixels moved onto it; uncovered pixels are untouched, fully covered ones are the object's.
    rng = np.random.default_rng([6, k])
    rng.random()
    first = synthetic.render_sample(spec, 64, rng)
    nx, ny, nx1, ny1 = sample.boxes[1]
    for _ in range(4):  # second objects that found no room were redrawn
        second = synthetic.render_sample(spec, 64, rng)
        x, y, w, h = second.box_xywh
        if (w, h) == (nx1 - nx, ny1 - ny):
            break
    moved = np.zeros_like(second.image)
    moved[ny : ny + h, nx : nx + w] = second.image[y : y + h, x : x + w]
    assert np.array_equal(sample.masks[1][ny : ny + h, nx : nx + w], second.mask[y : y + h, x : x + w])
    assert np.array_equal(sample.boxes[0], np.add(first.box_xywh, [0, 0, *first.box_xywh[:2]]))
    covered, untouched = sample.masks[1] == 255, sample.masks[1] == 0
    assert covered.any()
    assert np.array_equal(sample.image[untouched], first.image[untouched])
    assert np.array_equal(sample.image[covered], moved[covered])


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
    assert root.name.startswith("synthetic_imagenet-c5-tr7-va2-s32-seed9-v")
    assert default_synthetic_imagenet_root().name.startswith("synthetic_imagenet-c10-tr60-va20-s96-seed0-v")
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
