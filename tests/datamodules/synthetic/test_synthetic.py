"""Synthetic CUB-layout writer: determinism, atomic writes, leftovers of killed writes, class-object boxes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fam_lightning.datamodules.formats.cub import CUBDataset
from fam_lightning.datamodules.formats.cub_metadata import CUB_FILES, read_cub_metadata
from fam_lightning.datamodules.synthetic import cub_layout, drawing
from fam_lightning.datamodules.synthetic import folder as synthetic_folder
from fam_lightning.datamodules.synthetic.cub_layout import default_synthetic_root, image_rng, write_synthetic_cub
from fam_lightning.datamodules.synthetic.drawing import render_scene, synthetic_classes
from fam_lightning.datamodules.synthetic.folder import MARKER_FILE, remove_stale_temporaries

REPO = Path(__file__).resolve().parents[3]
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


def _dead_pid() -> int:
    """The pid of a process that has just exited (not reused this soon)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftover_of_a_killed_write_is_removed(tmp_path: Path) -> None:
    root = tmp_path / "cub"
    dead = tmp_path / f".cub.tmp-{socket.gethostname()}-{_dead_pid()}-abc_12"
    (dead / "images").mkdir(parents=True)
    (dead / "images.txt").write_text("1 half/written.jpg\n")
    live = tmp_path / f".cub.tmp-{socket.gethostname()}-{os.getpid()}-def_34"  # a writer still at work
    live.mkdir()
    other_data = tmp_path / ".other.tmp-x-1-y"  # another data set's temporary folder
    other_data.mkdir()
    write_synthetic_cub(root, **{**TINY, "num_classes": 4, "images_per_class": 2})
    assert not dead.exists()
    assert live.is_dir() and other_data.is_dir()
    assert len(read_cub_metadata(root)) == 8


def test_leftover_without_a_known_owner_is_removed_only_when_old(tmp_path: Path) -> None:
    root = tmp_path / "cub"
    old, fresh = tmp_path / ".cub.tmp-crashed", tmp_path / f".cub.tmp-otherhost-{os.getpid()}-x"
    for folder in (old, fresh):
        (folder / "images").mkdir(parents=True)
    long_ago = time.time() - synthetic_folder.STALE_TEMP_AGE_S - 60
    for path in (old, old / "images"):
        os.utime(path, (long_ago, long_ago))
    assert remove_stale_temporaries(root) == [old]
    assert fresh.is_dir() and not root.exists()
    assert remove_stale_temporaries(root, max_age_s=-1) == [fresh]


