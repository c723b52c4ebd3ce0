"""Synthetic few-shot data written to disk in the CUB-200-2011 layout.

Nothing can be downloaded at run time, so the default data set is drawn here
and read back by the real CUB reader (:mod:`datamodules.cub`).

Each class is one combination shape x colour x texture (``circle_red_stripes``).
Every image holds one object of its class at a random position, scale and
slight rotation, on a cluttered background (noise, low-contrast blobs and
lines) drawn from one distribution for all classes, so only the object carries
class information. Novel classes are unseen combinations of attribute values
that the base classes show, so a learner that picks up shape, colour and
texture transfers to them. ``bounding_boxes.txt`` holds the exact tight box of
the object's drawn pixels.

Writing is atomic: the data set is written into a hidden temporary sibling of
``root`` and renamed into place at the end; a complete ``root`` (one whose
``synthetic.json`` records the same parameters) is reused as it is.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Bump when the drawing changes: it is part of the default folder name, so stale data is never reused.
FORMAT_VERSION = 1
MARKER_FILE = "synthetic.json"
JPEG_QUALITY = 90

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

# Object side before rotation, as a fraction of the image side: the tight box then covers ~10-25% of the image.
OBJECT_SIDE_RANGE = (0.33, 0.5)
MAX_ROTATION_DEG = 10.0
SUPERSAMPLE = 4  # the mask is drawn 4x larger and box-filtered down: anti-aliased edges
TEXTURE_PERIODS_PER_SIDE = 4.5  # texture scales with the object, so it reads the same at every size
DARK_TONE = 0.3  # the texture's second tone: the class colour darkened

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


@dataclass(frozen=True)
class RenderedSample:
    """One drawn image with what went into it (for writing and for tests).

    Attributes:
        image: uint8 (H, W, 3), the final image.
        background: uint8 (H, W, 3), the image before the object was drawn.
        mask: uint8 (H, W), object coverage (0 = background only, 255 = object only).
        box_xywh: Tight box of ``mask > 0``: (x, y, width, height) in pixels.
    """

    image: np.ndarray
    background: np.ndarray
    mask: np.ndarray
    box_xywh: tuple[int, int, int, int]


def default_synthetic_root(data_dir: str | Path = "data", **params: int) -> Path:
    """Folder of the synthetic data set for these parameters, under ``data_dir``.

    The name spells out every parameter and the drawing's format version, so
    different parameters never reuse stale data, e.g.
    ``data/synthetic_cub-c64-i30-s96-seed0-v1``.

    Args:
        data_dir: Parent folder.
        **params: Any of num_classes, images_per_class, image_size, seed
            (defaults as in :func:`write_synthetic_cub`).

    Returns:
        The folder path (not created here).

    Raises:
        TypeError: On an unknown parameter name.
    """
    values = {"num_classes": 64, "images_per_class": 30, "image_size": 96, "seed": 0}
    unknown = set(params) - set(values)
    if unknown:
        raise TypeError(f"unknown synthetic data parameters {sorted(unknown)}; expected some of {sorted(values)}")
    values.update(params)
    name = (
        f"synthetic_cub-c{values['num_classes']}-i{values['images_per_class']}"
        f"-s{values['image_size']}-seed{values['seed']}-v{FORMAT_VERSION}"
    )
    return Path(data_dir) / name


def write_synthetic_cub(
    root: str | Path,
    num_classes: int = 64,
    images_per_class: int = 30,
    image_size: int = 96,
    seed: int = 0,
) -> Path:
    """Write a synthetic data set in CUB-200-2011 layout to ``root``, atomically.

    If ``root`` already holds a complete data set with these parameters it is
    reused without touching it. Safe when several processes call this at once
    (e.g. DDP ranks): each writes its own temporary folder, the first rename
    wins, the others delete theirs and reuse the winner's.

    Args:
        root: Target folder; its parent is created if needed.
        num_classes: Number of classes (at most ``MAX_CLASSES``).
        images_per_class: Images per class.
        image_size: Side of the square images in pixels.
        seed: Seed of the class choice and every drawing: same arguments give
            byte-identical text files and identical pixels.

    Returns:
        ``root`` as a Path.

    Raises:
        ValueError: On out-of-range parameters, or if ``root`` holds synthetic
            data written with other parameters.
        FileExistsError: If ``root`` exists, is not empty and is not a
            complete synthetic data set.
    """
    root = Path(root)
    params = _check_params(num_classes, images_per_class, image_size, seed)
    if _is_complete(root, params):
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(
            f"{root} exists but is not a complete synthetic data set (no valid {MARKER_FILE}); "
            "delete it or choose another root"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    # A hidden, uniquely named sibling: a crashed run's leftover is never mistaken for data.
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        os.chmod(tmp, 0o755)
        _write_dataset(tmp, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _publish(tmp, root, params)


def _check_params(num_classes: int, images_per_class: int, image_size: int, seed: int) -> dict[str, int]:
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(
            f"num_classes must be in [1, {MAX_CLASSES}] ({len(SHAPES)} shapes x {len(COLOURS)} colours x "
            f"{len(TEXTURES)} textures), got {num_classes}"
        )
    if images_per_class < 1:
        raise ValueError(f"images_per_class must be >= 1, got {images_per_class}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 pixels for the objects to be drawable, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return {
        "num_classes": num_classes,
        "images_per_class": images_per_class,
        "image_size": image_size,
        "seed": seed,
        "format_version": FORMAT_VERSION,
    }


def _is_complete(root: Path, params: dict[str, int]) -> bool:
    """True if ``root`` holds a finished data set with exactly these parameters.

    Raises:
        ValueError: If ``root`` holds a finished data set with other parameters.
    """
    marker = root / MARKER_FILE
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))["params"]
    except (ValueError, KeyError) as err:
        raise ValueError(f"{marker} is unreadable ({err}); delete {root} to rewrite it") from err
    if recorded != params:
        raise ValueError(f"{root} holds synthetic data written with {recorded}, but {params} was asked for")
    return True


def _publish(tmp: Path, root: Path, params: dict[str, int]) -> Path:
    """Rename the finished ``tmp`` to ``root``; if another process won the race, reuse its copy."""
    try:
        # rename() replaces an empty folder and fails on a non-empty one: exactly one writer wins.
        os.rename(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_complete(root, params):
            raise
    return root


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
    combos = [SyntheticClass(*c) for c in itertools.product(SHAPES, COLOURS, TEXTURES)]
    rng = np.random.default_rng([seed, 0x5EED])
    candidates = [[combos[k] for k in rng.permutation(len(combos))[:num_classes]] for _ in range(200)]
    return next((chosen for chosen in candidates if _base_covers_others(chosen)), candidates[0])


def _base_covers_others(classes: list[SyntheticClass]) -> bool:
    base, others = classes[0::2], classes[1::2]
    for attribute in ("shape", "colour", "texture"):
        seen = {getattr(c, attribute) for c in base}
        if any(getattr(c, attribute) not in seen for c in others):
            return False
    return True


def _write_dataset(folder: Path, params: dict[str, int]) -> None:
    """Draw every image and write the five CUB text files, then the marker last."""
    classes = synthetic_classes(params["num_classes"], params["seed"])
    # Threads overlap file creation (slow on some file systems) with drawing; each
    # image has its own seeded generator, so the result does not depend on scheduling.
    workers = min(8, os.cpu_count() or 1)
    (folder / "images").mkdir()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        per_class = list(pool.map(lambda item: _write_class(folder, params, *item), enumerate(classes)))
    files = {
        "images.txt": "images",
        "image_class_labels.txt": "labels",
        "train_test_split.txt": "split",
        "bounding_boxes.txt": "boxes",
        "classes.txt": "classes",
    }
    for file_name, key in files.items():
        text = "".join(line + "\n" for lines in per_class for line in lines[key])
        (folder / file_name).write_text(text, encoding="utf-8")
    marker = {"params": params, "classes": [vars(c) | {"name": c.name} for c in classes]}
    (folder / MARKER_FILE).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")


def _write_class(folder: Path, params: dict[str, int], class_index: int, spec: SyntheticClass) -> dict[str, list[str]]:
    """Draw and save the images of one class; return its lines of the five text files."""
    n, size, seed = params["images_per_class"], params["image_size"], params["seed"]
    class_id = class_index + 1
    folder_name = f"{class_id:03d}.{spec.name}"
    (folder / "images" / folder_name).mkdir()
    lines: dict[str, list[str]] = {"classes": [f"{class_id} {folder_name}"]}
    for key in ("images", "labels", "split", "boxes"):
        lines[key] = []
    for k in range(n):
        image_id = class_index * n + k + 1
        relative = f"{folder_name}/{spec.name}_{k + 1:04d}.jpg"
        sample = render_sample(spec, size, np.random.default_rng([seed, class_index, k]))
        Image.fromarray(sample.image).save(folder / "images" / relative, quality=JPEG_QUALITY, subsampling=0)
        x, y, w, h = sample.box_xywh
        lines["images"].append(f"{image_id} {relative}")
        lines["labels"].append(f"{image_id} {class_id}")
        lines["split"].append(f"{image_id} {int(k < (n + 1) // 2)}")
        lines["boxes"].append(f"{image_id} {x:.1f} {y:.1f} {w:.1f} {h:.1f}")
    return lines


def render_sample(spec: SyntheticClass, size: int, rng: np.random.Generator) -> RenderedSample:
    """Draw one image of class ``spec``: cluttered background, then the object.

    Args:
        spec: The class to draw.
        size: Image side in pixels.
        rng: Source of every random choice (position, scale, clutter, noise).

    Returns:
        The image, the background it was drawn on, the object mask and the
        tight box of the mask.
    """
    background = _render_background(rng, size)
    vertices, holes, angle, side = _place_shape(spec.shape, size, rng)
    mask = _rasterise_mask(vertices, holes, size)
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    # Only the box is touched, so every pixel outside it stays exactly the background.
    window = (slice(y0, y1), slice(x0, x1))
    texture = _render_texture(spec, (x0, y0, x1, y1), vertices.mean(axis=0), angle, side, rng)
    alpha = mask[window][..., None].astype(np.float32) / 255.0
    blended = background[window].astype(np.float32) * (1.0 - alpha) + texture * alpha
    image = background.copy()
    image[window] = np.where(alpha > 0, np.clip(np.rint(blended), 0, 255), background[window]).astype(np.uint8)
    return RenderedSample(image=image, background=background, mask=mask, box_xywh=(x0, y0, x1 - x0, y1 - y0))


def _render_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Grey-ish clutter with low-contrast blobs and lines plus pixel noise, drawn the same way for every class."""
    base = rng.uniform(70, 180) + rng.normal(0, 10, 3)
    img = Image.new("RGB", (size, size), _rgb(base))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(6, 14))):
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.05, 0.2, 2) * size
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=_rgb(base + rng.normal(0, 22, 3)))
    for _ in range(int(rng.integers(3, 8))):
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        draw.line((x0, y0, x1, y1), fill=_rgb(base + rng.normal(0, 22, 3)), width=int(rng.integers(1, 4)))
    noisy = np.asarray(img, dtype=np.int16) + _gaussian_noise(rng, (size, size, 3), 8)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _gaussian_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: int) -> np.ndarray:
    """Integer noise ~ N(0, sigma^2), int16: random bytes mapped through Gaussian quantiles.

    About 5x cheaper than drawing normals, which dominated the writing time.
    """
    return (_GAUSSIAN_QUANTILES[rng.integers(0, 256, shape, dtype=np.uint8)] * np.int16(sigma) + 8) // 16


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, round(float(v)))) for v in values)
    return r, g, b


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


