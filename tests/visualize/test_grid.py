"""The decision grid as a pure function: its layout, and each decision drawn in its verdict's colour."""

from __future__ import annotations

import pytest
import torch

from fam_lightning.visualize import DARK_GREEN, GREEN, RED, decision_grid

TILE = 64


def _layout(tile: int = TILE) -> tuple[int, int, int]:
    """(padding, top, left) of the grid: header of 3 lines (font tile / 4.5), row names left."""
    padding, font = max(2, tile // 32), max(10, round(tile / 4.5))
    return padding, 3 * font + 4 * padding, font + 2 * padding


def _decisions(count: int = 2) -> dict:
    g = torch.Generator().manual_seed(0)
    return dict(
        images=torch.randn(count, 3, 32, 32, generator=g) * 0.1,
        maps={"fam": torch.rand(count, 8, 8, generator=g)},
        correct=torch.tensor([True, False][:count]),
        scores=torch.tensor([0.75, 0.25][:count]),
    )


def _near(pixels: torch.Tensor, color: tuple[float, float, float], tol: float = 0.08) -> torch.Tensor:
    return (pixels - torch.tensor(color).view(3, 1, 1)).abs().amax(0) < tol


def test_one_column_per_decision_and_one_row_per_tile_kind() -> None:
    d = _decisions()
    grid = decision_grid(**d, reference_images=torch.zeros(2, 3, 32, 32), tile_size=TILE)
    padding, top, left = _layout()
    assert grid.shape == (3, top + padding + 3 * (TILE + padding), left + padding + 2 * (TILE + padding))
    assert grid.min() >= 0 and grid.max() <= 1
    several = decision_grid(**d, reference_images=torch.zeros(2, 3, 3, 32, 32), reference_maps=torch.rand(2, 8, 8),
                            votes=torch.tensor([[0.5, 0.3, 0.2], [1.0, 0.0, 0.0]]), tile_size=TILE)
    # image | fam | reference 1 | its map | reference 2 | reference 3
    assert several.shape[1] == top + padding + 6 * (TILE + padding)
    with pytest.raises(ValueError):  # a map per decision, or nothing to draw
        decision_grid(**{**d, "maps": {"fam": torch.rand(3, 8, 8)}}, tile_size=TILE)


def test_a_right_decision_is_framed_and_named_green_a_wrong_one_red() -> None:
    d = _decisions()
    grid = decision_grid(**d, labels=torch.tensor([1, 2]), predictions=torch.tensor([1, 0]),
                         class_names=["cat", "dog", "owl"], tile_size=TILE)
    padding, top, left = _layout()
    for column, (frame, text) in enumerate([(GREEN, DARK_GREEN), (RED, RED)]):
        x0 = left + padding + column * (TILE + padding)
        y0 = top + padding + (TILE + padding)  # the map row
        tile = grid[:, y0 : y0 + TILE, x0 : x0 + TILE]
        assert _near(tile[:, :, :2], frame).all(), f"column {column}: frame"
        header = grid[:, :top, x0 : x0 + TILE]
        other = RED if text is DARK_GREEN else DARK_GREEN
        assert _near(header, text).sum() > 10 and _near(header, other).sum() == 0, f"column {column}: text"


def test_without_classes_the_header_says_right_or_wrong_and_the_image_row_is_the_image() -> None:
    d = _decisions(1)
    grid = decision_grid(**d, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), tile_size=32)
    padding, top, left = _layout(32)
    image = grid[:, top + padding : top + padding + 32, left + padding : left + padding + 32]
    expected = (d["images"][0] * 0.25 + 0.5).clamp(0, 1)
    torch.testing.assert_close(image, expected, atol=1 / 255 + 1e-6, rtol=0)  # 8-bit text canvas round trip
    header = grid[:, :top, left + padding : left + padding + 32]
    assert _near(header, DARK_GREEN).sum() > 5  # "right", in the verdict's green
