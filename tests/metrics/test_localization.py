"""Localisation metrics: known answers and brute-force references in plain Python."""

from __future__ import annotations

from collections import deque

import pytest
import torch

from fam_lightning.metrics import (
    EnergyPointingGame,
    LocalizationIoU,
    boxes_to_mask,
    energy_pointing_game,
    largest_connected_component,
    localization_iou,
    pad_boxes,
    saliency_to_box,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --------------------------------------------------------------------------- #
# Brute-force references (plain Python loops over pixels)
# --------------------------------------------------------------------------- #
def ref_components(mask: list[list[bool]]) -> list[list[tuple[int, int]]]:
    """8-connected components by BFS, in raster order of their first pixel."""
    height, width = len(mask), len(mask[0])
    seen = [[False] * width for _ in range(height)]
    components = []
    for y in range(height):
        for x in range(width):
            if not mask[y][x] or seen[y][x]:
                continue
            seen[y][x] = True
            queue, pixels = deque([(y, x)]), []
            while queue:
                cy, cx = queue.popleft()
                pixels.append((cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < height and 0 <= nx < width and mask[ny][nx] and not seen[ny][nx]:
                            seen[ny][nx] = True
                            queue.append((ny, nx))
            components.append(pixels)
    return components


def ref_largest(mask: list[list[bool]]) -> list[list[bool]]:
    """Largest component; ties go to the first one in raster order (strict >)."""
    height, width = len(mask), len(mask[0])
    best: list[tuple[int, int]] = []
    for pixels in ref_components(mask):
        if len(pixels) > len(best):
            best = pixels
    out = [[False] * width for _ in range(height)]
    for y, x in best:
        out[y][x] = True
    return out


def ref_in_box(x: int, y: int, box: list[float]) -> bool:
    x0, y0, x1, y1 = box
    return x0 <= x + 0.5 < x1 and y0 <= y + 0.5 < y1


def ref_energy(sal: list[list[float]], boxes: list[list[float]]) -> float:
    inside = total = 0.0
    for y, row in enumerate(sal):
        for x, value in enumerate(row):
            total += value
            if any(ref_in_box(x, y, b) for b in boxes):
                inside += value
    return inside / total if total > 0 else 0.0


def ref_box_iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def ref_iou(sal: list[list[float]], boxes: list[list[float]], threshold: float) -> float:
    peak = max(max(row) for row in sal)
    if peak <= 0:
        return 0.0
    keep = [[v >= threshold * peak for v in row] for row in sal]
    comp = ref_largest(keep)
    ys = [y for y, row in enumerate(comp) for v in row if v]
    xs = [x for row in comp for x, v in enumerate(row) if v]
    pred = [min(xs), min(ys), max(xs) + 1, max(ys) + 1]
    return max(ref_box_iou(pred, b) for b in boxes)


def random_boxes(gen: torch.Generator, batch: int, height: int, width: int, fractional: bool) -> list[torch.Tensor]:
    out = []
    for _ in range(batch):
        n = int(torch.randint(1, 4, (1,), generator=gen))
        xs = torch.rand(n, 2, generator=gen) * (width + 2) - 1
        ys = torch.rand(n, 2, generator=gen) * (height + 2) - 1
        if not fractional:
            xs, ys = xs.round(), ys.round()
        xs, ys = xs.sort(dim=1).values, ys.sort(dim=1).values
        out.append(torch.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], dim=1))
    return out


# --------------------------------------------------------------------------- #
# Boxes
# --------------------------------------------------------------------------- #
def test_integer_box_mask_is_exactly_the_slice() -> None:
    mask = boxes_to_mask(torch.tensor([[1, 2, 4, 5]]), 6, 7)
    expected = torch.zeros(1, 6, 7, dtype=torch.bool)
    expected[0, 2:5, 1:4] = True
    assert mask.dtype == torch.bool
    assert torch.equal(mask, expected)


def test_fractional_box_uses_pixel_centres() -> None:
    # centres 0.5 and 1.5 lie in [0.5, 2.5); 2.5 does not. Rows: only 0.5 in [0.5, 1.5).
    mask = boxes_to_mask(torch.tensor([[0.5, 0.5, 2.5, 1.5]]), 3, 4)
    expected = torch.zeros(1, 3, 4, dtype=torch.bool)
    expected[0, 0, 0:2] = True
    assert torch.equal(mask, expected)
    # Shifted by 0.1: centre 0.5 drops out, 2.5 comes in.
    mask = boxes_to_mask(torch.tensor([[0.6, 0.4, 2.6, 1.4]]), 3, 4)
    expected = torch.zeros(1, 3, 4, dtype=torch.bool)
    expected[0, 0, 1:3] = True
    assert torch.equal(mask, expected)


def test_box_outside_image_is_clipped_and_degenerate_box_is_empty() -> None:
    mask = boxes_to_mask(torch.tensor([[-3.0, -3.0, 2.0, 1.0], [3.0, 1.0, 3.0, 4.0]]), 3, 4)
    assert mask[0].nonzero().tolist() == [[0, 0], [0, 1]]
    assert not mask[1].any()


def test_pad_boxes_list_form() -> None:
    boxes = [torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[1.0, 1, 2, 2], [2.0, 2, 3, 3], [0.0, 0, 3, 3]])]
    padded, valid = pad_boxes(boxes)
    assert padded.shape == (2, 3, 4)
    assert valid.tolist() == [[True, False, False], [True, True, True]]
    assert torch.equal(padded[1], boxes[1])
    assert torch.equal(padded[0, 0], boxes[0][0])
    padded, valid = pad_boxes(torch.tensor([[0.0, 0, 1, 1], [1.0, 1, 2, 2]]))
    assert padded.shape == (2, 1, 4) and valid.all()


