"""The vocabulary of the synthetic classes (shape x colour x texture) and the drawing of one object.

An object is drawn at a random scale, rotation and sub-pixel phase: an anti-aliased coverage mask of
its shape and a fill of two tones of its colour in its texture's pattern, with a little pixel noise.
Every random choice comes from the caller's generator.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star", "ring", "hexagon")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 175, 50),
    "blue": (35, 75, 235),
    "yellow": (240, 220, 30),
    "magenta": (215, 40, 215),
    "cyan": (30, 210, 220),
    "orange": (250, 135, 20),
    "white": (245, 245, 245),
}
TEXTURES: tuple[str, ...] = ("solid", "stripes", "dots", "checker", "grid")
MAX_CLASSES = len(SHAPES) * len(COLOURS) * len(TEXTURES)

# Object side before rotation, as a fraction of the image side: a tight box covers ~5-15% of the
# image (~10% on average), small enough that the class object and three distractors fit in disjoint boxes.
OBJECT_SIDE_RANGE = (0.24, 0.36)
MAX_ROTATION_DEG = 10.0
SUPERSAMPLE = 4  # masks are drawn 4x larger and box-filtered down: anti-aliased edges
TEXTURE_PERIODS_PER_SIDE = 3.5  # texture scales with the object, so it reads the same at every size
DARK_TONE = 0.3  # the texture's second tone: the object colour darkened

# 256 equally likely standard-normal quantiles, x16 as int16 (fixed-point), for cheap pixel noise.
_GAUSSIAN_QUANTILES = np.rint(
    16 * np.array([statistics.NormalDist().inv_cdf((k + 0.5) / 256) for k in range(256)])
).astype(np.int16)


@dataclass(frozen=True)
class SyntheticClass:
    """One synthetic class: a shape x colour x texture combination."""

    shape: str
    colour: str
    texture: str

    @property
    def name(self) -> str:
        """Class name such as ``circle_red_stripes``."""
        return f"{self.shape}_{self.colour}_{self.texture}"


ALL_COMBINATIONS: tuple[SyntheticClass, ...] = tuple(
    SyntheticClass(*c) for c in itertools.product(SHAPES, COLOURS, TEXTURES)
)


def draw_object(spec: SyntheticClass, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One object of ``spec`` at a random scale, rotation and sub-pixel phase, cropped to its tight box.

    Args:
        spec: The combination to draw.
        size: Side of the image it is drawn for (sets the object's scale).
        rng: Source of scale, rotation, phase, colour jitter and noise.

    Returns:
        uint8 (h, w) coverage mask touching all four sides, and float32
        (h, w, 3) fill (two tones of the colour in the texture's pattern).
    """
    outline, hole = _unit_shape(spec.shape)
    side = rng.uniform(*OBJECT_SIDE_RANGE) * size
    angle = math.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    outline = outline @ rotation.T * (side / 2)
    centre = 1.0 - outline.min(axis=0) + rng.uniform(0, 1, 2)  # one-pixel margin, random sub-pixel phase
    outline = outline + centre
    hole = None if hole is None else hole @ rotation.T * (side / 2) + centre
    width, height = (int(v) for v in np.ceil(outline.max(axis=0)) + 2)
    mask = _rasterise_mask(outline, hole, width, height)
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    fill = _render_texture(spec, (x0, y0, x1, y1), centre, angle, side, rng)
    return mask[y0:y1, x0:x1].copy(), fill



def _gaussian_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: int) -> np.ndarray:
    """Integer noise ~ N(0, sigma^2), int16: random bytes mapped through Gaussian quantiles.

    About 5x cheaper than drawing normals, which dominated the writing time.
    """
    return (_GAUSSIAN_QUANTILES[rng.integers(0, 256, shape, dtype=np.uint8)] * np.int16(sigma) + 8) // 16


def _unit_shape(shape: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Outline of ``shape`` in [-1, 1]^2 (and the hole, for the ring), as (K, 2) vertex arrays."""
    circle = _regular_polygon(64, 0.0)
    if shape == "circle":
        return circle, None
    if shape == "ring":
        return circle, 0.55 * circle
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64), None
    if shape == "diamond":
        return np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], dtype=np.float64), None
    if shape == "triangle":
        return np.array([[0, -1], [1, 1], [-1, 1]], dtype=np.float64), None
    if shape == "hexagon":
        return _regular_polygon(6, 0.0), None
    if shape == "cross":
        a = 0.35
        quarter = [[-a, -1], [a, -1], [a, -a]]  # one arm tip and the inner corner after it
        turn = np.array([[0, -1], [1, 0]], dtype=np.float64)  # 90 degrees
        return np.concatenate([np.array(quarter) @ np.linalg.matrix_power(turn, k).T for k in range(4)]), None
    if shape == "star":
        outer = _regular_polygon(5, -math.pi / 2)
        inner = 0.42 * _regular_polygon(5, -math.pi / 2 + math.pi / 5)
        return np.stack([outer, inner], axis=1).reshape(-1, 2), None
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _regular_polygon(count: int, phase: float) -> np.ndarray:
    angles = phase + 2 * math.pi * np.arange(count) / count
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _rasterise_mask(outline: np.ndarray, hole: np.ndarray | None, width: int, height: int) -> np.ndarray:
    """Anti-aliased coverage mask, uint8 (height, width): drawn 4x larger, then box-filtered down."""
    big = Image.new("L", (width * SUPERSAMPLE, height * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(big)
    draw.polygon([tuple(p) for p in outline * SUPERSAMPLE], fill=255)
    if hole is not None:
        draw.polygon([tuple(p) for p in hole * SUPERSAMPLE], fill=0)
    return np.asarray(big.resize((width, height), Image.Resampling.BOX), dtype=np.uint8)


def _render_texture(
    spec: SyntheticClass,
    box: tuple[int, int, int, int],
    centre: np.ndarray,
    angle: float,
    side: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Fill of the object inside ``box`` (x0, y0, x1, y1): two tones of its colour in its pattern.

    Returns:
        float32 (y1 - y0, x1 - x0, 3).
    """
    x0, y0, x1, y1 = box
    period = side / TEXTURE_PERIODS_PER_SIDE
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    dx, dy = xs - centre[0], ys - centre[1]
    # Texture coordinates turn with the object and start at a random phase.
    u = (dx * math.cos(angle) + dy * math.sin(angle)) / period + rng.uniform(0, 1)
    v = (-dx * math.sin(angle) + dy * math.cos(angle)) / period + rng.uniform(0, 1)
    dark = _pattern(spec.texture, u, v)
    colour = np.asarray(COLOURS[spec.colour], dtype=np.float32) * np.float32(rng.uniform(0.9, 1.1))
    fill = np.where(dark[..., None], colour * np.float32(DARK_TONE), colour)
    return np.clip(fill + _gaussian_noise(rng, fill.shape, 6), 0, 255)


def _pattern(texture: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean map of where the texture's dark tone goes, from texture coordinates in periods."""
    du, dv = u - np.rint(u), v - np.rint(v)
    if texture == "solid":
        return np.zeros(u.shape, dtype=bool)
    if texture == "stripes":
        return np.floor(2 * u) % 2 == 1
    if texture == "dots":
        return np.hypot(du, dv) < 0.3
    if texture == "checker":
        return (np.floor(u) + np.floor(v)) % 2 == 1
    if texture == "grid":
        return np.minimum(np.abs(du), np.abs(dv)) < 0.13
    raise ValueError(f"unknown texture {texture!r}; expected one of {TEXTURES}")
