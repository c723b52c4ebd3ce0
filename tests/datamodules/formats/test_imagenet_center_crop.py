"""The published ImageNet evaluation protocol: resize 256 + centre crop 224, boxes moved with the crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from fam_lightning.datamodules import ContrastiveDataModule
from fam_lightning.datamodules.formats.geometry import center_crop_boxes, center_crop_geometry
from fam_lightning.datamodules.formats.imagenet import ImageNetDataset
from fam_lightning.datamodules.formats.images import load_center_cropped_image
from tests.datamodules.tiny_data import WNIDS, voc, write_tiny_imagenet


def _reference_box(width: int, height: int, box: tuple[int, int, int, int], size: int, resize: int) -> list[float]:
    """The bounding box of a drawn box mask after torchvision's Resize(resize) + CenterCrop(size)."""
    mask = torch.zeros(1, height, width)
    x0, y0, x1, y1 = box
    mask[:, y0:y1, x0:x1] = 1.0
    cropped = TF.center_crop(TF.resize(mask, [resize], interpolation=InterpolationMode.NEAREST_EXACT), [size])[0]
    ys, xs = torch.nonzero(cropped > 0.5, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


@pytest.mark.parametrize(
    "width, height, box",
    [
        (500, 375, (120, 40, 400, 300)),   # landscape, inside the crop
        (500, 375, (0, 0, 90, 375)),       # landscape, half cut off at the left edge
        (300, 450, (30, 10, 270, 200)),    # portrait, cut at the top
        (224, 224, (10, 20, 100, 210)),    # square, already the size: scaled by 256 / 224, then cropped
    ],
)
def test_centre_crop_boxes_equal_a_reference_crop_of_a_drawn_box_mask(width: int, height: int, box) -> None:
    ours = center_crop_boxes([box], width, height, size=224, resize_size=256)
    assert ours.shape == (1, 4)
    # the mask is resized with nearest neighbours: its edges sit within one pixel of the exact box
    torch.testing.assert_close(ours[0], torch.tensor(_reference_box(width, height, box, 224, 256)), atol=1.0, rtol=0)


def test_box_cropped_away_is_dropped_and_geometry_is_torchvisions() -> None:
    assert center_crop_boxes([(0, 0, 40, 375)], 500, 375, 224, 256).shape == (0, 4)  # left of the crop
    assert center_crop_geometry(500, 375, 224, 256) == (341, 256, 58, 16)
    with pytest.raises(ValueError, match="resize_size must be >= the crop size 224"):
        center_crop_geometry(500, 375, 224, 200)


def test_centre_cropped_image_is_torchvisions_resize_and_crop(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.JPEG"
    Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(path, quality=95)
    ours, size = load_center_cropped_image(path, 224, 256)
    assert size == (500, 375) and ours.shape == (3, 224, 224) and ours.dtype == torch.uint8
    with Image.open(path) as image:
        reference = TF.center_crop(TF.resize(image.convert("RGB"), [256], interpolation=InterpolationMode.BILINEAR),
                                   [224])
    assert torch.equal(ours, torch.from_numpy(np.asarray(reference).copy()).permute(2, 0, 1))


def test_dataset_and_data_module_option(tmp_path: Path) -> None:
    root = write_tiny_imagenet(tmp_path / "imagenet")  # train/<wnid0>/t_0.JPEG: 200x100, two boxes
    (root / "train" / WNIDS[0] / "t_0.xml").write_text(voc(200, 100, (21, 11, 60, 40), (1, 1, 30, 100)))
    item = ImageNetDataset(root, "train", image_size=56, preprocess="center_crop")[0]
    assert item["image"].shape == (3, 56, 56)
    # 200x100 -> 128x64 (shorter side round(56 / 0.875) = 64), crop x in [36, 92): the second box is cut away
    expected = _reference_box(200, 100, (20, 10, 60, 40), 56, 64)
    torch.testing.assert_close(item["boxes"], torch.tensor([expected]), atol=1.0, rtol=0)
    resized = ImageNetDataset(root, "train", image_size=56)[0]  # the default: the whole image, both boxes
    assert resized["boxes"].shape == (2, 4)
    with pytest.raises(ValueError, match="preprocess must be one of"):
        ImageNetDataset(root, "train", preprocess="crop")
    assert ContrastiveDataModule(root=str(root)).eval_preprocess == "resize"
    module = ContrastiveDataModule(root=str(root), image_size=56, eval_preprocess="center_crop", batch_size=2)
    module.setup("validate")
    assert module.val_dataloader()[0].dataset.preprocess == "center_crop"
    with pytest.raises(ValueError, match="eval_preprocess must be one of"):
        ContrastiveDataModule(root=str(root), eval_preprocess="centre")