# --------------------------------------------------------------------------- #
# Energy pointing game
# --------------------------------------------------------------------------- #
def test_energy_box_edges_inclusive_start_exclusive_end() -> None:
    box = torch.tensor([[2, 1, 5, 4]])  # covers x 2..4, y 1..3
    cases = {(1, 2): 1.0, (1, 4): 1.0, (3, 2): 1.0, (1, 5): 0.0, (4, 2): 0.0, (0, 3): 0.0, (2, 1): 0.0}
    for (y, x), expected in cases.items():
        sal = torch.zeros(1, 6, 7)
        sal[0, y, x] = 1.0
        assert energy_pointing_game(sal, box).tolist() == [expected], (y, x)


def test_energy_union_of_overlapping_boxes_counts_once() -> None:
    sal = torch.ones(1, 4, 4)
    boxes = [torch.tensor([[0.0, 0, 2, 2], [1.0, 1, 3, 3]])]  # 4 + 4 - 1 = 7 pixels
    assert energy_pointing_game(sal, boxes).item() == pytest.approx(7 / 16)


def test_energy_fractional_box() -> None:
    sal = torch.arange(12.0).reshape(1, 3, 4)
    # centres rows {0.5, 1.5} in [0.2, 1.9), cols {1.5, 2.5} in [1.1, 3.0)
    got = energy_pointing_game(sal, torch.tensor([[1.1, 0.2, 3.0, 1.9]]))
    assert got.item() == pytest.approx((1 + 2 + 5 + 6) / 66)


def test_energy_empty_map_is_zero_and_constant_map_is_area_fraction() -> None:
    sal = torch.stack([torch.zeros(5, 5), torch.full((5, 5), 0.3)])
    got = energy_pointing_game(sal, torch.tensor([[0, 0, 2, 5], [0, 0, 2, 5]]))
    assert not got.isnan().any()
    assert got.tolist() == pytest.approx([0.0, 10 / 25])


