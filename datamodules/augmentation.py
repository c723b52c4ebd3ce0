"""Augmented views for contrastive training (NPID, MoCo): the augmentation and the views data set.

The augmentation is MoCo v1 / NPID's (He et al. 2020, Wu et al. 2018), with MoCo v2's Gaussian blur
as an option; see :func:`contrastive_augmentation`. Views are cropped from the image at its stored
resolution, not from the ``S x S`` evaluation resize. No Lightning here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from .formats.imagenet_index import ImageNetIndex
from .formats.images import IMAGENET_MEAN, IMAGENET_STD, load_image

# MoCo v2 blurs 224-pixel crops with sigma in [0.1, 2.0]; the range scales with the crop side.
BLUR_SIGMA_AT_224 = (0.1, 2.0)


DEFAULT_CROP_SCALE = (0.2, 1.0)
DEFAULT_COLOR_JITTER = (0.4, 0.4, 0.4, 0.1)


def contrastive_augmentation(
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    gaussian_blur: bool = False,
    crop_scale: Sequence[float] = DEFAULT_CROP_SCALE,
    color_jitter: Sequence[float] = DEFAULT_COLOR_JITTER,
    color_jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
) -> v2.Compose:
    """One random view: uint8 (3, H, W) image -> normalised float (3, S, S).

    MoCo v1 / NPID (the defaults): RandomResizedCrop(S, scale=(0.2, 1.0)),
    ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8, RandomGrayscale(p=0.2),
    RandomHorizontalFlip. With ``gaussian_blur`` (MoCo v2): GaussianBlur with
    p=0.5 after the grayscale step, kernel ~10% of ``S`` (odd), sigma in
    ``[0.1, 2.0] x S / 224``. Where colour is part of what a class is (the
    synthetic data: shape x colour x texture), hue jitter and grayscale teach
    the model to ignore it: set their strengths to 0.

    Args:
        image_size: Side ``S`` of the output view.
        mean: Normalisation mean (images in [0, 1]).
        std: Normalisation standard deviation.
        gaussian_blur: Add MoCo v2's blur.
        crop_scale: ``(min, max)`` area fraction of the random resized crop.
        color_jitter: ``(brightness, contrast, saturation, hue)`` strengths; all 0: no jitter.
        color_jitter_p: Probability of applying the colour jitter.
        grayscale_p: Probability of turning the view grey.

    Returns:
        The transform (torchvision.transforms.v2, on tensors).
    """
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    low, high = (float(v) for v in crop_scale)
    if not 0 < low <= high <= 1:
        raise ValueError(f"crop_scale must be (min, max) with 0 < min <= max <= 1, got {tuple(crop_scale)}")
    return v2.Compose([
        v2.RandomResizedCrop(image_size, scale=(low, high), antialias=True),
        *photometric_steps(image_size, mean, std, gaussian_blur, color_jitter, color_jitter_p, grayscale_p),
    ])


def photometric_steps(
    image_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    gaussian_blur: bool = False,
    color_jitter: Sequence[float] = DEFAULT_COLOR_JITTER,
    color_jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
) -> list[Callable[..., Any]]:
    """Everything of a view after its crop: to float, colour jitter, grayscale, blur, flip, normalisation.

    Args are those of :func:`contrastive_augmentation`; ``image_size`` is the side of the view (it sets the blur).
    """
    jitter = tuple(float(v) for v in color_jitter)
    if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
        raise ValueError(
            f"color_jitter must be (brightness, contrast, saturation, hue) >= 0 with hue <= 0.5, got {tuple(color_jitter)}"
        )
    for name, prob in (("color_jitter_p", color_jitter_p), ("grayscale_p", grayscale_p)):
        if not 0 <= prob <= 1:
            raise ValueError(f"{name} must be a probability in [0, 1], got {prob}")
    steps: list[Callable[..., Any]] = [v2.ToDtype(torch.float32, scale=True)]
    if any(jitter) and color_jitter_p > 0:
        steps.append(v2.RandomApply([v2.ColorJitter(*jitter)], p=color_jitter_p))
    if grayscale_p > 0:
        steps.append(v2.RandomGrayscale(p=grayscale_p))
    if gaussian_blur:
        kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)
        sigma = tuple(s * image_size / 224 for s in BLUR_SIGMA_AT_224)
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=sigma)], p=0.5))
    return steps + [v2.RandomHorizontalFlip(), v2.Normalize(list(mean), list(std))]


def local_view_side(fraction: float, eval_size: int) -> int:
    """Side in pixels of a :class:`LocalCrops` view: ``fraction`` of the evaluation size, at least 1."""
    return max(1, round(fraction * eval_size))


class LocalCrops:
    """Views cropped around one random centre, at the scale the model is evaluated at.

    The centre is drawn uniformly where a crop of side ``fraction`` x the
    image's shorter side fits; each of ``count`` views is a crop of that side
    times a random zoom in ``[1 - zoom, 1 + zoom]``, moved by up to ``offset``
    x the shorter side, resized to ``round(fraction x eval_size)`` pixels (the
    factor by which an evaluation resizes the whole image, so objects keep their
    evaluation size), then ``photometric`` (:func:`photometric_steps`). The two
    views of MoCo thus share most of their content; each shows a part of the image.

    Args:
        fraction: Crop side as a fraction of the image's shorter side, in (0, 1].
        eval_size: Side the whole image is resized to for evaluation (``image_size``).
        photometric: The rest of a view's augmentation.
        count: Views per image (2 for MoCo, 1 for NPID).
        offset: Largest shift of a view from the shared centre, a fraction of the shorter side.
        zoom: Largest relative change of a view's crop side.
        grid: 0 (default): the centre is drawn anywhere. ``G``: it is the centre of one of the ``G x G``
            cells of the image, drawn uniformly (:meth:`draw` says which), so a view is one of ``G x G``
            fixed parts of the image: NPID's instances then are those parts, one memory row each.
    """

    def __init__(
        self,
        fraction: float,
        eval_size: int,
        photometric: Callable[[torch.Tensor], torch.Tensor],
        count: int = 2,
        offset: float = 0.0625,
        zoom: float = 0.15,
        grid: int = 0,
    ) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"local_crop must be a fraction of the image side in (0, 1], got {fraction}")
        if not 0 <= offset < 1 or not 0 <= zoom < 1:
            raise ValueError(f"local crop offset and zoom must be in [0, 1), got {offset} and {zoom}")
        if count < 1 or grid < 0:
            raise ValueError(f"count must be >= 1 and grid >= 0, got {count} and {grid}")
        self.fraction, self.offset, self.zoom, self.count = float(fraction), float(offset), float(zoom), count
        self.grid = int(grid)
        self.cells = max(1, self.grid) ** 2  # the parts of an image its views are drawn from (1: anywhere)
        self.output = local_view_side(fraction, eval_size)
        self.photometric = photometric

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.draw(image)[0]

    def draw(self, image: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], int]:
        """The views of ``image`` and the grid cell around whose centre they lie (0 without a grid)."""
        height, width = image.shape[-2:]
        short = min(height, width)
        side = self.fraction * short
        cell = 0
        if self.grid:
            cell = int(torch.randint(self.cells, ()))
            row, col = divmod(cell, self.grid)
            centre = torch.tensor([(row + 0.5) * height / self.grid, (col + 0.5) * width / self.grid])
        else:
            centre = torch.tensor([side / 2 + torch.rand(()).item() * (height - side),
                                   side / 2 + torch.rand(()).item() * (width - side)])
        views = []
        for _ in range(self.count):
            size = min(short, max(1, round(side * (1 + self.zoom * (2 * torch.rand(()).item() - 1)))))
            shift = (2 * torch.rand(2) - 1) * self.offset * short
            top = int((centre[0] + shift[0] - size / 2).round().clamp(0, height - size))
            left = int((centre[1] + shift[1] - size / 2).round().clamp(0, width - size))
            crop = v2.functional.resized_crop(image, top, left, size, size, [self.output, self.output], antialias=True)
            views.append(self.photometric(crop))
        return tuple(views), cell

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(fraction={self.fraction}, output={self.output}, count={self.count}, "
                f"offset={self.offset}, zoom={self.zoom}, grid={self.grid}, photometric={self.photometric!r})")


class TwoViewTransform:
    """Apply one random transform twice, independently: MoCo's query and key views.

    Args:
        transform: A random transform, e.g. :func:`contrastive_augmentation`.
    """

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.transform = transform

    def __call__(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(image), self.transform(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform!r})"


class ContrastiveViews(Dataset):
    """Augmented views of the images of an :class:`ImageNetIndex` (see the module docstring for items).

    Args:
        split_index: The images (a training split).
        transform: One random view of a uint8 (3, H, W) image, or :class:`LocalCrops` (its views drawn together).
        two_views: Two independent views ("view1", "view2") or one ("image").
        cache: Keep decoded uint8 images at their stored size in memory (per
            process): only for small data sets such as the synthetic one.
    """

    def __init__(
        self,
        split_index: ImageNetIndex,
        transform: Callable[[torch.Tensor], torch.Tensor],
        two_views: bool = True,
        cache: bool = False,
    ) -> None:
        super().__init__()
        self.split_index = split_index
        self.transform = transform
        self.two_views = two_views
        self.labels: torch.Tensor = torch.tensor(split_index.labels, dtype=torch.long)
        self._cache: list[torch.Tensor | None] | None = [None] * len(split_index) if cache else None

    def __len__(self) -> int:
        return len(self.split_index)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Item ``key``: an index (views from the global RNG), or ``(index, item_seed)``
        from an ``EpochSeededSampler`` (views a fixed function of the seed, the global RNG untouched)."""
        index, item_seed = key if isinstance(key, tuple) else (key, None)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images of split {self.split_index.split!r}")
        image = self._load(index)
        if item_seed is None:
            return self._views(image, index) | {"label": int(self.labels[index]), "index": index}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            item = self._views(image, index)
        return item | {"label": int(self.labels[index]), "index": index}

    def _views(self, image: torch.Tensor, index: int) -> dict[str, Any]:
        if isinstance(self.transform, LocalCrops):  # views drawn together, around one centre
            views, cell = self.transform.draw(image)
            item = {"view1": views[0], "view2": views[1]} if self.two_views else {"image": views[0]}
            if self.transform.grid:  # the part of the image the views show: NPID's instance (memory row)
                item["instance"] = index * self.transform.cells + cell
            return item
        if self.two_views:
            view1, view2 = TwoViewTransform(self.transform)(image)
            return {"view1": view1, "view2": view2}
        return {"image": self.transform(image)}

    def _load(self, index: int) -> torch.Tensor:
        if self._cache is None:
            return load_image(self.split_index.paths[index])
        if self._cache[index] is None:
            self._cache[index] = load_image(self.split_index.paths[index])
        return self._cache[index]