def _place_shape(
    shape: str, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None, float, float]:
    """Scale, rotate and position a shape fully inside the image.

    Returns:
        Outline vertices and hole vertices (or None) in pixels, the rotation
        angle in radians and the object side in pixels.
    """
    outline, hole = _unit_shape(shape)
    side = rng.uniform(*OBJECT_SIDE_RANGE) * size
    angle = math.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    outline = outline @ rotation.T * (side / 2)
    low, high = outline.min(axis=0), outline.max(axis=0)
    # Keep a one-pixel margin so anti-aliasing never spills past the border.
    offset = rng.uniform(1.0 - low, size - 1.0 - high)
    hole = None if hole is None else hole @ rotation.T * (side / 2) + offset
    return outline + offset, hole, angle, side


def _rasterise_mask(outline: np.ndarray, hole: np.ndarray | None, size: int) -> np.ndarray:
    """Anti-aliased coverage mask, uint8 (size, size): drawn 4x larger, then box-filtered down."""
    big = Image.new("L", (size * SUPERSAMPLE, size * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(big)
    draw.polygon([tuple(p) for p in outline * SUPERSAMPLE], fill=255)
    if hole is not None:
        draw.polygon([tuple(p) for p in hole * SUPERSAMPLE], fill=0)
    return np.asarray(big.resize((size, size), Image.Resampling.BOX), dtype=np.uint8).copy()


def _render_texture(
    spec: SyntheticClass,
    box: tuple[int, int, int, int],
    centre: np.ndarray,
    angle: float,
    side: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Fill of the object inside ``box`` (x0, y0, x1, y1): two tones of the class colour in the class pattern.

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
