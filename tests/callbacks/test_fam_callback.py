"""FAMCallback pieces without a Trainer: metric updates, probe grid, mode restore, errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from fam_lightning.callbacks import FAMCallback
from fam_lightning.metrics import (
    ExplanationMetrics,
    IncreaseInConfidence,
    average_drop,
    deletion_insertion_auc,
    energy_pointing_game,
    increase_in_confidence,
    localization_iou,
)
from fam_lightning.similarity import mean_similarity
from fam_lightning.models import FewShotClassifier
from tests.models.test_fewshot_model import make_episode


def _setup() -> tuple[FAMCallback, FewShotClassifier, dict]:
    torch.manual_seed(2)  # the untrained model's decisions (which are correct) must not depend on test order
    model = FewShotClassifier(num_classes=5).eval()
    callback = FAMCallback(num_probe_images=4)
    callback.setup(SimpleNamespace(), model, "validate")
    callback._reset(model)
    return callback, model, make_episode()


def test_update_matches_functional_metrics_on_correct_queries() -> None:
    callback, model, batch = _setup()
    with torch.inference_mode():
        inputs = model.explanation_inputs(batch)
        callback._update(model, {"explain": inputs}, batch_idx=0)
        keep = inputs.correct.nonzero().squeeze(1)
        maps = callback.explain(inputs)[keep]
        boxes = batch["query_box"][keep]
    assert keep.numel() > 0
    got = callback.metrics["fam"]["energy_pointing_game"].compute()
    torch.testing.assert_close(got.float(), energy_pointing_game(maps, boxes).mean())
    torch.testing.assert_close(callback.metrics["fam"]["iou"].compute().float(), localization_iou(maps, boxes).mean())
    box_fraction = (16 * 16) / (32 * 32)
    torch.testing.assert_close(callback.metrics.uniform_energy.compute().float(), torch.tensor(box_fraction))
    assert callback.metrics["fam"]["average_drop"].update_called


def test_max_metric_batches_skips_later_batches() -> None:
    callback, model, batch = _setup()
    callback.max_metric_batches = 1
    with torch.inference_mode():
        callback._update(model, {"explain": model.explanation_inputs(batch)}, batch_idx=1)
    assert not callback.metrics["fam"]["energy_pointing_game"].update_called


def grid_shape(rows: int, columns: int, tile: int = 128) -> tuple[int, int]:
    """Probe grid layout: a 3-line header (font tile / 4.5) above, vertical row names left, padding tile / 32."""
    padding, font = tile // 32, round(tile / 4.5)
    top, left = 3 * font + 4 * padding, font + 2 * padding
    return top + padding + rows * (tile + padding), left + padding + columns * (tile + padding)


def test_probe_grid_restores_train_mode_one_probe_per_column_upsampled() -> None:
    callback, model, batch = _setup()
    model.train()
    trainer = SimpleNamespace(datamodule=SimpleNamespace(probe_episode=lambda: batch, mean=(0.5,) * 3, std=(0.25,) * 3))
    grid = callback.probe_grid(trainer, model)
    assert model.training
    assert grid.shape[0] == 3
    # 4 probes as columns; rows image | fam | reference; 32 px images upsampled to 128 px tiles
    assert grid.shape[1:] == grid_shape(rows=3, columns=4)
    assert grid.min() >= 0 and grid.max() <= 1


def test_probe_grid_is_wider_than_tall_by_default() -> None:
    model = FewShotClassifier(num_classes=5).eval()
    callback = FAMCallback()
    callback.setup(SimpleNamespace(), model, "validate")
    batch = make_episode(queries=8)
    grid = callback.probe_grid(SimpleNamespace(datamodule=SimpleNamespace(probe_episode=lambda: batch)), model)
    assert grid.shape[1:] == grid_shape(rows=3, columns=8)
    assert grid.shape[2] > 2 * grid.shape[1]  # fits TensorBoard's ~450 x 215 px image card


def test_probe_grid_header_names_classes_in_the_decision_colour() -> None:
    """Each column's header holds dark text, and red text exactly where the decision was wrong."""
    callback, model, batch = _setup()
    trainer = SimpleNamespace(datamodule=SimpleNamespace(probe_episode=lambda: batch))
    grid = callback.probe_grid(trainer, model)
    with torch.inference_mode():
        inputs = model.explanation_inputs(batch)
    rows = torch.linspace(0, inputs.images.shape[0] - 1, 4).long()
    correct = inputs.correct[rows].tolist()
    assert inputs.labels is not None and inputs.predictions is not None
    assert 0 < sum(correct) < 4, "the fixture should mix right and wrong decisions"
    tile, padding, font = 128, 4, round(128 / 4.5)
    left, top = font + 2 * padding, 3 * font + 4 * padding
    for column, right in enumerate(correct):
        x0 = left + padding + column * (tile + padding)
        header = grid[:, :top, x0 : x0 + tile]
        red = (header[0] > 0.8) & (header[1] < 0.3) & (header[2] < 0.3)
        green = (header[1] > 0.4) & (header[0] < 0.2) & (header[2] < 0.2)
        dark = header.max(dim=0).values < 0.2
        assert dark.sum() > 50, f"column {column}: no text"
        assert (red.sum() > 20) == (not right) and (green.sum() > 20) == right, f"column {column}"


