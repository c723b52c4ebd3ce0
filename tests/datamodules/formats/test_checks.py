"""Up-front data checks: missing files, broken images, boxes outside their image, contradicting VOC sizes."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
from PIL import Image

from fam_lightning.datamodules import FewShotDataModule
from fam_lightning.datamodules.formats.checks import DataCheckWarning, check_files_exist
from fam_lightning.datamodules.formats.cub_metadata import check_cub_data, read_cub_metadata
from fam_lightning.datamodules.formats.imagenet_index import check_imagenet_index, read_imagenet_split
from tests.datamodules.tiny_data import voc, write_tiny_cub, write_tiny_imagenet


@pytest.fixture
def cub_root(tmp_path: Path) -> Path:
    return write_tiny_cub(tmp_path / "cub")


def _set_box_line(root: Path, image_id: int, box: str) -> int:
    """Replace image ``image_id``'s box in bounding_boxes.txt; returns its line number."""
    path = root / "bounding_boxes.txt"
    lines = path.read_text().splitlines()
    number = next(i for i, line in enumerate(lines) if line.split()[0] == str(image_id))
    lines[number] = f"{image_id} {box}"
    path.write_text("\n".join(lines) + "\n")
    return number + 1


def test_a_clean_folder_passes_unchanged(cub_root: Path) -> None:
    meta = read_cub_metadata(cub_root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checked = check_cub_data(meta, verify_images=True)
    assert checked.boxes_xywh == meta.boxes_xywh


def test_every_missing_image_is_listed_in_one_error(tmp_path: Path) -> None:
    paths = [tmp_path / f"img_{i:02d}.jpg" for i in range(30)]
    for path in paths[25:]:
        path.touch()
    with pytest.raises(FileNotFoundError) as error:
        check_files_exist(paths, "images listed in images.txt")
    message = str(error.value)
    assert message.startswith("25 of 30 images listed in images.txt are missing:")
    assert all(str(p) in message for p in paths[:20])
    assert str(paths[20]) not in message and "... and 5 more" in message


def test_missing_cub_images_fail_datamodule_setup_before_any_episode(cub_root: Path) -> None:
    for name in ("001.Bird_1/img_1.jpg", "003.Bird_3/img_2.jpg"):
        (cub_root / "images" / name).unlink()
    data = FewShotDataModule(root=str(cub_root), image_size=32)
    with pytest.raises(FileNotFoundError, match=r"2 of 24 images listed in .*images.txt are missing") as error:
        data.setup("fit")
    assert "001.Bird_1/img_1.jpg" in str(error.value) and "003.Bird_3/img_2.jpg" in str(error.value)


def test_a_box_partly_outside_is_clipped_with_a_warning(cub_root: Path) -> None:
    # image 2 is 60x40: x from 50 to 80 reaches 20 pixels past the right edge
    line = _set_box_line(cub_root, 2, "50.0 4.0 30.0 20.0")
    _set_box_line(cub_root, 3, "-5.0 4.0 10.0 20.0")
    with pytest.warns(DataCheckWarning, match=r"2 boxes of .*bounding_boxes.txt reach outside") as caught:
        meta = check_cub_data(read_cub_metadata(cub_root))
    assert f"line {line} (images/001.Bird_1/img_1.jpg): (50, 4, 80, 24) -> (50, 4, 60, 24)" in str(caught[0].message)
    assert meta.boxes_xywh[1] == (50.0, 4.0, 10.0, 20.0)
    assert meta.boxes_xywh[2] == (0.0, 4.0, 5.0, 20.0)


def test_a_box_with_no_area_inside_its_image_is_an_error_naming_file_and_line(cub_root: Path) -> None:
    line = _set_box_line(cub_root, 5, "70.0 4.0 10.0 10.0")  # image 5 is 60 wide
    with pytest.raises(ValueError, match="1 boxes of .* have no area inside their image") as error:
        check_cub_data(read_cub_metadata(cub_root))
    assert re.search(rf"bounding_boxes.txt, line {line} \(images/002.Bird_2/img_1.jpg\): box \(70, 4, 80, 14\)",
                     str(error.value))


def test_unreadable_images_are_listed_together(cub_root: Path) -> None:
    for name in ("001.Bird_1/img_0.jpg", "002.Bird_2/img_2.jpg"):
        (cub_root / "images" / name).write_bytes(b"not an image")
    with pytest.raises(ValueError, match="2 of 24 images of .* are not readable images") as error:
        check_cub_data(read_cub_metadata(cub_root))
    assert "001.Bird_1/img_0.jpg" in str(error.value) and "002.Bird_2/img_2.jpg" in str(error.value)


def test_truncated_images_are_found_only_by_the_opt_in_decode(cub_root: Path) -> None:
    path = cub_root / "images" / "004.Bird_4" / "img_1.jpg"
    Image.effect_noise((60, 40), 64).convert("RGB").save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, pixels cut off
    check_cub_data(read_cub_metadata(cub_root))  # stat + header only: passes
    with pytest.raises(ValueError, match=r"1 of 24 images of .* cannot be decoded:\n  .*004.Bird_4/img_1.jpg"):
        check_cub_data(read_cub_metadata(cub_root), verify_images=True)


@pytest.fixture
def imagenet_root(tmp_path: Path) -> Path:
    return write_tiny_imagenet(tmp_path / "imagenet")


def test_voc_size_contradicting_the_image_aspect_ratio_warns(imagenet_root: Path) -> None:
    xml = imagenet_root / "boxes" / "val" / "n00000001" / "v_1.xml"
    xml.write_text(voc(40, 40, (7, 5, 30, 20)))  # the image is 60x40
    index = read_imagenet_split(imagenet_root, "val")
    with pytest.warns(DataCheckWarning, match=r"1 annotation sizes .* contradict .* says 40x40 but the image is 60x40"):
        check_imagenet_index(index)


def test_voc_box_outside_the_image_is_an_error_naming_the_xml_and_object(imagenet_root: Path) -> None:
    xml = imagenet_root / "boxes" / "val" / "n00000002" / "v_1.xml"
    xml.write_text(voc(60, 40, (7, 5, 30, 20), (70, 5, 80, 20)))
    index = read_imagenet_split(imagenet_root, "val")
    with pytest.raises(ValueError, match=rf"{re.escape(str(xml))}, object 2: box \(69, 4, 80, 20\) has no area"):
        check_imagenet_index(index)


def test_voc_box_partly_outside_is_clipped(imagenet_root: Path) -> None:
    xml = imagenet_root / "boxes" / "val" / "n00000002" / "v_1.xml"
    xml.write_text(voc(60, 40, (41, 5, 90, 20)))
    index = read_imagenet_split(imagenet_root, "val")
    with pytest.warns(DataCheckWarning, match="1 boxes of .* reach outside their image"):
        checked = check_imagenet_index(index)
    row = index.box_files.index(xml)
    assert checked.boxes[row] == [(40.0, 4.0, 60.0, 20.0)]
