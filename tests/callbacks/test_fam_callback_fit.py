"""FAMCallback inside Trainer.fit: the step-0 pass on the untrained model, its baseline, resume."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from fam_lightning.callbacks import FAMCallback
from fam_lightning.datamodules import FewShotDataModule
from fam_lightning.models import FewShotClassifier
from tests.helpers.events import read_events

TINY = {
    "synthetic_classes": 24, "synthetic_images_per_class": 20, "image_size": 48,
    "train_episodes": 3, "val_episodes": 2, "test_episodes": 4,
}


def fit(data_dir: Path, log_dir: Path, epochs: int, log_initial: bool = True, ckpt_path: str | None = None,
        name: str = "run", checkpoints: Path | None = None,
        val_every: int = 1) -> tuple[L.Trainer, FewShotClassifier, FAMCallback]:
    L.seed_everything(0, verbose=False)
    datamodule = FewShotDataModule(data_dir=str(data_dir), **TINY)
    model = FewShotClassifier(backbone="conv4", num_classes=12)
    callback = FAMCallback(num_probe_images=4, log_initial=log_initial)
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, num_sanity_val_steps=0, log_every_n_steps=1,
        check_val_every_n_epoch=val_every,
        logger=TensorBoardLogger(str(log_dir), name=name, default_hp_metric=False),
        callbacks=[callback] + ([] if checkpoints is None else [ModelCheckpoint(checkpoints, save_top_k=-1)]),
        enable_checkpointing=checkpoints is not None, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer, model, callback


@pytest.mark.slow
def test_fit_logs_the_untrained_model_at_step_zero_and_changes_nothing_else(tmp_path: Path, data_dir: Path) -> None:
    trainer, model, callback = fit(data_dir, tmp_path, epochs=3, name="with_pass")
    scalars, images = read_events(Path(trainer.logger.log_dir))
    steps = sorted(set(images["val/fam_probe"]))
    assert steps[0] == 0 and len(steps) >= 4, steps  # the slider starts at initialisation
    for tag in ("val/fam_energy_pointing_game", "val/fam_energy_uniform_baseline", "val/fam_iou",
                "val/fam_average_drop", "val/fam_increase_in_confidence"):
        assert scalars[tag][0][0] == 0, tag
    # the untrained energy: measured at step 0, then a flat reference line at every validation
    untrained = scalars["val/fam_energy_untrained"]
    assert [s for s, _ in untrained] == [0, *sorted(s for s, _ in scalars["val/acc"])]
    assert len({v for _, v in untrained}) == 1
    assert 0.0 < untrained[0][1] < 100.0
    assert callback.state_dict()["untrained"]["val/fam_energy_untrained"] == pytest.approx(untrained[0][1], rel=1e-6)
    # the model's own values are not logged by the step-0 pass, and no placeholder hp_metric
    assert all(step > 0 for step, _ in scalars["val/acc"]) and all(step > 0 for step, _ in scalars["val/loss"])
    assert "hp_metric" not in scalars

    # the same run without the pass: same weights, same validation values (RNG and model metrics untouched)
    without, model_b, _ = fit(data_dir, tmp_path, epochs=3, log_initial=False, name="without_pass")
    for (name, a), b in zip(model.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name
    scalars_b, images_b = read_events(Path(without.logger.log_dir))
    assert scalars["val/acc"] == scalars_b["val/acc"] and scalars["val/loss"] == scalars_b["val/loss"]
    assert "val/fam_energy_untrained" not in scalars_b and 0 not in images_b["val/fam_probe"]


@pytest.mark.slow
def test_resume_keeps_the_untrained_baseline_without_a_second_pass(tmp_path: Path, data_dir: Path) -> None:
    _, _, callback = fit(data_dir, tmp_path, epochs=2, name="first", checkpoints=tmp_path / "ckpt")
    checkpoint = next((tmp_path / "ckpt").glob("epoch=0-*.ckpt"))
    baseline = callback.untrained["val/fam_energy_untrained"]
    second, _, resumed = fit(data_dir, tmp_path, epochs=2, ckpt_path=str(checkpoint), name="second")
    scalars, images = read_events(Path(second.logger.log_dir))
    assert 0 not in images["val/fam_probe"] and images["val/fam_probe"]
    assert all(step > 0 for step, _ in scalars["val/fam_energy_pointing_game"])
    assert [v for _, v in scalars["val/fam_energy_untrained"]] == [pytest.approx(baseline, rel=1e-6)]
    assert resumed.untrained == {"val/fam_energy_untrained": baseline}


@pytest.mark.slow
def test_step_zero_is_logged_when_validation_starts_after_epoch_zero(tmp_path: Path, data_dir: Path) -> None:
    """With check_val_every_n_epoch > 1 Lightning has no validation loaders at train start; the pass asks for them."""
    trainer, _, callback = fit(data_dir, tmp_path, epochs=2, val_every=2)
    scalars, images = read_events(Path(trainer.logger.log_dir))
    assert sorted(set(images["val/fam_probe"]))[0] == 0
    assert scalars["val/fam_energy_pointing_game"][0][0] == 0
    assert [s for s, _ in scalars["val/acc"]] == [trainer.global_step - 1]  # one validation, after epoch 1
    assert [s for s, _ in scalars["val/fam_energy_untrained"]] == [0, trainer.global_step - 1]
    assert callback.untrained
