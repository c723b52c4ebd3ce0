"""Resume from an end-of-epoch checkpoint reproduces the uninterrupted run (CPU: bit for bit)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from fam_lightning.reliability import ScheduleHorizonError
from tests.helpers.tiny import (
    Recorder,
    assert_same_run,
    cpu_trainer,
    tiny_fewshot,
    tiny_moco_local,
    tiny_npid,
    tiny_npid_patches,
    tiny_retrieval,
)

pytestmark = pytest.mark.slow  # every test trains

EPOCHS = 3


def _fit(model: L.LightningModule, data: L.LightningDataModule, root: Path, ckpt_path: str | None = None,
         max_epochs: int = EPOCHS) -> tuple[L.Trainer, Recorder]:
    recorder = Recorder()
    checkpoints = ModelCheckpoint(dirpath=root / "checkpoints", filename="epoch{epoch}", save_top_k=-1,
                                  auto_insert_metric_name=False)
    trainer = cpu_trainer(root, max_epochs=max_epochs, deterministic=True, callbacks=[checkpoints, recorder])
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return trainer, recorder


def test_fewshot_resume_from_epoch_checkpoint_matches_the_straight_run(tmp_path: Path, data_dir: Path) -> None:
    straight = _fit(*tiny_fewshot(data_dir), tmp_path / "a")
    epoch0 = tmp_path / "a" / "checkpoints" / "epoch0.ckpt"
    resumed = _fit(*tiny_fewshot(data_dir), tmp_path / "b", ckpt_path=str(epoch0))
    assert_same_run(straight, resumed)


def test_npid_resume_matches_the_straight_run_bank_included(tmp_path: Path, data_dir: Path) -> None:
    straight = _fit(*tiny_npid(data_dir), tmp_path / "a")
    resumed = _fit(*tiny_npid(data_dir), tmp_path / "b", ckpt_path=str(tmp_path / "a" / "checkpoints" / "epoch0.ckpt"))
    assert "bank.bank" in straight[0].lightning_module.state_dict()
    assert_same_run(straight, resumed)


def test_npid_patch_instances_resume_matches_the_straight_run_memory_included(tmp_path: Path,
                                                                            data_dir: Path) -> None:
    # a memory row per part of an image (its cell drawn per item, seeded), apart from the recomputed kNN bank
    straight = _fit(*tiny_npid_patches(data_dir), tmp_path / "a")
    epoch0 = tmp_path / "a" / "checkpoints" / "epoch0.ckpt"
    resumed = _fit(*tiny_npid_patches(data_dir), tmp_path / "b", ckpt_path=str(epoch0))
    model = straight[0].lightning_module
    assert model.memory.bank.shape == (128, 16) and model.bank.bank.shape == (32, 64)  # 32 images x 4 parts
    assert torch.equal(model.memory.bank, resumed[0].lightning_module.memory.bank)
    assert_same_run(straight, resumed)


def test_moco_local_views_resume_matches_the_straight_run_bank_included(tmp_path: Path, data_dir: Path) -> None:
    # local views (seeded per item), the queue, the key encoder and the bank recomputed before each validation
    straight = _fit(*tiny_moco_local(data_dir), tmp_path / "a")
    epoch0 = tmp_path / "a" / "checkpoints" / "epoch0.ckpt"
    resumed = _fit(*tiny_moco_local(data_dir), tmp_path / "b", ckpt_path=str(epoch0))
    assert straight[0].lightning_module.bank.bank.shape == (32, 64)  # backbone features
    assert_same_run(straight, resumed)


def test_resume_with_a_longer_horizon_stops_and_says_how(tmp_path: Path, data_dir: Path) -> None:
    _fit(*tiny_fewshot(data_dir), tmp_path / "a", max_epochs=1)
    with pytest.raises(ScheduleHorizonError, match=r"T_max=1 .*max_epochs=3.*--trainer.max_epochs 1"):
        _fit(*tiny_fewshot(data_dir), tmp_path / "b", ckpt_path=str(tmp_path / "a" / "checkpoints" / "epoch0.ckpt"))


def test_retrieval_resume_matches_the_straight_run_flips_included(tmp_path: Path, data_dir: Path) -> None:
    straight = _fit(*tiny_retrieval(data_dir), tmp_path / "a")
    resumed = _fit(*tiny_retrieval(data_dir), tmp_path / "b", ckpt_path=str(tmp_path / "a" / "checkpoints" / "epoch0.ckpt"))
    assert_same_run(straight, resumed)
