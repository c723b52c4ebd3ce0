"""RetrievalDataModule's training crops: seeded (a resumed run crops as the straight one), boxes follow."""

from __future__ import annotations

import pytest
import torch

from fam_lightning.datamodules.retrieval import IndexedDataset, random_resized_crop


class _Images:
    """Three 3 x 32 x 48 images with a box each (the CUBDataset interface IndexedDataset reads)."""

    labels = torch.tensor([0, 0, 1])

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int) -> dict:
        image = torch.arange(3 * 32 * 48, dtype=torch.float32).reshape(3, 32, 48) / 1000 + index
        return {"image": image, "box": torch.tensor([8.0, 4.0, 40.0, 28.0]), "label": int(self.labels[index])}


def test_the_crop_is_a_function_of_the_item_seed_and_keeps_the_size() -> None:
    data = IndexedDataset(_Images(), crop_scale=(0.2, 0.6))
    first, again, other = data[(1, 123)], data[(1, 123)], data[(1, 124)]
    assert first["image"].shape == (3, 32, 48)
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["box"], again["box"])
    assert not torch.equal(first["image"], other["image"])
    assert not torch.equal(first["image"], _Images()[1]["image"])  # it did crop


def test_without_crop_scale_items_are_untouched() -> None:
    assert torch.equal(IndexedDataset(_Images())[(2, 7)]["image"], _Images()[2]["image"])


def test_the_box_moves_with_the_crop_and_stays_inside() -> None:
    image = torch.zeros(3, 40, 40)
    image[:, 10:20, 10:20] = 1.0  # the boxed object
    box = torch.tensor([10.0, 10.0, 20.0, 20.0])
    for seed in range(20):
        cropped, moved = random_resized_crop(image, box, (0.3, 0.9), torch.Generator().manual_seed(seed))
        x0, y0, x1, y1 = moved.tolist()
        assert 0 <= x0 <= x1 <= 40 and 0 <= y0 <= y1 <= 40
        if x1 - x0 >= 4 and y1 - y0 >= 4:  # the object's pixels are where its box says
            inside = cropped[0, round(y0) + 1:round(y1) - 1, round(x0) + 1:round(x1) - 1]
            assert inside.mean() > 0.9


@pytest.mark.parametrize("scale", [(0.0, 0.5), (0.6, 0.4), (0.5, 1.5)])
def test_bad_crop_scales_are_named(scale: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="crop_scale"):
        IndexedDataset(_Images(), crop_scale=scale)
