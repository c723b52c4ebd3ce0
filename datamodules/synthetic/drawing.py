"""The drawing core of the synthetic data sets (both layouts): classes, objects, clutter, scenes.

A class is one combination shape x colour x texture (``circle_red_stripes``).
A scene is one image of a class: saturated clutter, the class object, and
``distractors`` objects of *other* combinations of the same vocabulary, drawn
the same way (same size range, colours, textures, contrast), so every object
is equally salient and only which combination it is tells the class object
apart. Objects sit in disjoint boxes (``OBJECT_GAP`` pixels apart), so no
object hides another and the class object's box holds no distractor pixel.
The clutter (soft blobs, sharp strokes and small specks in saturated colours
of any hue) is drawn the same way for every class: "the colourful thing" or
"the sharp thing" is not a shortcut to the class object.

Only the class object is annotated: a class-agnostic saliency map (any
activation sum, a random network's FAM) should score near the uniform-map
baseline on these images, and a model that learned the class clearly above it.

Every random choice comes from the caller's generator, so a scene is a pure
function of (class, size, distractors, class instances, generator state).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .objects import (
    ALL_COMBINATIONS,
    COLOURS,
    DARK_TONE,
    MAX_CLASSES,
    MAX_ROTATION_DEG,
    OBJECT_SIDE_RANGE,
    SHAPES,
    SUPERSAMPLE,
    TEXTURE_PERIODS_PER_SIDE,
    TEXTURES,
    SyntheticClass,
    _gaussian_noise,
    draw_object,
)

__all__ = [
    "DEFAULT_DISTRACTORS",
    "DRAWING_VERSION",
    "OBJECT_GAP",
    "PLACEMENT_TRIES",
    "PlacedObject",
    "Scene",
    "check_distractors",
    "render_clutter",
    "render_scene",
    "synthetic_classes",
    # the vocabulary and the object drawing (objects.py), as the old module fam_lightning.datamodules.drawing held them
    "ALL_COMBINATIONS",
    "COLOURS",
    "DARK_TONE",
    "MAX_CLASSES",
    "MAX_ROTATION_DEG",
    "OBJECT_SIDE_RANGE",
    "SHAPES",
    "SUPERSAMPLE",
    "TEXTURES",
    "TEXTURE_PERIODS_PER_SIDE",
    "SyntheticClass",
    "draw_object",
]

# Bump when a scene's pixels or boxes change for the same arguments: it is part of every data folder's name.
DRAWING_VERSION = 2

DEFAULT_DISTRACTORS = 3
OBJECT_GAP = 2  # pixels between the boxes of two objects
PLACEMENT_TRIES = 6  # redraws of an object that finds no free place before it is left out


@dataclass(frozen=True)
class PlacedObject:
    """One object of a scene.

    Attributes:
        spec: Its combination.
        mask: uint8 (H, W) coverage over the whole image (0 = none, 255 = object only).
        box: Tight box of ``mask > 0``: (x0, y0, x1, y1), 0-based, exclusive ends.
        annotated: True for an object of the image's class (boxed), False for a distractor.
    """

    spec: SyntheticClass
    mask: np.ndarray
    box: tuple[int, int, int, int]
    annotated: bool


@dataclass(frozen=True)
class Scene:
    """One drawn image with everything that went into it (for writing and for tests).

    Attributes:
        image: uint8 (H, W, 3), the final image.
        background: uint8 (H, W, 3), the clutter before any object was drawn.
        objects: Class objects first, then distractors, in drawing order.
    """

    image: np.ndarray
    background: np.ndarray
    objects: tuple[PlacedObject, ...]

    @property
    def boxes(self) -> list[tuple[int, int, int, int]]:
        """Boxes of the class objects (the annotation), (x0, y0, x1, y1)."""
        return [o.box for o in self.objects if o.annotated]

    @property
    def masks(self) -> list[np.ndarray]:
        """Coverage masks of the class objects."""
        return [o.mask for o in self.objects if o.annotated]

    @property
    def distractors(self) -> list[PlacedObject]:
        """The distractor objects (never annotated)."""
        return [o for o in self.objects if not o.annotated]


def synthetic_classes(num_classes: int, seed: int = 0) -> list[SyntheticClass]:
    """Choose ``num_classes`` distinct shape x colour x texture combinations.

    The choice is a seeded permutation of all combinations. Of the first
    permutations tried, the first whose base classes (even positions, as in
    the few-shot split) show every attribute value that the val and novel
    classes use is taken, so novel classes are unseen combinations of seen
    attributes; with very few classes that may be impossible and the first
    permutation is kept.

    Args:
        num_classes: How many classes, at most ``MAX_CLASSES``.
        seed: Seed of the permutation.

    Returns:
        The classes in class-id order (class id = position + 1).
    """
    rng = np.random.default_rng([seed, 0x5EED])
    candidates = [[ALL_COMBINATIONS[k] for k in rng.permutation(MAX_CLASSES)[:num_classes]] for _ in range(200)]
    return next((chosen for chosen in candidates if _base_covers_others(chosen)), candidates[0])


def _base_covers_others(classes: list[SyntheticClass]) -> bool:
    base, others = classes[0::2], classes[1::2]
    for attribute in ("shape", "colour", "texture"):
        seen = {getattr(c, attribute) for c in base}
        if any(getattr(c, attribute) not in seen for c in others):
            return False
    return True


def check_distractors(distractors: int) -> int:
    """``distractors`` if it is a valid distractor count, else a ValueError naming it."""
    if isinstance(distractors, bool) or not isinstance(distractors, int) or not 0 <= distractors < MAX_CLASSES:
        raise ValueError(f"distractors must be an integer in [0, {MAX_CLASSES - 1}], got {distractors!r}")
    return distractors


def render_scene(
    spec: SyntheticClass,
    size: int,
    rng: np.random.Generator,
    distractors: int = DEFAULT_DISTRACTORS,
    class_instances: int = 1,
) -> Scene:
    """Draw one image of class ``spec``: clutter, the class object(s), then the distractors.

    Each object is drawn, then moved by whole pixels to a place drawn
    uniformly among those where its box keeps ``OBJECT_GAP`` pixels from
    every box placed before it (and one pixel from the border). An object
    with no such place is redrawn up to ``PLACEMENT_TRIES`` times, then left
    out, so a crowded scene may hold fewer objects than asked; the first
    class object always fits.

    Args:
        spec: The class to draw.
        size: Image side in pixels (>= 16).
        rng: Source of every random choice.
        distractors: Distractor objects to draw, each a distinct combination
            other than ``spec``, chosen uniformly from the whole vocabulary.
        class_instances: Objects of the class to draw (all annotated).

    Returns:
        The scene; ``scene.boxes`` are the class objects' tight boxes.
    """
    check_distractors(distractors)
    if class_instances < 1:
        raise ValueError(f"class_instances must be >= 1, got {class_instances}")
    others = [c for c in ALL_COMBINATIONS if c != spec]
    chosen = [others[k] for k in rng.choice(len(others), size=distractors, replace=False)]
    background = render_clutter(size, rng)
    image = background.copy()
    placed: list[PlacedObject] = []
    for obj_spec, annotated in [(spec, True)] * class_instances + [(c, False) for c in chosen]:
        obj = _place_object(image, obj_spec, annotated, [o.box for o in placed], rng)
        if obj is not None:
            placed.append(obj)
    return Scene(image=image, background=background, objects=tuple(placed))


def _place_object(
    image: np.ndarray,
    spec: SyntheticClass,
    annotated: bool,
    taken: list[tuple[int, int, int, int]],
    rng: np.random.Generator,
) -> PlacedObject | None:
    """Draw ``spec`` into ``image`` (in place) at a free random place; None if none was found."""
    size = image.shape[0]
    for _ in range(PLACEMENT_TRIES):
        mask, fill = draw_object(spec, size, rng)
        h, w = mask.shape
        # Every top-left corner inside the 1-pixel margin whose box keeps the gap to each taken box.
        gy, gx = np.mgrid[1 : max(1, size - h), 1 : max(1, size - w)]
        free = np.ones(gx.shape, dtype=bool)
        for x0, y0, x1, y1 in taken:
            apart_x = (gx + w + OBJECT_GAP <= x0) | (gx >= x1 + OBJECT_GAP)
            apart_y = (gy + h + OBJECT_GAP <= y0) | (gy >= y1 + OBJECT_GAP)
            free &= apart_x | apart_y
        places = np.flatnonzero(free)
        if len(places) == 0:
            continue
        place = places[rng.integers(len(places))]
        x, y = int(gx.flat[place]), int(gy.flat[place])
        window = (slice(y, y + h), slice(x, x + w))
        alpha = mask[..., None].astype(np.float32) / 255.0
        under = image[window].astype(np.float32)
        blended = np.clip(np.rint(under * (1.0 - alpha) + fill * alpha), 0, 255).astype(np.uint8)
        image[window] = np.where(alpha > 0, blended, image[window])
        full = np.zeros((size, size), dtype=np.uint8)
        full[window] = mask
        return PlacedObject(spec=spec, mask=full, box=(x, y, x + w, y + h), annotated=annotated)
    return None



def render_clutter(size: int, rng: np.random.Generator) -> np.ndarray:
    """Class-agnostic background, uint8 (size, size, 3): saturated soft blobs, sharp strokes and specks, noise.

    The colours are of any hue and as saturated as the objects', and the
    strokes and specks have sharp edges, so neither colour nor contrast marks
    the objects; the specks are smaller than any object and irregular.
    """
    base = _hsv(rng.uniform(0, 1), rng.uniform(0.1, 0.5), rng.uniform(0.3, 0.75))
    img = Image.new("RGB", (size, size), base)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(5, 10))):
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.08, 0.25, 2) * size
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=_saturated(rng))
    img = img.filter(ImageFilter.GaussianBlur(size / 24))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 9))):
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        draw.line((x0, y0, x1, y1), fill=_saturated(rng), width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(4, 10))):
        centre = rng.uniform(0, size, 2)
        radius = rng.uniform(0.02, 0.06) * size
        count = int(rng.integers(3, 6))
        angles = np.sort(rng.uniform(0, 2 * math.pi, count))
        radii = radius * rng.uniform(0.4, 1.0, count)
        points = centre + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
        draw.polygon([tuple(p) for p in points], fill=_saturated(rng))
    noisy = np.asarray(img, dtype=np.int16) + _gaussian_noise(rng, (size, size, 3), 8)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _saturated(rng: np.random.Generator) -> tuple[int, int, int]:
    return _hsv(rng.uniform(0, 1), rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))


def _hsv(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(255 * r), round(255 * g), round(255 * b)
