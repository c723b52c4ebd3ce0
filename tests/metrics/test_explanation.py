"""ExplanationMetrics: the one holder of the localisation + faithfulness metrics behind FAMCallback and fam-evaluate."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fam_lightning.callbacks import FAMCallback
from fam_lightning.callbacks.step0 import muted_logging
from fam_lightning.explainers import FAMExplainer
from fam_lightning.metrics import (
    ExplanationMetrics,
    average_drop,
    energy_pointing_game,
    faithfulness_scores,
    increase_in_confidence,
    localization_iou,
)
from fam_lightning.metrics.explanation import round_off_rtol, select
from fam_lightning.models import FewShotClassifier
from tests.models.test_fewshot_model import make_episode


def _model_and_inputs():
    torch.manual_seed(2)  # an untrained model whose decisions mix right and wrong
    model = FewShotClassifier(num_classes=5).eval()
    with torch.inference_mode():
        inputs = model.explanation_inputs(make_episode())
    assert 0 < int(inputs.correct.sum()) < inputs.correct.numel()
    return model, inputs


def _explain(model):
    explainer = FAMExplainer(model)
    return lambda inputs, name: explainer(inputs.images, inputs.references, inputs.reference_weights,
                                          feature_maps=inputs.feature_maps)


def test_values_are_the_functional_metrics_of_the_correct_decisions() -> None:
    model, inputs = _model_and_inputs()
    metrics = ExplanationMetrics(["fam"])
    explain = _explain(model)
    with torch.inference_mode():
        metrics.update(inputs, explain, model)
        keep = inputs.correct.nonzero().squeeze(1)
        maps = explain(inputs, "fam")[keep]
        boxes = inputs.boxes[keep]
        y, o = faithfulness_scores(model, select(inputs, keep), maps)
    values = metrics.compute("val")
    assert set(values) == {"val/fam_energy_pointing_game", "val/fam_iou", "val/fam_average_drop",
                           "val/fam_increase_in_confidence", "val/fam_energy_uniform_baseline"}
    torch.testing.assert_close(values["val/fam_energy_pointing_game"].float(),
                               100 * energy_pointing_game(maps, boxes).mean())
    torch.testing.assert_close(values["val/fam_iou"].float(), 100 * localization_iou(maps, boxes).mean())
    torch.testing.assert_close(values["val/fam_average_drop"].float(), average_drop(y, o).float())
    torch.testing.assert_close(values["val/fam_increase_in_confidence"].float(),
                               increase_in_confidence(y, o, round_off_rtol(torch.float32)).float())


def test_the_callback_logs_what_the_metrics_compute_on_the_same_inputs() -> None:
    model, inputs = _model_and_inputs()
    callback = FAMCallback()
    callback.setup(SimpleNamespace(), model, "validate")
    callback._reset(model)
    direct = ExplanationMetrics(["fam"])
    with torch.inference_mode():
        callback._update(model, {"explain": inputs}, batch_idx=0)
        direct.update(inputs, _explain(model), model)
    logged = {tag: float(value) for tag, value in callback.metrics.compute("test").items()}
    assert len(logged) == 5 and logged == {tag: float(value) for tag, value in direct.compute("test").items()}


def test_maps_of_every_decision_or_a_function_give_the_same_values() -> None:
    model, inputs = _model_and_inputs()
    explain = _explain(model)
    from_function, from_maps = ExplanationMetrics(["fam"], faithfulness=False), ExplanationMetrics(["fam"], faithfulness=False)
    with torch.inference_mode():
        from_function.update(inputs, explain, model)
        from_maps.update(inputs, {"fam": explain(inputs, "fam")}, model)
    a, b = from_function.compute("val"), from_maps.compute("val")
    assert a.keys() == b.keys() and len(a) == 3
    for tag in a:
        torch.testing.assert_close(a[tag], b[tag], rtol=1e-5, atol=1e-5)


def test_all_decisions_and_a_subset_of_kinds() -> None:
    model, inputs = _model_and_inputs()
    maps = {"fam": torch.rand(inputs.images.shape[0], 32, 32)}
    every = ExplanationMetrics(["fam"], kinds=("energy_pointing_game",), decisions="all", uniform_baseline=False)
    with torch.inference_mode():
        every.update(inputs, maps, model)
    values = every.compute("val")
    assert list(values) == ["val/fam_energy_pointing_game"]
    torch.testing.assert_close(values["val/fam_energy_pointing_game"].float(),
                               100 * energy_pointing_game(maps["fam"], inputs.boxes).mean())
    assert "iou" not in every["fam"] and every.update_called
    every.reset()
    assert not every.update_called and every.compute("val") == {}


def test_nothing_scored_gives_no_value_and_bad_arguments_are_named() -> None:
    model, inputs = _model_and_inputs()
    inputs.correct = torch.zeros_like(inputs.correct)
    metrics = ExplanationMetrics(["fam"])
    metrics.update(inputs, {"fam": torch.rand(inputs.images.shape[0], 32, 32)}, model)
    assert metrics.compute("val") == {} and not metrics.update_called
    with pytest.raises(ValueError, match="unknown metric 'accuracy'"):
        ExplanationMetrics(["fam"], kinds=("accuracy",))
    with pytest.raises(ValueError, match="decisions must be"):
        ExplanationMetrics(["fam"], decisions="some")
    with pytest.raises(ValueError, match="at least one explainer"):
        ExplanationMetrics([])


@pytest.mark.slow
def test_fam_evaluate_reports_what_explanation_metrics_compute_on_the_test_decisions(
    trained_checkpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fam_lightning.loading import build_datamodule, load_model, read_checkpoint
    from fam_lightning.tools import evaluate

    ckpt = trained_checkpoint("few-shot")
    reported: dict[str, float] = {}
    upsert = evaluate.upsert_row
    monkeypatch.setattr(evaluate, "upsert_row", lambda rows, name, metrics, note: (
        reported.update(metrics), upsert(rows, name, metrics, note))[1])
    assert evaluate.main(["--ckpt_path", str(ckpt), "--name", "tiny", "--table", str(tmp_path / "table"),
                          "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]) == 0
    model = load_model(ckpt, None, "cpu")
    datamodule = build_datamodule(read_checkpoint(ckpt), overrides={"num_workers": 0})
    datamodule.setup("test")
    metrics = ExplanationMetrics(["fam"])
    with torch.inference_mode(), muted_logging(model):
        model.eval()
        for index, batch in enumerate(datamodule.test_dataloader()):
            metrics.update(model.test_step(batch, index)["explain"], _explain(model), model)
    direct = {tag: float(value) for tag, value in metrics.compute("test").items()}
    assert len(direct) == 5
    assert {tag: reported[tag] for tag in direct} == pytest.approx(direct, rel=1e-6)
