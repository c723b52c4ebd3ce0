"""Heatmap overlays as batched torch ops (no numpy, no matplotlib): for TensorBoard grids and PNGs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fam_lightning.metrics.localization import pad_boxes

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREEN = (0.1, 0.9, 0.1)
RED = (0.95, 0.1, 0.1)
YELLOW = (1.0, 0.85, 0.0)


def denormalize(images: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """(B, 3, H, W) normalised images -> [0, 1]."""
    mean_t = images.new_tensor(mean).view(1, -1, 1, 1)
    std_t = images.new_tensor(std).view(1, -1, 1, 1)
    return (images * std_t + mean_t).clamp(0, 1)


def jet(maps: Tensor) -> Tensor:
    """(B, H, W) values in [0, 1] -> (B, 3, H, W) RGB with the 'jet' colour map."""
    x = maps.clamp(0, 1).unsqueeze(1)
    centres = maps.new_tensor([3.0, 2.0, 1.0]).view(1, 3, 1, 1)
    return (1.5 - (4.0 * x - centres).abs()).clamp(0, 1)


def overlay(images: Tensor, maps: Tensor, alpha: float = 0.5) -> Tensor:
    """Blend (B, 3, H, W) images in [0, 1] with the jet rendering of (B, H, W) maps."""
    return ((1 - alpha) * images + alpha * jet(maps)).clamp(0, 1)


def draw_boxes(
    images: Tensor, boxes: Tensor | list[Tensor], color: Sequence[float] = GREEN, thickness: int = 1
) -> Tensor:
    """Draw box outlines ((x0, y0, x1, y1), exclusive ends) on (B, 3, H, W) images in [0, 1]."""
    _, _, height, width = images.shape
    if isinstance(boxes, list):  # an image without annotation: a zero-area box draws nothing
        boxes = [b if b.shape[0] else b.new_zeros(1, 4) for b in boxes]
    padded, valid = pad_boxes(boxes)  # (B, M, 4), (B, M)
    padded = padded.to(device=images.device, dtype=images.dtype)
    ys = torch.arange(height, device=images.device, dtype=images.dtype).view(1, 1, height, 1) + 0.5
    xs = torch.arange(width, device=images.device, dtype=images.dtype).view(1, 1, 1, width) + 0.5
    x0, y0, x1, y1 = (padded[..., i].view(*padded.shape[:2], 1, 1) for i in range(4))
    outer = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    inner = (xs >= x0 + thickness) & (xs < x1 - thickness) & (ys >= y0 + thickness) & (ys < y1 - thickness)
    keep = valid.to(images.device).view(*valid.shape, 1, 1)
    outline = (outer & ~inner & keep).any(dim=1, keepdim=True)  # (B, 1, H, W)
    paint = images.new_tensor(color).view(1, 3, 1, 1).expand_as(images)
    return torch.where(outline, paint, images)


def add_border(images: Tensor, correct: Tensor, thickness: int = 2) -> Tensor:
    """Frame each (B, 3, H, W) image green where ``correct`` (B,) is true, red otherwise."""
    _, _, height, width = images.shape
    frame = torch.ones(height, width, dtype=torch.bool, device=images.device)
    frame[thickness:-thickness, thickness:-thickness] = False
    colors = torch.where(
        correct.view(-1, 1, 1, 1), images.new_tensor(GREEN).view(1, 3, 1, 1), images.new_tensor(RED).view(1, 3, 1, 1)
    )
    return torch.where(frame, colors.expand_as(images), images)
