"""fam-explain's photos: an image file as the model sees it and as the figure shows it.

:func:`read_photo` decodes a file and makes the model's input (resize or centre crop, ImageNet mean / std);
:func:`overlay_on_photo` puts a map of the model's input back on the photo's own pixels; :func:`look_warnings`
says when a photo is unlike the checkpoint's training images (shape, scale, smaller than the input).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from fam_lightning.datamodules.formats.images import decode_rgb
from fam_lightning.visualize import IMAGENET_MEAN, IMAGENET_STD, overlay

DEFAULT_IMAGE_SIZE = 84
PREPROCESSING = ("resize", "center_crop")
MIN_DISPLAY_SIDE = 224  # photos with a shorter side are shown enlarged by a whole factor ...
MAX_DISPLAY_SIDE = 1024  # ... that keeps the longer side within this ...


@dataclass
class Photo:
    """An image file as the model sees it and as the figure shows it.

    Attributes:
        path: the file.
        pixels: float (3, H0, W0) in [0, 1], the original resolution.
        model_input: (3, S, S) normalised input of the model.
        crop: (x0, y0, x1, y1) in original pixels, x1 / y1 exclusive: the part the model saw.
    """

    path: Path
    pixels: Tensor
    model_input: Tensor
    crop: tuple[int, int, int, int]

    @property
    def cropped(self) -> bool:
        return self.crop != (0, 0, self.pixels.shape[2], self.pixels.shape[1])

    def display_scale(self, max_long: int = MAX_DISPLAY_SIDE) -> int:
        """The whole factor the figure enlarges the photo by: 1, or enough for a 224 px shorter side
        while the longer side stays within ``max_long``."""
        short, long = sorted(self.pixels.shape[1:])
        return max(1, min(math.ceil(MIN_DISPLAY_SIDE / max(1, short)), max_long // max(1, long)))

    def for_display(self, max_long: int = MAX_DISPLAY_SIDE) -> Photo:
        """The photo enlarged by :meth:`display_scale` (nearest neighbour), crop scaled with it."""
        k = self.display_scale(max_long)
        if k == 1:
            return self
        pixels = self.pixels.repeat_interleave(k, dim=1).repeat_interleave(k, dim=2)
        x0, y0, x1, y1 = self.crop
        return Photo(self.path, pixels, self.model_input, (x0 * k, y0 * k, x1 * k, y1 * k))


def read_photo(path: str | Path, size: int, preprocess: str = "resize") -> Photo:
    """Decode ``path`` as RGB; errors name the file."""
    path = Path(path)
    rgb = decode_rgb(path)
    width, height = rgb.size
    if preprocess == "center_crop":
        side = min(width, height)
        x0, y0 = (width - side) // 2, (height - side) // 2
        crop = (x0, y0, x0 + side, y0 + side)
    elif preprocess == "resize":
        crop = (0, 0, width, height)
    else:
        raise ValueError(f"preprocess must be one of {PREPROCESSING}, got {preprocess!r}")
    seen = rgb.crop(crop).resize((size, size), Image.Resampling.BILINEAR)  # as fam_lightning.datamodules.formats.images.load_resized_image
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return Photo(path, _to_tensor(rgb), (_to_tensor(seen) - mean) / std, crop)


def _to_tensor(image: Image.Image) -> Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0


def map_to_photo(saliency: Tensor, photo: Photo) -> Tensor:
    """(S, S) map of the model's input -> (H0, W0) map of the photo; zero outside the crop.

    The input was the crop resized to S x S, so the map is resized back to the
    crop's size (bilinear) and placed where the crop came from.
    """
    x0, y0, x1, y1 = photo.crop
    inside = F.interpolate(saliency[None, None].float(), size=(y1 - y0, x1 - x0), mode="bilinear",
                           align_corners=False)[0, 0].clamp(0, 1)
    full = saliency.new_zeros(photo.pixels.shape[1:], dtype=torch.float32)
    full[y0:y1, x0:x1] = inside
    return full


def overlay_on_photo(photo: Photo, saliency: Tensor, alpha: float = 0.5) -> Tensor:
    """(3, H0, W0) in [0, 1]: the photo blended with the jet map; outside a centre crop, the photo dimmed."""
    blended = overlay(photo.pixels.unsqueeze(0), map_to_photo(saliency, photo).unsqueeze(0), alpha)[0]
    if photo.cropped:
        x0, y0, x1, y1 = photo.crop
        dimmed = photo.pixels * 0.35
        dimmed[:, y0:y1, x0:x1] = blended[:, y0:y1, x0:x1]
        return dimmed
    return blended


# -- does the photo look like the training data? ---------------------------------------------------
GEOMETRY_SAMPLE = 16  # image headers read to learn the size of a real data set's images


def training_geometry(data_arguments: dict[str, Any]) -> tuple[int, int] | None:
    """(width, height) of the checkpoint's training images, typical (median) ones; None if unknown.

    The synthetic data sets say it in their arguments; for a real ``root`` (CUB or ImageNet layout) the
    headers of up to 16 of its images are read (nothing decoded); a folder that is not there gives None.
    """
    root = data_arguments.get("root")
    if root is None:
        side = data_arguments.get("synthetic_image_size")
        return (int(side), int(side)) if side else None
    paths = _sample_images(Path(root))
    sizes = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
        except (OSError, SyntaxError):
            continue
    if not sizes:
        return None
    widths, heights = sorted(w for w, _ in sizes), sorted(h for _, h in sizes)
    return widths[len(widths) // 2], heights[len(heights) // 2]


def _sample_images(root: Path) -> list[Path]:
    """Up to :data:`GEOMETRY_SAMPLE` image files of a CUB-layout (images.txt) or ImageNet-layout (train/) root."""
    listing = root / "images.txt"
    if listing.is_file():
        lines = [line.split(maxsplit=1) for line in listing.read_text(encoding="utf-8-sig").splitlines()]
        paths = [root / "images" / fields[1].strip() for fields in lines if len(fields) == 2]
        step = max(1, len(paths) // GEOMETRY_SAMPLE)
        return paths[::step][:GEOMETRY_SAMPLE]
    train = root / "train"
    if not train.is_dir():
        return []
    found: list[Path] = []
    for folder in sorted(p for p in train.iterdir() if p.is_dir()):
        found += sorted(p for p in folder.iterdir() if p.is_file())[:2]
        if len(found) >= GEOMETRY_SAMPLE:
            break
    return found[:GEOMETRY_SAMPLE]


def look_warnings(photo: Photo, model_size: int, geometry: tuple[int, int] | None) -> list[str]:
    """Why the photo may not look like what the model was trained on (size, shape)."""
    height, width = photo.pixels.shape[1:]
    out = []
    if geometry is not None:
        gw, gh = geometry
        aspect, trained_aspect = width / height, gw / gh
        if max(aspect / trained_aspect, trained_aspect / aspect) > 1.5:
            out.append(
                f"warning: the photo's shape ({width} x {height}, aspect {aspect:.2f}) is unlike the training "
                f"images' ({gw} x {gh}): {'squashed' if photo.crop[0] == 0 else 'cropped'} to the model's square input"
            )
        side, trained_side = min(width, height), min(gw, gh)
        if side < trained_side / 2 or side > trained_side * 4:
            out.append(
                f"warning: the photo ({width} x {height}) is at another scale than the training images "
                f"({gw} x {gh}): objects may not look like the ones the model learned"
            )
    if min(width, height) < model_size:
        out.append(
            f"warning: the photo ({width} x {height}) is smaller than the model's {model_size} x {model_size} "
            "input: it is upsampled, and fine detail is missing"
        )
    return out