@pytest.mark.parametrize("fractional", [False, True])
def test_energy_matches_pixel_loop_on_random_inputs(fractional: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    sal = torch.rand(8, 9, 11, generator=gen) ** 3
    sal[3] = 0.0  # an empty map in the batch
    boxes = random_boxes(gen, 8, 9, 11, fractional)
    got = energy_pointing_game(sal, boxes)
    expected = [ref_energy(sal[b].tolist(), boxes[b].tolist()) for b in range(8)]
    assert got.tolist() == pytest.approx(expected, abs=1e-6)
    mask = boxes_to_mask(boxes, 9, 11)
    for b in range(8):
        ref = [[any(ref_in_box(x, y, box) for box in boxes[b].tolist()) for x in range(11)] for y in range(9)]
        assert mask[b].tolist() == ref


# --------------------------------------------------------------------------- #
# Localisation IoU
# --------------------------------------------------------------------------- #
def test_iou_known_answer_and_best_matching_box() -> None:
    sal = torch.zeros(1, 8, 8)
    sal[0, 2:5, 1:4] = 1.0  # estimated box (1, 2, 4, 5), area 9
    sal[0, 7, 7] = 1.0  # smaller component, ignored
    one = localization_iou(sal, torch.tensor([[1, 2, 4, 5]]))
    assert one.tolist() == [1.0]
    # (2, 2, 6, 5): inter 2 * 3 = 6, union 9 + 12 - 6 = 15
    several = localization_iou(sal, [torch.tensor([[6.0, 6, 8, 8], [2.0, 2, 6, 5]])])
    assert several.item() == pytest.approx(6 / 15)


def test_iou_component_touching_border() -> None:
    sal = torch.zeros(1, 5, 6)
    sal[0, 3:, 4:] = 0.8  # bottom-right corner: box (4, 3, 6, 5)
    box, found = saliency_to_box(sal)
    assert found.tolist() == [True]
    assert box.tolist() == [[4.0, 3.0, 6.0, 5.0]]
    assert localization_iou(sal, torch.tensor([[4, 3, 6, 5]])).tolist() == [1.0]


def test_iou_threshold_keeps_pixels_equal_to_threshold() -> None:
    sal = torch.zeros(1, 4, 6)
    sal[0, 1, 1] = 1.0
    sal[0, 1, 2] = 0.25  # exactly 0.25 * max: kept
    sal[0, 1, 3] = 0.2499  # below: dropped
    box, _ = saliency_to_box(sal, threshold=0.25)
    assert box.tolist() == [[1.0, 1.0, 3.0, 2.0]]


def test_iou_empty_and_constant_maps() -> None:
    sal = torch.stack([torch.zeros(4, 5), torch.full((4, 5), 0.7)])
    gt = torch.tensor([[0, 0, 5, 2], [0, 0, 5, 2]])
    got = localization_iou(sal, gt)
    assert not got.isnan().any()
    # constant map: the whole image is one component, box (0, 0, 5, 4)
    assert got.tolist() == pytest.approx([0.0, 10 / 20])


@pytest.mark.parametrize("threshold", [0.2, 0.5])
def test_iou_matches_reference_on_random_maps(threshold: float) -> None:
    gen = torch.Generator().manual_seed(2)
    sal = torch.rand(12, 10, 12, generator=gen) ** 2
    sal[0] = 0.0
    boxes = random_boxes(gen, 12, 10, 12, fractional=True)
    got = localization_iou(sal, boxes, threshold)
    expected = [ref_iou(sal[b].tolist(), boxes[b].tolist(), threshold) for b in range(12)]
    assert got.tolist() == pytest.approx(expected, abs=1e-6)


# --------------------------------------------------------------------------- #
# Dtypes, errors, devices
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_functionals_keep_dtype_and_agree_across_dtypes(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    sal = torch.rand(4, 7, 9, generator=gen)
    boxes = random_boxes(gen, 4, 7, 9, fractional=True)
    epg = energy_pointing_game(sal.to(dtype), boxes)
    iou = localization_iou(sal.to(dtype), boxes)
    assert epg.dtype == dtype and iou.dtype == dtype
    assert epg.tolist() == pytest.approx(energy_pointing_game(sal, boxes).tolist(), abs=1e-6)
    assert iou.tolist() == pytest.approx(localization_iou(sal, boxes).tolist(), abs=1e-6)


def test_wrong_shapes_raise_value_errors_naming_the_argument() -> None:
    sal = torch.rand(2, 4, 4)
    with pytest.raises(ValueError, match="saliency"):
        energy_pointing_game(torch.rand(4, 4), torch.tensor([[0, 0, 1, 1]]))
    with pytest.raises(ValueError, match="saliency"):
        localization_iou(torch.rand(2, 1, 4, 4), torch.tensor([[0, 0, 1, 1]] * 2))
    with pytest.raises(ValueError, match="boxes"):
        energy_pointing_game(sal, torch.tensor([[0, 0, 1]] * 2))
    with pytest.raises(ValueError, match="boxes"):
        energy_pointing_game(sal, torch.tensor([[0, 0, 1, 1]] * 3))  # batch mismatch
    with pytest.raises(ValueError, match=r"boxes\[1\]"):
        localization_iou(sal, [torch.tensor([[0, 0, 1, 1]]), torch.zeros(0, 4)])
    with pytest.raises(ValueError, match="mask"):
        largest_connected_component(torch.ones(2, 3, 3))
    with pytest.raises(ValueError, match="mask"):
        largest_connected_component(torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="threshold"):
        LocalizationIoU(threshold=1.5)


# --------------------------------------------------------------------------- #
# Metric classes
# --------------------------------------------------------------------------- #
def _batches(seed: int) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for batch in (3, 5, 2):
        sal = torch.rand(batch, 8, 10, generator=gen) ** 2
        out.append((sal, random_boxes(gen, batch, 8, 10, fractional=True)))
    return out


@pytest.mark.parametrize(
    ("metric_cls", "functional"), [(EnergyPointingGame, energy_pointing_game), (LocalizationIoU, localization_iou)]
)
def test_class_matches_functional_and_one_big_update(metric_cls, functional) -> None:
    batches = _batches(4)
    metric = metric_cls()
    for sal, boxes in batches:
        metric.update(sal, boxes)
    expected = torch.cat([functional(sal, boxes) for sal, boxes in batches]).double().mean()
    assert metric.compute().item() == pytest.approx(expected.item(), abs=1e-6)

    big = metric_cls()
    big.update(torch.cat([s for s, _ in batches]), [b for _, bs in batches for b in bs])
    assert big.compute().item() == pytest.approx(metric.compute().item(), abs=1e-6)

    # Two "ranks" merged by the sum reduction equal one metric over all data.
    rank0, rank1 = metric_cls(), metric_cls()
    rank0.update(*batches[0])
    rank1.update(*batches[1])
    rank1.update(*batches[2])
    rank0.merge_state(rank1)
    assert rank0.compute().item() == pytest.approx(metric.compute().item(), abs=1e-6)


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
@pytest.mark.parametrize("metric_cls", [EnergyPointingGame, LocalizationIoU])
def test_class_compute_without_updates_is_zero(metric_cls) -> None:
    metric = metric_cls()
    assert metric.higher_is_better is True and metric.full_state_update is False
    value = metric.compute()
    assert value.item() == 0.0 and not value.isnan()


def test_localization_iou_class_uses_threshold() -> None:
    sal = torch.zeros(1, 4, 8)
    sal[0, 1, 0:2] = 1.0
    sal[0, 1, 2:6] = 0.3  # kept at 0.2, dropped at 0.5
    gt = torch.tensor([[0, 1, 2, 2]])
    low, high = LocalizationIoU(threshold=0.2), LocalizationIoU(threshold=0.5)
    low.update(sal, gt)
    high.update(sal, gt)
    assert low.compute().item() == pytest.approx(2 / 6)
    assert high.compute().item() == pytest.approx(1.0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metric_cls", [EnergyPointingGame, LocalizationIoU])
def test_state_lives_on_input_device(metric_cls, device: str) -> None:
    sal, boxes = _batches(5)[0]
    metric = metric_cls().to(device)
    metric.update(sal.to(device), [b.to(device) for b in boxes])
    assert metric.score_sum.device.type == device
    assert metric.num_samples.device.type == device
    assert metric.compute().device.type == device
    assert localization_iou(sal.to(device), boxes).device.type == device


def test_half_precision_maps_keep_box_precision() -> None:
    # bfloat16 steps by 2 above 256: 301 would round to 300 in the map's dtype.
    sal = torch.zeros(1, 4, 600, dtype=torch.bfloat16)
    sal[0, :, 301:304] = 1.0
    box, found = saliency_to_box(sal)
    assert box.dtype == torch.float32 and found.tolist() == [True]
    assert box.tolist() == [[301.0, 0.0, 304.0, 4.0]]
    iou = localization_iou(sal, torch.tensor([[302.0, 0, 304, 4]]))
    assert iou.dtype == torch.bfloat16
    assert iou.float().item() == pytest.approx(2 / 3, abs=1e-2)
    assert energy_pointing_game(sal, torch.tensor([[301.0, 0, 303, 4]])).float().item() == pytest.approx(2 / 3, abs=1e-2)
