"""Boxes follow the image: whole-image resizes and the resize + centre crop of the published protocol.

Boxes are ``(x0, y0, x1, y1)`` in pixels, ``x1`` / ``y1`` exclusive (the box covers ``map[y0:y1, x0:x1]``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Box = tuple[float, float, float, float]

PREPROCESSING: tuple[str, ...] = ("resize", "center_crop")
CROP_RATIO = 224 / 256  # the published protocol (lemniscate, MoCo): resize the shorter side to 256, crop 224


def scale_box_xywh(box_xywh: torch.Tensor, width: int, height: int, size: int) -> torch.Tensor:
    """CUB's ``(x, y, w, h)`` in original pixels -> ``(x0, y0, x1, y1)`` in resized pixels.

    Args:
        box_xywh: float (4,) box in the original image.
        width: Original image width.
        height: Original image height.
        size: Side of the square resized image.

    Returns:
        float (4,) box, x1 and y1 exclusive.
    """
    x, y, w, h = box_xywh.tolist()
    sx, sy = size / width, size / height
    return torch.tensor([x * sx, y * sy, (x + w) * sx, (y + h) * sy], dtype=torch.float32)


def scale_boxes(boxes: Sequence[Box], width: int, height: int, size: int) -> torch.Tensor:
    """Boxes in pixels of a ``width x height`` image -> pixels of its ``size x size`` resize, clipped.

    Returns:
        float (n, 4), ``(x0, y0, x1, y1)``, exclusive ends, within ``[0, size]``.
    """
    out = torch.tensor(boxes, dtype=torch.float32).view(-1, 4)
    out *= torch.tensor([size / width, size / height, size / width, size / height])
    return out.clamp_(0.0, float(size))


def center_crop_geometry(width: int, height: int, size: int, resize_size: int) -> tuple[int, int, int, int]:
    """Where torchvision's ``Resize(resize_size)`` then ``CenterCrop(size)`` put a ``width x height`` image.

    Returns:
        ``(resized_width, resized_height, left, top)``: the shorter side
        becomes ``resize_size`` (the longer ``int(resize_size * long / short)``),
        and the crop is ``[left, left + size) x [top, top + size)`` of it.

    Raises:
        ValueError: If ``resize_size < size`` (the crop would not fit).
    """
    if resize_size < size:
        raise ValueError(f"resize_size must be >= the crop size {size}, got {resize_size}")
    if width <= height:
        resized = (resize_size, int(resize_size * height / width))
    else:
        resized = (int(resize_size * width / height), resize_size)
    left = int(round((resized[0] - size) / 2.0))
    top = int(round((resized[1] - size) / 2.0))
    return resized[0], resized[1], left, top


def center_crop_boxes(
    boxes: Sequence[Box], width: int, height: int, size: int, resize_size: int,
    decoded_size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Boxes in pixels of a ``width x height`` image -> pixels of its resize + centre crop, clipped.

    ``decoded_size``: the size of the decoded image when the boxes were drawn on
    another (a pre-resized copy); the crop geometry follows the decoded image.
    Boxes left with no area inside the crop (the object was cropped away) are dropped.

    Returns:
        float (n', 4), ``(x0, y0, x1, y1)``, exclusive ends, within ``[0, size]``.
    """
    decoded_width, decoded_height = decoded_size or (width, height)
    resized_width, resized_height, left, top = center_crop_geometry(decoded_width, decoded_height, size, resize_size)
    out = torch.tensor(boxes, dtype=torch.float32).view(-1, 4)
    out *= torch.tensor([resized_width / width, resized_height / height] * 2)
    out -= torch.tensor([left, top, left, top], dtype=torch.float32)
    out.clamp_(0.0, float(size))
    return out[(out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])]