def test_eval_step_without_explanation_inputs_is_an_error() -> None:
    callback, model, _ = _setup()
    with pytest.raises(TypeError, match="ExplanationInputs"):
        callback._update(model, {"loss": torch.tensor(0.0)}, batch_idx=0)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="unknown explainer .no_such_method."):
        FAMCallback(explainers=["fam", "no_such_method"])
    with pytest.raises(ValueError, match="every_n_epochs"):
        FAMCallback(every_n_epochs=0)
    with pytest.raises(TypeError, match="SimilarityModel"):
        FAMCallback().setup(SimpleNamespace(), torch.nn.Linear(2, 2), "fit")


def test_several_explainers_side_by_side() -> None:
    model = FewShotClassifier(num_classes=5).eval()
    names = ["fam", "gradcam", "eigencam", "scorecam"]
    callback = FAMCallback(explainers=names, num_probe_images=3)
    callback.setup(SimpleNamespace(), model, "validate")
    callback._reset(model)
    batch = make_episode()
    with torch.inference_mode():
        callback._update(model, {"explain": model.explanation_inputs(batch)}, batch_idx=0)
    for name in names:
        assert callback.metrics[name]["iou"].update_called, name
        assert callback.metrics[name]["increase_in_confidence"].update_called, name
    trainer = SimpleNamespace(datamodule=SimpleNamespace(probe_episode=lambda: batch))
    grid = callback.probe_grid(trainer, model)
    # rows image | 4 explainers | reference; 3 probes as columns
    assert grid.shape[1:] == grid_shape(rows=6, columns=3)


def test_unchanged_image_is_no_increase_in_confidence() -> None:
    """A map of ones leaves the image unchanged: O == Y up to round-off of another batch, so IC = AD = 0."""
    callback, model, batch = _setup()
    with torch.inference_mode():
        inputs = model.explanation_inputs(batch)
        n = inputs.images.shape[0]
        callback.explain = lambda inputs, name=None: torch.ones(inputs.images.shape[0], 32, 32)
        callback._update(model, {"explain": inputs}, batch_idx=0)
        # Y from the step's batch of support + queries, O from a batch of correct queries alone
        y, o = FAMCallback.faithfulness_scores(model, inputs, torch.ones(n, 32, 32))
    torch.testing.assert_close(o, y)
    metrics = callback.metrics["fam"]
    assert int(metrics["increase_in_confidence"].num_valid) > 0
    assert metrics["increase_in_confidence"].compute().item() == 0.0
    assert metrics["average_drop"].compute().item() == pytest.approx(0.0, abs=1e-4)
    # the tolerance is what keeps IC at 0: scores above Y by round-off would count with rtol = 0
    ic = IncreaseInConfidence(rtol=callback_rtol(inputs))
    ic.update(y, y * (1 + 1e-6))
    assert ic.compute().item() == 0.0


