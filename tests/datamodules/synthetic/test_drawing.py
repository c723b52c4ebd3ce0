"""Drawing core of the synthetic data: distractors, exact class-object boxes, equal salience, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from fam_lightning.datamodules.synthetic import drawing
from fam_lightning.datamodules.synthetic.drawing import SyntheticClass, render_scene, synthetic_classes

CLASSES = synthetic_classes(16, seed=0)


def _scenes(count: int, distractors: int = 3, size: int = 96, seed: int = 0) -> list[tuple[SyntheticClass, drawing.Scene]]:
    return [
        (CLASSES[k % 16], render_scene(CLASSES[k % 16], size, np.random.default_rng([seed, k]), distractors))
        for k in range(count)
    ]


def test_scene_holds_the_class_object_and_distinct_distractors_of_other_combinations() -> None:
    counts = []
    for spec, scene in _scenes(40):
        assert scene.objects[0].spec == spec and scene.objects[0].annotated
        assert len(scene.boxes) == len(scene.masks) == 1
        others = [o.spec for o in scene.distractors]
        assert spec not in others and len(set(others)) == len(others)
        assert all(not o.annotated for o in scene.distractors)
        counts.append(len(others))
    # Crowded scenes may drop a distractor that finds no room, rarely.
    assert np.mean(np.equal(counts, 3)) >= 0.9 and min(counts) >= 2


def test_only_the_class_object_is_boxed_and_objects_do_not_meet() -> None:
    for _, scene in _scenes(30):
        (x0, y0, x1, y1), class_mask = scene.boxes[0], scene.masks[0]
        inside = np.zeros(class_mask.shape, dtype=bool)
        inside[y0:y1, x0:x1] = True
        # Tight box of the class object's drawn pixels.
        ys, xs = np.nonzero(class_mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
        assert (class_mask[~inside] == 0).all()
        for distractor in scene.distractors:
            # Drawn (visible pixels differ from the clutter), entirely outside the class box, boxes apart.
            assert (distractor.mask[inside] == 0).all()
            covered = distractor.mask == 255
            assert covered.sum() > 20
            assert (scene.image[covered] != scene.background[covered]).any()
            dx0, dy0, dx1, dy1 = distractor.box
            gap = drawing.OBJECT_GAP
            assert dx1 + gap <= x0 or x1 + gap <= dx0 or dy1 + gap <= y0 or y1 + gap <= dy0
        # Pixels no object covers are exactly the clutter.
        uncovered = sum(o.mask.astype(np.int32) for o in scene.objects) == 0
        assert np.array_equal(scene.image[uncovered], scene.background[uncovered])


def test_distractors_are_as_large_and_as_colourful_as_class_objects() -> None:
    class_areas, distractor_areas, class_sat, distractor_sat = [], [], [], []

    def saturation(image: np.ndarray, mask: np.ndarray) -> float:
        pixels = image[mask == 255].astype(np.float32)
        return float(np.mean(pixels.max(1) - pixels.min(1)))

    for _, scene in _scenes(120, seed=1):
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            areas, sats = (class_areas, class_sat) if obj.annotated else (distractor_areas, distractor_sat)
            areas.append((x1 - x0) * (y1 - y0))
            sats.append(saturation(scene.image, obj.mask))
    assert abs(np.mean(distractor_areas) / np.mean(class_areas) - 1) < 0.15
    assert abs(np.mean(distractor_sat) / np.mean(class_sat) - 1) < 0.2


def test_clutter_is_saturated_not_grey() -> None:
    clutter = drawing.render_clutter(96, np.random.default_rng(0)).astype(np.int32)
    chroma = clutter.max(2) - clutter.min(2)
    assert np.mean(chroma > 100) > 0.05  # a real share of the background is strongly coloured


def test_scene_is_a_function_of_its_generator() -> None:
    a = render_scene(CLASSES[3], 64, np.random.default_rng([9, 1]), 2)
    b = render_scene(CLASSES[3], 64, np.random.default_rng([9, 1]), 2)
    c = render_scene(CLASSES[3], 64, np.random.default_rng([9, 2]), 2)
    assert np.array_equal(a.image, b.image) and a.boxes == b.boxes
    assert [o.spec for o in a.objects] == [o.spec for o in b.objects]
    assert not np.array_equal(a.image, c.image)


def test_no_distractors_and_several_class_instances() -> None:
    alone = render_scene(CLASSES[0], 64, np.random.default_rng(1), distractors=0)
    assert len(alone.objects) == 1 and alone.distractors == []
    twins = [render_scene(CLASSES[0], 96, np.random.default_rng([2, k]), 3, class_instances=2) for k in range(10)]
    assert all(1 <= len(s.boxes) <= 2 for s in twins) and any(len(s.boxes) == 2 for s in twins)
    for scene in twins:
        assert all(o.spec == CLASSES[0] for o in scene.objects if o.annotated)


@pytest.mark.parametrize("bad", [-1, drawing.MAX_CLASSES, 1.5, True])
def test_bad_distractor_count_is_named(bad: object) -> None:
    with pytest.raises(ValueError, match="distractors must be an integer"):
        render_scene(CLASSES[0], 64, np.random.default_rng(0), bad)  # type: ignore[arg-type]
