"""Largest 8-connected component (metrics/components.py): brute-force BFS and scipy references, both labellers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fam_lightning.metrics import largest_connected_component
from tests.metrics.test_localization import ref_largest  # the brute-force BFS reference

# --------------------------------------------------------------------------- #
# Connected components
# --------------------------------------------------------------------------- #
def _mask(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "#" for c in row] for row in rows]).unsqueeze(0)


def test_largest_of_two_components_wins() -> None:
    mask = _mask(["##....", "##...#", ".....#", ".....#", ".....#"])
    got = largest_connected_component(mask)
    expected = _mask(["##....", "##....", "......", "......", "......"])
    assert torch.equal(got, expected)


def test_diagonal_pixels_join_8_connectivity() -> None:
    # The diagonal is one component of 4 under 8-connectivity (four singletons
    # under 4-connectivity); the 4-connected pair on the right only has 2 pixels.
    mask = _mask(["#......", ".#...##", "..#....", "...#..."])
    got = largest_connected_component(mask)
    expected = _mask(["#......", ".#.....", "..#....", "...#..."])
    assert torch.equal(got, expected)


def test_ties_go_to_first_component_in_raster_order() -> None:
    mask = _mask(["....##", "##....", "......"])
    expected = _mask(["....##", "......", "......"])
    assert torch.equal(largest_connected_component(mask), expected)


@pytest.mark.parametrize("labeller", ["scipy", "union_find"])
def test_serpentine_component_converges(labeller: str) -> None:
    # A snake whose geodesic length (127) is far beyond the image diameter (15).
    rows = []
    for i in range(15):
        if i % 4 in (0, 2):
            rows.append("#" * 15)
        elif i % 4 == 1:
            rows.append("." * 14 + "#")
        else:
            rows.append("#" + "." * 14)
    mask = _mask(rows)
    mask[0, 14, 14] = False  # tail end off; a lone pixel below keeps it a 2-component image
    mask = torch.cat([mask, torch.zeros(1, 2, 15, dtype=torch.bool)], dim=1)
    mask[0, 16, 0] = True
    got = largest_connected_component(mask, labeller=labeller)
    expected = mask.clone()
    expected[0, 16, 0] = False
    assert torch.equal(got, expected)
    assert got[0].tolist() == ref_largest(mask[0].tolist())


def test_empty_mask_gives_empty_component() -> None:
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[1, 2, 3] = True
    got = largest_connected_component(mask)
    assert not got[0].any()
    assert got[1].nonzero().tolist() == [[2, 3]]


@pytest.mark.parametrize("labeller", ["scipy", "union_find"])
def test_components_match_bfs_on_random_masks(labeller: str) -> None:
    gen = torch.Generator().manual_seed(1)
    for height, width in [(9, 13), (16, 16), (5, 31)]:
        density = torch.rand(24, 1, 1, generator=gen) * 0.5 + 0.25
        masks = torch.rand(24, height, width, generator=gen) < density
        got = largest_connected_component(masks, labeller=labeller)
        for b in range(24):
            assert got[b].tolist() == ref_largest(masks[b].tolist()), (height, width, b)


def scipy_largest(mask: torch.Tensor) -> torch.Tensor:
    """Largest component by scipy.ndimage.label (3x3 structure: 8-connectivity); ties: first in raster order."""
    from scipy import ndimage

    out = torch.zeros_like(mask)
    for b, plane in enumerate(mask.numpy()):
        labels, count = ndimage.label(plane, structure=np.ones((3, 3), dtype=int))
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]  # scipy numbers components in raster order of their first pixel
        out[b] = torch.from_numpy(labels == 1 + int(sizes.argmax()))  # argmax: first of the tied maxima
    return out


@pytest.mark.parametrize("early_exit", [False, True])
def test_components_match_scipy_8_connectivity(early_exit: bool) -> None:
    gen = torch.Generator().manual_seed(7)
    for height, width in [(1, 1), (1, 9), (7, 1), (2, 2), (9, 13), (16, 16), (17, 31), (40, 33)]:
        density = torch.rand(32, 1, 1, generator=gen) * 0.6 + 0.2
        masks = torch.rand(32, height, width, generator=gen) < density
        got = largest_connected_component(masks, early_exit=early_exit, labeller="union_find")
        assert torch.equal(got, scipy_largest(masks)), (height, width)


@pytest.mark.parametrize("early_exit", [False, True])
def test_diagonal_only_contacts_join_across_blocks(early_exit: bool) -> None:
    # Chains that touch only corner to corner, at every parity of the 2x2 block grid.
    size = 12
    masks = torch.zeros(4, size, size, dtype=torch.bool)
    for i in range(size):
        masks[0, i, i] = True  # main diagonal
        masks[1, i, size - 1 - i] = True  # anti-diagonal
    masks[2, 1::2, 1::2] = True  # lattice of isolated pixels: no 4- or 8-neighbour anywhere
    masks[2, 4, 6] = masks[2, 5, 6] = True  # joins (3,5)...(5,7) vertically: a 6-pixel component
    masks[3] = masks[0] | masks[1]
    masks[3, 0, 0] = masks[3, 11, 11] = False
    got = largest_connected_component(masks, early_exit=early_exit, labeller="union_find")
    assert torch.equal(got, scipy_largest(masks))
    assert got[0].sum() == size and got[1].sum() == size and got[3].sum() == 2 * size - 2
    assert got[2].sum() == 6


@pytest.mark.parametrize("early_exit", [False, True])
def test_adversarial_shapes_reach_the_fixed_point(early_exit: bool) -> None:
    # Spirals and combs: long geodesics and many merges per component.
    size = 31
    spiral = torch.zeros(size, size, dtype=torch.bool)
    top, left, bottom, right = 0, 0, size - 1, size - 1
    while top <= bottom and left <= right:
        spiral[top, left : right + 1] = True
        spiral[top : bottom + 1, right] = True
        if top + 2 <= bottom:
            spiral[bottom, left : right + 1] = True
        if top + 4 <= bottom:
            spiral[top + 2 : bottom + 1, left] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
    comb = torch.zeros(size, size, dtype=torch.bool)
    comb[::2] = True
    comb[:, 0] = True
    comb[1::4, -1] = True  # extra links make the right-hand side a zig-zag
    masks = torch.stack([spiral, comb, comb.flip(1), spiral.t().flip(0)])
    got = largest_connected_component(masks, early_exit=early_exit, labeller="union_find")
    assert torch.equal(got, scipy_largest(masks))


def _tied_masks(gen: torch.Generator, count: int, height: int, width: int) -> torch.Tensor:
    """Masks made of equal-sized squares on a grid (every component tied), plus random noise maps."""
    masks = torch.zeros(count, height, width, dtype=torch.bool)
    for b in range(count):
        side = int(torch.randint(1, 4, (1,), generator=gen))
        for y in range(0, height - side + 1, side + 1 + b % 2):
            for x in range(0, width - side + 1, side + 2):
                if torch.rand(1, generator=gen) < 0.5:
                    masks[b, y : y + side, x : x + side] = True
    return masks


@pytest.mark.parametrize("height, width", [(1, 1), (1, 9), (7, 1), (2, 2), (9, 13), (17, 31), (84, 84)])
def test_scipy_and_union_find_labellers_agree_including_ties(height: int, width: int) -> None:
    gen = torch.Generator().manual_seed(11)
    density = torch.rand(24, 1, 1, generator=gen) * 0.7 + 0.1
    masks = torch.cat([torch.rand(24, height, width, generator=gen) < density,
                       _tied_masks(gen, 12, height, width), torch.zeros(2, height, width, dtype=torch.bool)])
    masks = masks[torch.randperm(masks.shape[0], generator=gen)]  # empty maps between non-empty ones
    by_scipy = largest_connected_component(masks, labeller="scipy")
    by_union_find = largest_connected_component(masks, labeller="union_find")
    assert torch.equal(by_scipy, by_union_find)
    assert torch.equal(largest_connected_component(masks), by_scipy)  # "auto" on CPU
    assert torch.equal(by_scipy, scipy_largest(masks))


@pytest.mark.parametrize("labeller", ["scipy", "union_find"])
def test_both_labellers_break_ties_by_raster_order(labeller: str) -> None:
    mask = torch.cat([_mask(["....##", "##....", "......"]), _mask(["......", "#...#.", "#...#."]),
                      _mask(["......", "......", "......"])])
    expected = torch.cat([_mask(["....##", "......", "......"]), _mask(["......", "#.....", "#....."]),
                          _mask(["......", "......", "......"])])
    assert torch.equal(largest_connected_component(mask, labeller=labeller), expected)


def test_labeller_errors() -> None:
    with pytest.raises(ValueError, match="labeller must be one of"):
        largest_connected_component(torch.ones(1, 3, 3, dtype=torch.bool), labeller="bfs")
    if not torch.cuda.is_available():
        return
    with pytest.raises(ValueError, match='labeller="scipy" needs a CPU mask'):
        largest_connected_component(torch.ones(1, 3, 3, dtype=torch.bool, device="cuda"), labeller="scipy")
