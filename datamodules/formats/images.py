"""Image decoding, loading at a size, and normalisation: the one implementation every reader uses.

- :func:`decode_rgb`: a file fully decoded as 8-bit RGB (16-bit greyscale scaled, not clipped).
- :func:`load_image`, :func:`load_resized_image`, :func:`load_center_cropped_image`: uint8 (3, H, W) tensors.
- :data:`IMAGENET_MEAN` / :data:`IMAGENET_STD` and :class:`Normalisation`: uint8 or [0, 1] float -> normalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fam_lightning.normalization import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (re-exported)

from .geometry import center_crop_geometry

# Greyscale modes of more than 8 bits (16-bit PNG / TIFF): ``convert("RGB")`` clips them to 255.
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def decode_rgb(path: str | Path) -> Image.Image:
    """The image at ``path``, fully decoded as 8-bit RGB; a missing or undecodable file raises an error naming it.

    The one image decoder of the readers and ``fam-explain``. 16-bit greyscale (``I;16``,
    ``I;16B``, and ``I`` holding 0 ... 65535) is scaled to 8 bits (value / 257, rounded), not clipped
    (an ``I`` image whose values all fit 0 ... 255 is taken as 8-bit data).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} is missing")
    try:
        with Image.open(path) as img:
            if img.mode in WIDE_GREY_MODES:
                return _wide_grey_to_rgb(img)
            return img.convert("RGB")  # forces the full decode inside the try
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot decode image {path}: {err}") from err


def _wide_grey_to_rgb(img: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer) greyscale image as 8-bit RGB: 0 ... 65535 -> 0 ... 255."""
    values = np.asarray(img).astype(np.float64)
    # a 32-bit integer image whose values fit 8 bits (written from 8-bit data) is kept as it is
    scale = 1.0 if img.mode == "I" and values.size and values.max() <= 255 and values.min() >= 0 else 257.0
    grey = np.clip(np.rint(values / scale), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _to_tensor(rgb: Image.Image) -> torch.Tensor:
    """uint8 (3, H, W) of an RGB image."""
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def load_image(path: Path) -> torch.Tensor:
    """Decode an image as RGB at its own size.

    Returns:
        uint8 (3, H, W).

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: If the file cannot be decoded (corrupt, truncated, not an image).
    """
    return _to_tensor(decode_rgb(path))


def load_resized_image(path: Path, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decode an image as RGB and resize the whole of it to ``size x size`` (bilinear).

    Args:
        path: Image file.
        size: Output side in pixels.

    Returns:
        The uint8 (3, size, size) image and the original ``(width, height)``.

    Raises:
        FileNotFoundError: If the file is missing.
        ValueError: If the file cannot be decoded (corrupt, truncated, not an image).
    """
    rgb = decode_rgb(path)
    return _to_tensor(rgb.resize((size, size), Image.Resampling.BILINEAR)), rgb.size


def load_center_cropped_image(path: Path, size: int, resize_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Decode an image as RGB, resize its shorter side to ``resize_size`` (bilinear), crop the centred ``size x size``.

    Returns:
        The uint8 (3, size, size) image and the decoded ``(width, height)``.
    """
    rgb = decode_rgb(path)
    resized_width, resized_height, left, top = center_crop_geometry(*rgb.size, size, resize_size)
    resized = rgb.resize((resized_width, resized_height), Image.Resampling.BILINEAR)
    return _to_tensor(resized.crop((left, top, left + size, top + size))), rgb.size


class Normalisation:
    """Per-channel ``(image - mean) / std`` of uint8 (scaled to [0, 1]) or [0, 1] float (3, H, W) images.

    Raises:
        ValueError: If ``mean`` or ``std`` has not 3 entries, or a ``std`` is not > 0.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std must have 3 entries and std > 0, got mean={mean}, std={std}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        scaled = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        return (scaled - self.mean) / self.std
