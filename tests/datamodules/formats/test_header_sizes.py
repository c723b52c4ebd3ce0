"""Image sizes read from JPEG / PNG headers directly agree with PIL's; everything else goes through PIL."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from fam_lightning.datamodules.formats.checks import _header_size, read_image_sizes


def _write(folder: Path) -> dict[str, Path]:
    files = {}
    rgb = Image.new("RGB", (37, 21), (10, 200, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated by EXIF: PIL's size (and ours) is the stored one
    thumbnail = io.BytesIO()
    Image.new("RGB", (160, 120), (1, 2, 3)).save(thumbnail, "JPEG", quality=100)
    variants = {
        "baseline.jpg": lambda p: rgb.save(p, "JPEG"),
        "progressive.jpg": lambda p: rgb.save(p, "JPEG", progressive=True),
        "exif.jpg": lambda p: rgb.save(p, "JPEG", exif=exif),
        "comment.jpg": lambda p: rgb.save(p, "JPEG", comment=b"x" * 60000),  # a 60 kB segment to skip
        "gray.jpg": lambda p: rgb.convert("L").save(p, "JPEG"),
        "cmyk.jpg": lambda p: rgb.convert("CMYK").save(p, "JPEG"),
        "optimized.JPEG": lambda p: Image.new("RGB", (1, 300)).save(p, "JPEG", optimize=True, subsampling=0),
        "rgb.png": lambda p: rgb.save(p, "PNG"),
        "rgba.png": lambda p: rgb.convert("RGBA").save(p, "PNG"),
        "palette.png": lambda p: rgb.convert("P").save(p, "PNG"),
        "wide16.png": lambda p: Image.new("I;16", (3000, 2)).save(p, "PNG"),
        "other.gif": lambda p: rgb.save(p, "GIF"),
        "other.bmp": lambda p: rgb.save(p, "BMP"),
    }
    for name, save in variants.items():
        save(folder / name)
        files[name] = folder / name
    return files


def test_header_sizes_agree_with_pil(tmp_path: Path) -> None:
    files = _write(tmp_path)
    for name, path in files.items():
        with Image.open(path) as image:
            expected = image.size
        got = _header_size(path)
        if name.startswith("other"):
            assert got is None, name  # not JPEG / PNG: left to PIL
        else:
            assert got == expected, name
    assert read_image_sizes(list(files.values()), "test images") == [Image.open(p).size for p in files.values()]


def test_broken_headers_are_reported_by_pil(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    Image.new("RGB", (8, 6)).save(good, "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:40])  # ends inside the header, before the frame
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 4)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for path in (truncated, garbage, empty):
        assert _header_size(path) is None, path
    with pytest.raises(ValueError, match=r"3 of 4 test images are not readable images") as error:
        read_image_sizes([good, truncated, garbage, empty], "test images")
    for path in (truncated, garbage, empty):
        assert str(path) in str(error.value)
