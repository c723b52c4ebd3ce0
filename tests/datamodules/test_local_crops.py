"""Local views (``ContrastiveDataModule(local_crop=...)``): where they are cut, their size, seeds and errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fam_lightning.datamodules.augmentation import ContrastiveViews, LocalCrops
from fam_lightning.datamodules.contrastive import ContrastiveDataModule
from tests.datamodules.test_contrastive import NUM_TRAIN, TINY


def _coordinates(height: int, width: int) -> torch.Tensor:
    """uint8 (3, H, W) whose channels 0 / 1 hold each pixel's row / column (2 px per level)."""
    rows = torch.arange(height).view(-1, 1).expand(height, width)
    cols = torch.arange(width).view(1, -1).expand(height, width)
    return torch.stack([rows, cols, torch.zeros_like(rows)]).to(torch.uint8)


def _as_float(image: torch.Tensor) -> torch.Tensor:
    return image.float()


def test_views_are_crops_around_one_centre_at_the_evaluation_scale() -> None:
    torch.manual_seed(0)
    image = _coordinates(96, 120)
    crops = LocalCrops(fraction=1 / 3, eval_size=64, photometric=_as_float, count=2, offset=0.0625, zoom=0.0)
    assert crops.output == 21  # a 32-px crop of the 96-px side, shrunk as evaluation shrinks 96 -> 64
    for _ in range(30):
        views = crops(image)
        assert len(views) == 2 and all(v.shape == (3, 21, 21) for v in views)
        centres = torch.stack([torch.stack([v[0].mean(), v[1].mean()]) for v in views])
        spans = torch.stack([torch.stack([v[0].amax() - v[0].amin(), v[1].amax() - v[1].amin()]) for v in views])
        assert bool((spans > 26).all() and (spans < 33).all())  # each view covers ~32 px of the image
        assert bool(((centres[0] - centres[1]).abs() <= 2 * 0.0625 * 96 + 1.5).all())  # within the offsets
        assert bool((centres >= 15).all() and (centres[:, 0] <= 96 - 15).all() and (centres[:, 1] <= 120 - 15).all())


def test_without_offset_and_zoom_both_views_are_the_same_crop() -> None:
    torch.manual_seed(1)
    crops = LocalCrops(fraction=0.5, eval_size=40, photometric=_as_float, count=2, offset=0.0, zoom=0.0)
    view1, view2 = crops(_coordinates(80, 80))
    assert view1.shape == (3, 20, 20) and torch.equal(view1, view2)


@pytest.mark.parametrize(
    "kwargs, named",
    [({"fraction": 0.0}, "local_crop"), ({"fraction": 1.5}, "local_crop"), ({"offset": 1.0}, "offset"),
     ({"zoom": -0.1}, "zoom"), ({"count": 0}, "count")],
)
def test_bad_local_crop_settings_are_named(kwargs: dict, named: str) -> None:
    settings = {"fraction": 0.3, "eval_size": 32, "photometric": _as_float, **kwargs}
    with pytest.raises(ValueError, match=named):
        LocalCrops(**settings)


def test_data_module_local_views_have_the_local_size_and_fixed_seeds(tmp_path: Path) -> None:
    datamodule = ContrastiveDataModule(data_dir=str(tmp_path), **TINY, local_crop=0.5, local_crop_offset=0.1)
    datamodule.setup("fit")
    views = datamodule._train_views()
    assert isinstance(views, ContrastiveViews) and isinstance(views.transform, LocalCrops)
    item = views[(3, 1234)]
    assert item["view1"].shape == item["view2"].shape == (3, 16, 16)  # half of the 32-px evaluation size
    assert not torch.equal(item["view1"], item["view2"])
    again = views[(3, 1234)]
    assert torch.equal(item["view1"], again["view1"]) and torch.equal(item["view2"], again["view2"])
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["view1"].shape == (TINY["batch_size"], 3, 16, 16) and int(batch["index"].max()) < NUM_TRAIN


def test_one_view_for_npid(tmp_path: Path) -> None:
    datamodule = ContrastiveDataModule(data_dir=str(tmp_path), **TINY, two_views=False, local_crop=0.25)
    datamodule.setup("fit")
    assert datamodule._train_views().transform.count == 1
    assert datamodule._train_views()[(0, 5)]["image"].shape == (3, 8, 8)


def test_a_grid_centres_the_views_on_one_cell_and_says_which() -> None:
    torch.manual_seed(2)
    image = _coordinates(96, 96)
    crops = LocalCrops(fraction=1 / 3, eval_size=96, photometric=_as_float, count=1, offset=0.0625, zoom=0.0, grid=3)
    assert crops.cells == 9
    seen = set()
    for _ in range(60):
        (view,), cell = crops.draw(image)
        row, col = divmod(cell, 3)
        centre = torch.stack([view[0].mean(), view[1].mean()])
        expected = torch.tensor([(row + 0.5) * 32, (col + 0.5) * 32])
        assert bool(((centre - expected).abs() <= 0.0625 * 96 + 1.5).all()), (cell, centre)  # its cell's centre
        seen.add(cell)
    assert seen == set(range(9))
    assert LocalCrops(fraction=0.5, eval_size=32, photometric=_as_float).cells == 1  # no grid: the image


def test_grid_items_carry_their_instance_the_memory_row_of_that_part(tmp_path: Path) -> None:
    datamodule = ContrastiveDataModule(data_dir=str(tmp_path), **TINY, two_views=False, local_crop=0.5,
                                       local_crop_grid=2)
    datamodule.setup("fit")
    assert datamodule.instances_per_image == 4
    views = datamodule._train_views()
    for index in range(NUM_TRAIN):
        item = views[(index, 77)]
        assert index * 4 <= item["instance"] < index * 4 + 4 and item["index"] == index
        assert views[(index, 77)]["instance"] == item["instance"]  # a fixed function of the item's seed
    batch = next(iter(datamodule.train_dataloader()))
    assert torch.equal(batch["instance"] // 4, batch["index"])
    assert ContrastiveDataModule(data_dir=str(tmp_path), **TINY, local_crop=0.5).instances_per_image == 1
    assert "instance" not in ContrastiveDataModule(data_dir=str(tmp_path), **TINY, local_crop=0.5)._train_views()[0]
    with pytest.raises(ValueError, match="local_crop_grid=2 places local views: it needs local_crop"):
        ContrastiveDataModule(data_dir=str(tmp_path), **TINY, local_crop_grid=2)


def test_bad_local_crop_is_named_by_the_data_module(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="local_crop"):
        ContrastiveDataModule(data_dir=str(tmp_path), **TINY, local_crop=0.0)


def test_the_data_module_says_how_large_its_training_views_are(tmp_path: Path) -> None:
    assert ContrastiveDataModule(data_dir=str(tmp_path), **TINY).train_view_size == 32
    assert ContrastiveDataModule(data_dir=str(tmp_path), **TINY, local_crop=0.25).train_view_size == 8
