"""Synthetic CUB-layout writer: determinism, atomic writes, tight boxes, readable by the CUB reader."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import synthetic
from datamodules.cub import CUB_FILES, CUBDataset, read_cub_metadata
from datamodules.synthetic import (
    MARKER_FILE,
    default_synthetic_root,
    render_sample,
    synthetic_classes,
    write_synthetic_cub,
)

TINY = {"num_classes": 8, "images_per_class": 6, "image_size": 40, "seed": 3}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_cub(tmp_path_factory.mktemp("synthetic") / "cub", **TINY)


def test_layout_is_read_by_the_cub_reader(tiny_root: Path) -> None:
    meta = read_cub_metadata(tiny_root)
    assert len(meta) == 8 * 6 and len(meta.class_names) == 8
    assert meta.image_ids == list(range(1, 49))
    assert all((tiny_root / "images" / p).is_file() for p in meta.paths)
    assert meta.class_names[1].startswith("001.")
    dataset = CUBDataset(tiny_root, split="base", image_size=40)
    assert dataset.classes[0] == synthetic_classes(8, seed=3)[0].name
    assert dataset[0]["image"].shape == (3, 40, 40)


def test_classes_are_distinct_compositions() -> None:
    classes = synthetic_classes(64, seed=0)
    assert len({c.name for c in classes}) == 64
    assert all(len(c.name.split("_")) == 3 for c in classes)
    base, others = classes[0::2], classes[1::2]
    for attribute in ("shape", "colour", "texture"):
        assert {getattr(c, attribute) for c in others} <= {getattr(c, attribute) for c in base}
    assert synthetic_classes(64, seed=0) == classes
    assert synthetic_classes(64, seed=1) != classes


def test_writer_is_deterministic(tmp_path: Path, tiny_root: Path) -> None:
    again = write_synthetic_cub(tmp_path / "again", **TINY)
    for name in CUB_FILES:
        assert (again / name).read_bytes() == (tiny_root / name).read_bytes()
    for path in sorted((tiny_root / "images").rglob("*.jpg"))[::7]:
        twin = again / path.relative_to(tiny_root)
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(twin)))


def test_writing_leaves_no_temporary_folder(tiny_root: Path) -> None:
    assert [p.name for p in tiny_root.parent.iterdir()] == [tiny_root.name]


def test_complete_root_is_reused_untouched(tiny_root: Path) -> None:
    marker = tiny_root / MARKER_FILE
    before = (tiny_root.stat().st_mtime_ns, marker.stat().st_mtime_ns, (tiny_root / "images.txt").stat().st_mtime_ns)
    assert write_synthetic_cub(tiny_root, **TINY) == tiny_root
    after = (tiny_root.stat().st_mtime_ns, marker.stat().st_mtime_ns, (tiny_root / "images.txt").stat().st_mtime_ns)
    assert before == after


def test_root_with_other_parameters_is_refused(tiny_root: Path) -> None:
    with pytest.raises(ValueError, match="written with"):
        write_synthetic_cub(tiny_root, **{**TINY, "seed": 4})


def test_incomplete_root_is_not_mistaken_for_data(tmp_path: Path) -> None:
    root = tmp_path / "cub"
    root.mkdir()
    (root / "images.txt").write_text("1 half/written.jpg\n")
    with pytest.raises(FileExistsError, match="not a complete synthetic data set"):
        write_synthetic_cub(root, **TINY)


def test_crashed_run_leftover_is_ignored(tmp_path: Path) -> None:
    leftover = tmp_path / ".cub.tmp-crashed"
    leftover.mkdir()
    (leftover / "images.txt").write_text("1 half/written.jpg\n")
    root = write_synthetic_cub(tmp_path / "cub", **{**TINY, "num_classes": 4, "images_per_class": 2})
    assert json.loads((root / MARKER_FILE).read_text())["params"]["num_classes"] == 4
    assert len(read_cub_metadata(root)) == 8


def test_failed_write_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "render_sample", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        write_synthetic_cub(tmp_path / "cub", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_rename_race_loser_reuses_winner(tmp_path: Path, tiny_root: Path) -> None:
    loser = tmp_path / ".cub.tmp-loser"
    loser.mkdir()
    (loser / "partial.txt").write_text("x")
    assert synthetic._publish(loser, tiny_root, synthetic._check_params(**TINY)) == tiny_root
    assert not loser.exists()
    assert (tiny_root / MARKER_FILE).is_file()


def test_boxes_are_tight_and_only_the_box_is_drawn() -> None:
    for index, spec in enumerate(synthetic_classes(16, seed=0)):
        sample = render_sample(spec, 64, np.random.default_rng([0, index]))
        x, y, w, h = sample.box_xywh
        inside = np.zeros((64, 64), dtype=bool)
        inside[y : y + h, x : x + w] = True
        # Outside the box the image is exactly the background it was drawn on.
        assert np.array_equal(sample.image[~inside], sample.background[~inside])
        assert (sample.mask[~inside] == 0).all()
        # Tight: the object touches all four sides of its box.
        box_mask = sample.mask[y : y + h, x : x + w] > 0
        assert box_mask[0].any() and box_mask[-1].any() and box_mask[:, 0].any() and box_mask[:, -1].any()
        assert (sample.image[inside] != sample.background[inside]).any()


def test_written_boxes_match_the_drawing(tiny_root: Path) -> None:
    meta = read_cub_metadata(tiny_root)
    spec = synthetic_classes(8, seed=3)[1]
    sample = render_sample(spec, 40, np.random.default_rng([3, 1, 2]))  # class index 1, image 2 -> image id 9
    assert meta.boxes_xywh[8] == tuple(float(v) for v in sample.box_xywh)
    dataset = CUBDataset(tiny_root, split="val", image_size=40)
    x, y, w, h = sample.box_xywh
    assert torch.equal(dataset[2]["box"], torch.tensor([x, y, x + w, y + h], dtype=torch.float32))


def test_box_area_is_a_modest_share_of_the_image() -> None:
    areas = []
    for index, spec in enumerate(synthetic_classes(32, seed=0)):
        x, y, w, h = render_sample(spec, 96, np.random.default_rng([1, index])).box_xywh
        areas.append(w * h / 96**2)
    assert 0.08 < min(areas) and max(areas) < 0.4
    assert 0.1 < float(np.mean(areas)) < 0.25


def test_default_root_names_every_parameter(tmp_path: Path) -> None:
    root = default_synthetic_root(tmp_path, num_classes=10, images_per_class=5, image_size=32, seed=7)
    assert root.parent == tmp_path
    assert root.name.startswith("synthetic_cub-c10-i5-s32-seed7")
    assert default_synthetic_root("data") != default_synthetic_root("data", seed=1)
    assert default_synthetic_root().name.startswith("synthetic_cub-c64-i30-s96-seed0")
    with pytest.raises(TypeError, match="bogus"):
        default_synthetic_root("data", bogus=1)


def test_bad_parameters_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_classes.*1000"):
        write_synthetic_cub(tmp_path / "x", num_classes=1000)
    assert not os.listdir(tmp_path)