@pytest.mark.slow
def test_a_write_killed_half_way_is_cleaned_by_the_next_run(tmp_path: Path) -> None:
    root = tmp_path / "cub"
    # A write large enough to be caught half-way; killed like an OOM-killed or preempted job.
    script = (
        "from fam_lightning.datamodules.synthetic.cub_layout import write_synthetic_cub\n"
        f"write_synthetic_cub({str(root)!r}, num_classes=64, images_per_class=400, image_size=64)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".cub.tmp-*/images/*")) and time.monotonic() < deadline:
            assert writer.poll() is None, "the writer ended before it could be killed"
            time.sleep(0.05)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    leftovers = list(tmp_path.glob(".cub.tmp-*"))
    assert len(leftovers) == 1 and f"-{writer.pid}-" in leftovers[0].name
    assert not root.exists()
    write_synthetic_cub(root, **TINY)
    assert [p.name for p in tmp_path.iterdir()] == ["cub"]


def test_failed_write_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(drawing, "render_scene", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        write_synthetic_cub(tmp_path / "cub", **TINY)
    assert list(tmp_path.iterdir()) == []


def test_rename_race_loser_reuses_winner(tmp_path: Path, tiny_root: Path) -> None:
    loser = tmp_path / ".cub.tmp-loser"
    loser.mkdir()
    (loser / "partial.txt").write_text("x")
    params = cub_layout._check_params(**TINY, distractors=drawing.DEFAULT_DISTRACTORS)
    assert synthetic_folder._publish(loser, tiny_root, params) == tiny_root
    assert not loser.exists()
    assert (tiny_root / MARKER_FILE).is_file()


def test_images_hold_distractors_and_only_the_class_object_is_boxed(tiny_root: Path) -> None:
    meta = read_cub_metadata(tiny_root)
    classes = synthetic_classes(8, seed=3)
    for class_index, k in ((1, 2), (5, 0)):
        scene = render_scene(classes[class_index], 40, image_rng(3, class_index, k), drawing.DEFAULT_DISTRACTORS)
        assert len(scene.distractors) == drawing.DEFAULT_DISTRACTORS
        assert scene.objects[0].spec == classes[class_index]
        image_id = class_index * 6 + k + 1
        x0, y0, x1, y1 = scene.boxes[0]
        assert meta.boxes_xywh[image_id - 1] == (x0, y0, x1 - x0, y1 - y0)
        # The stored JPEG is the drawn scene (up to compression).
        stored = np.asarray(Image.open(tiny_root / "images" / meta.paths[image_id - 1]), dtype=np.int16)
        other = render_scene(classes[class_index], 40, image_rng(3, class_index, k + 1)).image
        assert np.abs(stored - scene.image).mean() < 10 < np.abs(stored - other).mean()
        # The box holds the class object and no distractor; the distractors are drawn outside it.
        for distractor in scene.distractors:
            assert (distractor.mask[y0:y1, x0:x1] == 0).all() and distractor.mask.any()


def test_distractor_count_is_a_parameter(tmp_path: Path) -> None:
    params = {**TINY, "num_classes": 2, "images_per_class": 2}
    plain = write_synthetic_cub(tmp_path / "d0", **params, distractors=0)
    busy = write_synthetic_cub(tmp_path / "d5", **params, distractors=5)
    assert json.loads((busy / MARKER_FILE).read_text())["params"]["distractors"] == 5
    assert (plain / "bounding_boxes.txt").read_text() != (busy / "bounding_boxes.txt").read_text()
    with pytest.raises(ValueError, match="written with"):
        write_synthetic_cub(plain, **params, distractors=5)


def test_written_boxes_match_the_drawing(tiny_root: Path) -> None:
    meta = read_cub_metadata(tiny_root)
    spec = synthetic_classes(8, seed=3)[1]
    scene = render_scene(spec, 40, image_rng(3, 1, 2))  # class index 1, image 2 -> image id 9
    x0, y0, x1, y1 = scene.boxes[0]
    assert meta.boxes_xywh[8] == (float(x0), float(y0), float(x1 - x0), float(y1 - y0))
    dataset = CUBDataset(tiny_root, split="val", image_size=40)
    assert torch.equal(dataset[2]["box"], torch.tensor([x0, y0, x1, y1], dtype=torch.float32))


def test_box_area_is_a_modest_share_of_the_image() -> None:
    areas = []
    for index, spec in enumerate(synthetic_classes(32, seed=0)):
        x0, y0, x1, y1 = render_scene(spec, 96, image_rng(1, index, 0)).boxes[0]
        areas.append((x1 - x0) * (y1 - y0) / 96**2)
    assert 0.04 < min(areas) and max(areas) < 0.2
    assert 0.07 < float(np.mean(areas)) < 0.14


def test_default_root_names_every_parameter(tmp_path: Path) -> None:
    root = default_synthetic_root(tmp_path, num_classes=10, images_per_class=5, image_size=32, seed=7, distractors=2)
    assert root.parent == tmp_path
    assert root.name == (
        f"synthetic_cub-c10-i5-s32-d2-seed7-v{cub_layout.FORMAT_VERSION}.{drawing.DRAWING_VERSION}"
    )
    assert default_synthetic_root("data") != default_synthetic_root("data", seed=1)
    assert default_synthetic_root("data") != default_synthetic_root("data", distractors=0)
    assert default_synthetic_root().name.startswith(f"synthetic_cub-c64-i30-s96-d{drawing.DEFAULT_DISTRACTORS}-")
    with pytest.raises(TypeError, match="bogus"):
        default_synthetic_root("data", bogus=1)


def test_bad_parameters_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_classes.*1000"):
        write_synthetic_cub(tmp_path / "x", num_classes=1000)
    with pytest.raises(ValueError, match="distractors.*-1"):
        write_synthetic_cub(tmp_path / "x", distractors=-1)
    assert not os.listdir(tmp_path)
