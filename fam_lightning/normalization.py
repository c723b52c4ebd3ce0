"""The per-channel normalisation images are fed with (ImageNet's statistics): one definition for the data
modules, which normalise, and the drawing code, which undoes it."""

from __future__ import annotations

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