def callback_rtol(inputs) -> float:
    from fam_lightning.metrics.explanation import round_off_rtol

    return round_off_rtol(inputs.embeddings.dtype)


def test_one_pass_faithfulness_equals_the_two_pass_computation() -> None:
    """Y from the step's embeddings + O from one masked pass == both from one [images, masked] pass."""
    callback, model, batch = _setup()
    with torch.inference_mode():
        inputs = model.explanation_inputs(batch)
        maps = callback.explain(inputs)
        y, o = FAMCallback.faithfulness_scores(model, inputs, maps)
        masked = inputs.images * maps.unsqueeze(1)
        both = model.embed(model.forward_features(torch.cat([inputs.images, masked])))
        y2, o2 = (mean_similarity(e, inputs.references, "cosine") for e in both.chunk(2))
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(o, o2, rtol=1e-5, atol=1e-6)
    rtol = callback_rtol(inputs)
    torch.testing.assert_close(average_drop(y, o), average_drop(y2, o2), rtol=1e-4, atol=1e-4)
    assert increase_in_confidence(y, o, rtol) == increase_in_confidence(y2, o2, rtol)


def test_faithfulness_costs_one_backbone_pass_of_the_masked_images() -> None:
    callback, model, batch = _setup()
    calls = []
    original = model.forward_features
    with torch.inference_mode():
        inputs = model.explanation_inputs(batch)
        model.forward_features = lambda x: calls.append(x.shape[0]) or original(x)
        FAMCallback.faithfulness_scores(model, inputs, callback.explain(inputs))
    assert calls == [inputs.images.shape[0]]


def test_a_nan_map_makes_average_drop_and_ic_nan() -> None:
    callback, model, batch = _setup()
    with torch.inference_mode():
        inputs = model.explanation_inputs(batch)
        callback.explain = lambda inputs, name=None: torch.full((inputs.images.shape[0], 32, 32), float("nan"))
        callback._update(model, {"explain": inputs}, batch_idx=0)
    metrics = callback.metrics["fam"]
    assert metrics["average_drop"].compute().isnan() and metrics["increase_in_confidence"].compute().isnan()
    assert int(metrics["average_drop"].num_nan) == int(inputs.correct.sum())


def test_deletion_insertion_is_an_option_off_by_default() -> None:
    callback, model, batch = _setup()
    assert "deletion_auc" not in callback.metrics["fam"]
    callback = FAMCallback(deletion_insertion=True, deletion_steps=4)
    callback.setup(SimpleNamespace(), model, "validate")
    callback._reset(model)
    with torch.inference_mode():
        inputs = model.explanation_inputs(batch)
        callback._update(model, {"explain": inputs}, batch_idx=0)
        keep = inputs.correct.nonzero().squeeze(1)
        deletion, insertion = deletion_insertion_auc(
            model, inputs.images[keep], callback.explain(inputs)[keep], inputs.references[keep], steps=4
        )
    values = callback.metrics.compute("val")
    torch.testing.assert_close(values["val/fam_deletion_auc"].float(), deletion.mean())
    torch.testing.assert_close(values["val/fam_insertion_auc"].float(), insertion.mean())


def test_metrics_every_n_epochs_skips_other_epochs() -> None:
    callback, model, batch = _setup()
    callback.metrics_every_n_epochs = 2
    trainer = SimpleNamespace(current_epoch=1, max_epochs=10)
    callback.on_validation_epoch_start(trainer, model)
    with torch.inference_mode():
        callback._update(model, {"explain": model.explanation_inputs(batch)}, batch_idx=0)
    assert not callback.metrics["fam"]["iou"].update_called
    callback.on_validation_epoch_start(SimpleNamespace(current_epoch=9, max_epochs=10), model)  # the last epoch
    with torch.inference_mode():
        callback._update(model, {"explain": model.explanation_inputs(batch)}, batch_idx=0)
    assert callback.metrics["fam"]["iou"].update_called


