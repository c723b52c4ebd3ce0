"""FAMCallback pieces without a Trainer: metric updates, probe grid, mode restore, errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from callbacks import FAMCallback
from fam_lightning.metrics import energy_pointing_game, localization_iou
from fam_lightning.models import FewShotClassifier
from tests.models.test_fewshot_model import make_episode


def _setup() -> tuple[FAMCallback, FewShotClassifier, dict]:
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
    torch.testing.assert_close(callback.uniform_energy.compute().float(), torch.tensor(box_fraction))
    assert callback.metrics["fam"]["average_drop"].update_called


def test_max_metric_batches_skips_later_batches() -> None:
    callback, model, batch = _setup()
    callback.max_metric_batches = 1
    with torch.inference_mode():
        callback._update(model, {"explain": model.explanation_inputs(batch)}, batch_idx=1)
    assert not callback.metrics["fam"]["energy_pointing_game"].update_called


def test_probe_grid_restores_train_mode_and_has_three_columns() -> None:
    callback, model, batch = _setup()
    model.train()
    trainer = SimpleNamespace(datamodule=SimpleNamespace(probe_episode=lambda: batch, mean=(0.5,) * 3, std=(0.25,) * 3))
    grid = callback.probe_grid(trainer, model)
    assert model.training
    assert grid.shape[0] == 3
    # 4 rows x 3 columns of 32 px tiles with 2 px padding
    assert grid.shape[1:] == (4 * 34 + 2, 3 * 34 + 2)
    assert grid.min() >= 0 and grid.max() <= 1


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
    # image | 4 explainers | reference, 32 px tiles with 2 px padding
    assert grid.shape[1:] == (3 * 34 + 2, 6 * 34 + 2)


def test_unchanged_image_is_no_increase_in_confidence() -> None:
    """A map of ones leaves the image unchanged: O == Y exactly, so IC is 0 and AD is 0."""
    callback, model, batch = _setup()
    with torch.inference_mode():
        inputs = model.explanation_inputs(batch)
        y, o = FAMCallback.faithfulness_scores(model, inputs, torch.ones(inputs.images.shape[0], 32, 32))
    assert torch.equal(y, o)


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
    assert grid.shape[1:] == (4 * 34 + 2, 5 * 34 + 2)  # image | map | 3 references


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
    assert int(callback.uniform_energy.num_samples) == len(annotated) > 0
    assert int(callback.metrics["fam"]["iou"].num_samples) == len(annotated)
    assert int(callback.metrics["fam"]["average_drop"].num_valid) + int(
        callback.metrics["fam"]["average_drop"].num_excluded) == keep.numel()  # faithfulness uses all


def test_draw_boxes_skips_images_without_boxes() -> None:
    from fam_lightning.visualize import draw_boxes

    images = torch.zeros(2, 3, 10, 10)
    drawn = draw_boxes(images, [torch.empty(0, 4), torch.tensor([[2.0, 2.0, 8.0, 8.0]])], color=(1.0, 1.0, 1.0))
    assert drawn[0].sum() == 0
    assert drawn[1, 0, 2, 2:8].eq(1).all() and drawn[1, 0, 5, 5] == 0
