"""Deletion / insertion AUC: hand-computed curves on a model whose score is the pixel mean."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from fam_lightning.metrics.deletion_insertion import (
    DeletionAUC,
    InsertionAUC,
    deletion_insertion_auc,
    deletion_insertion_curves,
)


class PixelMean(nn.Module):
    """Features = the image, GAP, dot with (1/3, 1/3, 1/3): the score is the mean of all pixels."""

    pooling = "gap"
    projection = None
    similarity = "dot"

    def forward_features(self, x: Tensor) -> Tensor:
        return x

    def embed(self, feature_maps: Tensor) -> Tensor:
        return feature_maps.mean(dim=(2, 3))


MODEL = PixelMean()
# pixel values (every channel equal): [[4, 1], [2, 3]], mean 2.5
IMAGE = torch.tensor([[4.0, 1.0], [2.0, 3.0]]).expand(1, 3, 2, 2)
# saliency order: (0,0)=4, (1,0)=2, (1,1)=3, (0,1)=1
MAP = torch.tensor([[[0.9, 0.1], [0.5, 0.3]]])
REFS = torch.full((1, 3), 1 / 3)


def test_curves_and_aucs_by_hand() -> None:
    deletion, insertion = deletion_insertion_curves(MODEL, IMAGE, MAP, REFS, steps=4)
    # deleting 4, then 2, then 3, then 1 (zeros baseline)
    torch.testing.assert_close(deletion, torch.tensor([[10 / 4, 6 / 4, 4 / 4, 1 / 4, 0.0]]))
    torch.testing.assert_close(insertion, torch.tensor([[0.0, 4 / 4, 6 / 4, 9 / 4, 10 / 4]]))
    d_auc, i_auc = deletion_insertion_auc(MODEL, IMAGE, MAP, REFS, steps=4)
    # trapezoid, dx = 1/4: (2.5/2 + 1.5 + 1 + 0.25 + 0/2) / 4 and (0/2 + 1 + 1.5 + 2.25 + 2.5/2) / 4
    torch.testing.assert_close(d_auc, torch.tensor([1.0]))
    torch.testing.assert_close(i_auc, torch.tensor([1.5]))


def test_steps_that_do_not_divide_the_pixels_floor_the_count() -> None:
    # steps=3 over 4 pixels: 0, 1, 2, 4 pixels moved
    deletion, insertion = deletion_insertion_curves(MODEL, IMAGE, MAP, REFS, steps=3)
    torch.testing.assert_close(deletion, torch.tensor([[2.5, 1.5, 1.0, 0.0]]))
    torch.testing.assert_close(insertion, torch.tensor([[0.0, 1.0, 1.5, 2.5]]))
    d_auc, _ = deletion_insertion_auc(MODEL, IMAGE, MAP, REFS, steps=3)
    torch.testing.assert_close(d_auc, torch.tensor([(1.25 + 1.5 + 1.0 + 0.0) / 3]))


def test_normalize_divides_by_the_unperturbed_score_and_marks_nonpositive_nan() -> None:
    images = torch.cat([IMAGE, -IMAGE])
    maps = MAP.expand(2, -1, -1)
    refs = REFS.expand(2, -1)
    d_auc, i_auc = deletion_insertion_auc(MODEL, images, maps, refs, steps=4, normalize=True)
    torch.testing.assert_close(d_auc[0], torch.tensor(1.0 / 2.5))
    torch.testing.assert_close(i_auc[0], torch.tensor(1.5 / 2.5))
    assert d_auc[1].isnan() and i_auc[1].isnan()


def test_blur_baseline_of_a_constant_image_leaves_every_score_unchanged() -> None:
    image = torch.full((1, 3, 6, 6), 0.7)
    maps = torch.rand(1, 6, 6, generator=torch.Generator().manual_seed(0))
    deletion, insertion = deletion_insertion_curves(MODEL, image, maps, REFS, steps=5, baseline="blur")
    torch.testing.assert_close(deletion, torch.full((1, 6), 0.7))
    torch.testing.assert_close(insertion, torch.full((1, 6), 0.7))


def test_batched_equals_per_sample_with_multiple_references() -> None:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(3, 3, 5, 4, generator=g)
    maps = torch.rand(3, 5, 4, generator=g)
    refs = torch.randn(3, 2, 3, generator=g)
    weights = torch.rand(3, 2, generator=g)
    batched = deletion_insertion_auc(MODEL, images, maps, refs, weights, steps=7)
    for b in range(3):
        one = slice(b, b + 1)
        single = deletion_insertion_auc(MODEL, images[one], maps[one], refs[one], weights[one], steps=7)
        torch.testing.assert_close(batched[0][b : b + 1], single[0])
        torch.testing.assert_close(batched[1][b : b + 1], single[1])


def test_metric_classes_average_finite_values_and_count_the_rest() -> None:
    deletion, insertion = DeletionAUC(), InsertionAUC()
    deletion.update(torch.tensor([0.2, float("nan")]))
    deletion.update(torch.tensor([0.4]))
    insertion.update(torch.tensor([0.9, 0.7]))
    assert deletion.compute().item() == pytest.approx(0.3)
    assert insertion.compute().item() == pytest.approx(0.8)
    assert int(deletion.num_excluded) == 1 and int(deletion.num_valid) == 2
    assert deletion.higher_is_better is False and insertion.higher_is_better is True
    assert {fx.__name__ for fx in deletion._reductions.values()} == {"dim_zero_sum"}  # DDP ranks add up
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert DeletionAUC().compute().item() == 0.0


def test_bad_shapes_and_baselines_are_named() -> None:
    with pytest.raises(ValueError, match="maps must be"):
        deletion_insertion_auc(MODEL, IMAGE, MAP[:, :1], REFS)
    with pytest.raises(ValueError, match="baseline must be one of"):
        deletion_insertion_auc(MODEL, IMAGE, MAP, REFS, baseline="noise")


def test_a_nan_map_gives_nan_curves_not_an_arbitrary_order() -> None:
    maps = torch.cat([MAP, torch.full_like(MAP, float("nan"))])
    deletion, insertion = deletion_insertion_auc(MODEL, IMAGE.expand(2, 3, 2, 2), maps, REFS.expand(2, 3), steps=4)
    assert torch.isfinite(deletion[0]) and torch.isfinite(insertion[0])
    assert deletion[1].isnan() and insertion[1].isnan()