def test_probe_grid_shows_several_references_per_decision() -> None:
    callback, model, batch = _setup()
    original = model.explanation_inputs

    def with_three_references(b):
        inputs = original(b)
        inputs.reference_images = torch.stack([b["query"]] * 3, dim=1)  # (B, 3, 3, H, W)
        return inputs

    model.explanation_inputs = with_three_references
    trainer = SimpleNamespace(datamodule=SimpleNamespace(probe_episode=lambda: batch))
    grid = callback.probe_grid(trainer, model)
    assert grid.shape[1:] == grid_shape(rows=5, columns=4)  # image | map | 3 references


def test_images_without_boxes_are_left_out_of_localisation() -> None:
    """ImageNet images without a VOC file have (0, 4) boxes: no localisation score, no error."""
    callback, model, batch = _setup()
    with torch.inference_mode():
        inputs = model.explanation_inputs(batch)
        keep = inputs.correct.nonzero().squeeze(1)
        n = inputs.images.shape[0]
        inputs.boxes = [torch.empty(0, 4) if i % 2 else torch.tensor([[4.0, 4.0, 20.0, 20.0]]) for i in range(n)]
        callback._update(model, {"explain": inputs}, batch_idx=0)
        annotated = [int(i) for i in keep if int(i) % 2 == 0]
    assert int(callback.metrics.uniform_energy.num_samples) == len(annotated) > 0
    assert int(callback.metrics["fam"]["iou"].num_samples) == len(annotated)
    assert int(callback.metrics["fam"]["average_drop"].num_valid) + int(
        callback.metrics["fam"]["average_drop"].num_excluded) == keep.numel()  # faithfulness uses all


def test_draw_boxes_skips_images_without_boxes() -> None:
    from fam_lightning.visualize import draw_boxes

    images = torch.zeros(2, 3, 10, 10)
    drawn = draw_boxes(images, [torch.empty(0, 4), torch.tensor([[2.0, 2.0, 8.0, 8.0]])], color=(1.0, 1.0, 1.0))
    assert drawn[0].sum() == 0
    assert drawn[1, 0, 2, 2:8].eq(1).all() and drawn[1, 0, 5, 5] == 0


def test_untrained_energy_scores_every_decision_right_or_wrong() -> None:
    """The step-0 baseline is class-agnostic: it uses all decisions, while the metrics use the right ones."""
    callback, model, batch = _setup()
    callback._untrained_energy = ExplanationMetrics(["fam"], kinds=("energy_pointing_game",), decisions="all",
                                                    uniform_baseline=False)
    with torch.inference_mode():
        inputs = model.explanation_inputs(batch)
        callback._update(model, {"explain": inputs}, batch_idx=0)
        maps = callback.explain(inputs)
    assert 0 < int(inputs.correct.sum()) < inputs.correct.numel()
    expected = 100.0 * energy_pointing_game(maps, batch["query_box"]).mean()
    assert callback._untrained_values() == {"val/fam_energy_untrained": pytest.approx(float(expected), rel=1e-5)}
    assert int(callback.metrics["fam"]["energy_pointing_game"].num_samples) == int(inputs.correct.sum())


def test_metrics_without_a_scored_decision_give_no_value_rather_than_zero() -> None:
    callback, model, batch = _setup()
    with torch.inference_mode():
        inputs = model.explanation_inputs(batch)
        inputs.correct = torch.zeros_like(inputs.correct)  # nothing right yet (an untrained retriever)
        callback._update(model, {"explain": inputs}, batch_idx=0)
    assert callback.metrics.compute("val") == {}
