"""Resume from an end-of-epoch checkpoint reproduces the uninterrupted run (CPU: bit for bit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from fam_lightning.datamodules import ContrastiveDataModule, FewShotDataModule
from fam_lightning.models import FewShotClassifier, MemoryBankModel
from fam_lightning.reliability import ScheduleHorizonError

EPOCHS = 3


class Recorder(Callback):
    """Every logged value, by (epoch, name), and the training episodes / batches seen."""

    def __init__(self) -> None:
        self.metrics: dict[tuple[int, str], float] = {}
        self.batches: list[tuple[int, int, float]] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, idx: int) -> None:
        images = batch["support"] if "support" in batch else batch["image"]
        self.batches.append((trainer.current_epoch, idx, float(images.double().sum())))
        self._record(trainer)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._record(trainer)

    def _record(self, trainer: L.Trainer) -> None:
        for name, value in trainer.callback_metrics.items():
            self.metrics[(trainer.current_epoch, name)] = float(value)


def _fit(model: L.LightningModule, data: L.LightningDataModule, root: Path, ckpt_path: str | None = None,
         max_epochs: int = EPOCHS) -> tuple[L.Trainer, Recorder]:
    recorder = Recorder()
    checkpoints = ModelCheckpoint(dirpath=root / "checkpoints", filename="epoch{epoch}", save_top_k=-1,
                                  auto_insert_metric_name=False)
    trainer = L.Trainer(
        max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1, deterministic=True,
        callbacks=[checkpoints, recorder], default_root_dir=root,
    )
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return trainer, recorder


def _fewshot(data_dir: Path) -> tuple[FewShotClassifier, FewShotDataModule]:
    L.seed_everything(0)
    data = FewShotDataModule(
        data_dir=str(data_dir), image_size=32, train_ways=3, train_shots=1, train_queries=2, eval_ways=3,
        eval_shots=1, eval_queries=3, train_episodes=3, val_episodes=2, synthetic_classes=24,
        synthetic_images_per_class=20,
    )
    model = FewShotClassifier(backbone="conv4", num_classes=data.num_base_classes, optimizer="sgd", lr=0.05)
    return model, data


def _npid(data_dir: Path) -> tuple[MemoryBankModel, ContrastiveDataModule]:
    L.seed_everything(0)
    data = ContrastiveDataModule(
        data_dir=str(data_dir), image_size=32, batch_size=8, two_views=False, bank_loader=False,
        cache_images=True, synthetic_classes=4, synthetic_train_per_class=8, synthetic_val_per_class=4,
        synthetic_image_size=48,
    )
    model = MemoryBankModel(method="npid", backbone="conv4", embedding_dim=16, nce_negatives=8, npid_loss="nce",
                            knn_k=5)
    return model, data


def _assert_same_run(
    straight: tuple[L.Trainer, Recorder], resumed: tuple[L.Trainer, Recorder], first_epoch: int = 1
) -> None:
    (trainer_a, record_a), (trainer_b, record_b) = straight, resumed
    # the resumed epochs saw the straight run's episodes / batches, not a replay of an earlier epoch
    assert [b for b in record_a.batches if b[0] >= first_epoch] == record_b.batches
    earlier = [b[2] for b in record_a.batches if b[0] < first_epoch]
    assert not set(earlier) & {b[2] for b in record_b.batches}
    state_a, state_b = trainer_a.lightning_module.state_dict(), trainer_b.lightning_module.state_dict()
    assert state_a.keys() == state_b.keys()
    worst = max(((a.double() - state_b[k].double()).abs().max().item(), k)
                for k, a in state_a.items() if a.is_floating_point())
    assert worst[0] <= 1e-6, f"weights differ after resume: {worst}"
    # every value logged after the resume point equals the straight run's
    after = {key: value for key, value in record_a.metrics.items() if key[0] >= first_epoch}
    assert after and after == record_b.metrics


def test_fewshot_resume_from_epoch_checkpoint_matches_the_straight_run(tmp_path: Path, data_dir: Path) -> None:
    straight = _fit(*_fewshot(data_dir), tmp_path / "a")
    epoch0 = tmp_path / "a" / "checkpoints" / "epoch0.ckpt"
    resumed = _fit(*_fewshot(data_dir), tmp_path / "b", ckpt_path=str(epoch0))
    _assert_same_run(straight, resumed)


def test_npid_resume_matches_the_straight_run_bank_included(tmp_path: Path, data_dir: Path) -> None:
    straight = _fit(*_npid(data_dir), tmp_path / "a")
    resumed = _fit(*_npid(data_dir), tmp_path / "b", ckpt_path=str(tmp_path / "a" / "checkpoints" / "epoch0.ckpt"))
    assert "bank.bank" in straight[0].lightning_module.state_dict()
    _assert_same_run(straight, resumed)


def test_resume_with_a_longer_horizon_stops_and_says_how(tmp_path: Path, data_dir: Path) -> None:
    _fit(*_fewshot(data_dir), tmp_path / "a", max_epochs=1)
    with pytest.raises(ScheduleHorizonError, match=r"T_max=1 .*max_epochs=3.*--trainer.max_epochs 1"):
        _fit(*_fewshot(data_dir), tmp_path / "b", ckpt_path=str(tmp_path / "a" / "checkpoints" / "epoch0.ckpt"))


def _retrieval(data_dir: Path) -> tuple[L.LightningModule, L.LightningDataModule]:
    from fam_lightning.datamodules import RetrievalDataModule
    from fam_lightning.models import RetrievalModel

    L.seed_everything(0)
    data = RetrievalDataModule(
        data_dir=str(data_dir), image_size=32, classes_per_batch=3, samples_per_class=2, train_batches=3,
        batch_size=32, explain_queries=4, synthetic_classes=24, synthetic_images_per_class=20,
    )
    return RetrievalModel(backbone="conv4", embedding_dim=16, ks=(1, 2)), data


def test_retrieval_resume_matches_the_straight_run_flips_included(tmp_path: Path, data_dir: Path) -> None:
    straight = _fit(*_retrieval(data_dir), tmp_path / "a")
    resumed = _fit(*_retrieval(data_dir), tmp_path / "b", ckpt_path=str(tmp_path / "a" / "checkpoints" / "epoch0.ckpt"))
    _assert_same_run(straight, resumed)
