"""Setup work grows with the files, not with classes x files: each annotation folder is listed once."""

from __future__ import annotations

from pathlib import Path

import pytest

from fam_lightning.datamodules.formats import imagenet_index
from tests.datamodules.tiny_data import voc, write_tiny_imagenet


def test_each_annotation_folder_is_listed_once_per_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_tiny_imagenet(tmp_path / "imagenet")
    annotations = tmp_path / "Annotations" / "CLS-LOC"
    (annotations / "val").mkdir(parents=True)
    (annotations / "val" / "v_0.xml").write_text(voc(60, 40, (1, 1, 10, 10)))
    listed: list[Path] = []
    original = imagenet_index._xml_stems
    monkeypatch.setattr(imagenet_index, "_xml_stems", lambda folder: (listed.append(folder), original(folder))[1])
    val = imagenet_index.read_imagenet_split(root, "val", boxes_dir=annotations)
    assert val.boxes[0] == [(0.0, 0.0, 10.0, 10.0)] and val.boxes[2] == [(0.0, 0.0, 10.0, 10.0)]
    classes = len({p.parent.name for p in val.paths})
    assert listed.count(annotations / "val") == 1  # the flat folder: once, not once per class
    assert len(listed) == len(set(listed)) == classes + 1  # plus one per class folder of annotations
