"""Checkpoints and class paths of the layout before the 0.3 restructuring keep loading.

``data/fewshot_layout_0.2.ckpt`` was written by ``train.py fit --config configs/quickstart.yaml`` (1 epoch,
24 classes x 20 images at 48 px) with the code of commit 55e1909, before any module moved.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch

from fam_lightning.loading import import_class, load_model
from tests.helpers.cli import REPO, run_cli
from tests.helpers.events import read_events

OLD_CHECKPOINT = Path(__file__).parent / "data" / "fewshot_layout_0.2.ckpt"
DATA_ARGS = ["--data.synthetic_classes", "24", "--data.synthetic_images_per_class", "20", "--data.image_size", "48",
             "--data.val_episodes", "1"]


def test_the_old_checkpoint_names_the_classes_of_its_time() -> None:
    checkpoint = torch.load(OLD_CHECKPOINT, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["_class_path"] == "fam_lightning.models.FewShotClassifier"
    assert checkpoint["datamodule_hyper_parameters"]["_class_path"] == "fam_lightning.datamodules.FewShotDataModule"
    assert "FAMCallback" in checkpoint["callbacks"]


def test_the_old_checkpoint_loads_into_todays_model() -> None:
    model = load_model(OLD_CHECKPOINT)
    state = torch.load(OLD_CHECKPOINT, map_location="cpu", weights_only=True)["state_dict"]
    assert set(model.state_dict()) == set(state)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name


@pytest.mark.parametrize("old, new", [
    ("datamodules.fewshot.FewShotDataModule", "fam_lightning.datamodules.fewshot.FewShotDataModule"),  # 0.1
    ("callbacks.fam.FAMCallback", "fam_lightning.callbacks.fam.FAMCallback"),  # 0.1
    ("fam_lightning.datamodules.FewShotDataModule", "fam_lightning.datamodules.fewshot.FewShotDataModule"),
    ("fam_lightning.callbacks.FAMCallback", "fam_lightning.callbacks.fam.FAMCallback"),
    ("fam_lightning.models.MemoryBankModel", "fam_lightning.models.memory_bank.MemoryBankModel"),
    ("fam_lightning.adapter.SimilarityAdapter", "fam_lightning.adapter.SimilarityAdapter"),
    ("fam_lightning.explainers.FAMExplainer", "fam_lightning.explainers.FAMExplainer"),
])
def test_class_paths_of_earlier_layouts_resolve_to_todays_classes(old: str, new: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert import_class(old) is import_class(new)


@pytest.mark.slow
def test_validate_and_resume_from_the_old_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "old.ckpt"
    shutil.copy(OLD_CHECKPOINT, ckpt)
    data = ["--data.data_dir", str(tmp_path / "data"), *DATA_ARGS]
    validated = run_cli(["validate", "--config", str(REPO / "configs/quickstart.yaml"), "--ckpt_path", str(ckpt),
                         *data], tmp_path)
    assert "val/acc" in validated.stdout
    # fit restores the old checkpoint's loops, optimizer, schedule and callback states (FAMCallback's untrained
    # baseline among them); its cosine horizon was 1 epoch, so the fit ends at once after restoring them
    run_cli(["fit", "--config", str(REPO / "configs/quickstart.yaml"), "--ckpt_path", str(ckpt),
             "--trainer.max_epochs", "1", *data], tmp_path)
    logs = sorted((tmp_path / "logs").rglob("events.out.tfevents.*"))
    assert logs, "the runs wrote no TensorBoard events"
    scalars, _ = read_events(logs[0].parent)
    assert any(tag.startswith("val/") for tag in scalars)
