"""Tiny things to train: a DataModule and a model per family, a CPU Trainer, and one-epoch CLI fits.

Every model here trains in well under a second per epoch on one CPU core; the data are the synthetic
sets the DataModules write themselves under ``data_dir`` (shared by the session: see ``conftest.data_dir``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from tests.helpers.cli import TINY_DATA_ARGS

# the memory-bank fits' shared tiny arguments: 4 classes x 8 training images at 32 px, one validation an epoch
_BANK_TINY = ["--data.image_size", "32", "--data.batch_size", "16", "--data.synthetic_train_per_class", "8",
              "--data.synthetic_val_per_class", "4", "--model.init_args.knn_k", "10",
              "--model.init_args.nce_negatives", "16", "--data.num_workers", "0",
              "--trainer.check_val_every_n_epoch", "1"]

# family -> (config under configs/, tiny arguments): the one-epoch CLI fits behind ``trained_checkpoint``
FITS = {
    "few-shot": ("quickstart.yaml", [*TINY_DATA_ARGS]),
    "memory bank": (  # NPID as published (whole-image views, the kNN on the head's memory)
        "contrastive/npid_synthetic.yaml",
        [*_BANK_TINY, "--model.init_args.refresh_bank", "false", "--model.init_args.knn_embedding", "head",
         "--model.init_args.pooling", "gap", "--model.init_args.loss_pooling", "null",
         "--data.local_crop", "null", "--data.local_crop_grid", "0"],
    ),
    "memory bank, patches": (  # NPID as its synthetic config trains it: a memory row per part, backbone kNN
        "contrastive/npid_synthetic.yaml", [*_BANK_TINY, "--data.local_crop", "0.5"],  # 16 px views, 2 x 2 cells
    ),
    "retrieval": (
        "retrieval/ms_synthetic.yaml",
        ["--data.synthetic_classes", "24", "--data.synthetic_images_per_class", "20", "--data.image_size", "32",
         "--data.train_batches", "2", "--data.explain_queries", "8", "--model.init_args.backbone", "conv4"],
    ),
}


def cpu_trainer(root: Path, **overrides: Any) -> L.Trainer:
    """A quiet one-process CPU Trainer writing under ``root`` (no logger, bar, summary or sanity pass)."""
    options: dict[str, Any] = dict(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=1, default_root_dir=root,
    )
    options.update(overrides)
    return L.Trainer(**options)


def tiny_fewshot(data_dir: Path) -> tuple[L.LightningModule, L.LightningDataModule]:
    """A Conv4 few-shot learner and 3-way 1-shot 2-query episodes (3 training, 2 validation) at 32 px."""
    from fam_lightning.datamodules import FewShotDataModule
    from fam_lightning.models import FewShotClassifier

    L.seed_everything(0)
    data = FewShotDataModule(
        data_dir=str(data_dir), image_size=32, train_ways=3, train_shots=1, train_queries=2, eval_ways=3,
        eval_shots=1, eval_queries=3, train_episodes=3, val_episodes=2, synthetic_classes=24,
        synthetic_images_per_class=20,
    )
    model = FewShotClassifier(backbone="conv4", num_classes=data.num_base_classes, optimizer="sgd", lr=0.05)
    return model, data


def tiny_npid(data_dir: Path) -> tuple[L.LightningModule, L.LightningDataModule]:
    """An NPID memory-bank model (16-d, 8 negatives) on 4 classes x 8 training images at 32 px."""
    from fam_lightning.datamodules import ContrastiveDataModule
    from fam_lightning.models import MemoryBankModel

    L.seed_everything(0)
    data = ContrastiveDataModule(
        data_dir=str(data_dir), image_size=32, batch_size=8, two_views=False, bank_loader=False,
        cache_images=True, synthetic_classes=4, synthetic_train_per_class=8, synthetic_val_per_class=4,
        synthetic_image_size=48,
    )
    model = MemoryBankModel(method="npid", backbone="conv4", embedding_dim=16, nce_negatives=8, npid_loss="nce",
                            knn_k=5)
    return model, data


def tiny_npid_patches(data_dir: Path) -> tuple[L.LightningModule, L.LightningDataModule]:
    """NPID as the synthetic config trains it (a memory row per cell of a 2 x 2 grid, local views, loss GAP,
    kNN on max-pooled backbone features, the bank recomputed before each validation), 4 x 8 images at 32 px."""
    from fam_lightning.datamodules import ContrastiveDataModule
    from fam_lightning.models import MemoryBankModel

    L.seed_everything(0)
    data = ContrastiveDataModule(
        data_dir=str(data_dir), image_size=32, batch_size=8, two_views=False, bank_loader=False,
        cache_images=True, synthetic_classes=4, synthetic_train_per_class=8, synthetic_val_per_class=4,
        synthetic_image_size=48, local_crop=0.5, local_crop_grid=2,
    )
    model = MemoryBankModel(method="npid", backbone="conv4", embedding_dim=16, nce_negatives=8, npid_loss="softmax",
                            knn_k=5, pooling="gmp", loss_pooling="gap", knn_embedding="backbone", refresh_bank=True)
    return model, data


def tiny_moco_local(data_dir: Path) -> tuple[L.LightningModule, L.LightningDataModule]:
    """MoCo v2 as the synthetic config trains it (local views, loss GAP, kNN on max-pooled backbone features,
    the bank recomputed before each validation), on 4 classes x 8 training images at 32 px (16 px views)."""
    from fam_lightning.datamodules import ContrastiveDataModule
    from fam_lightning.models import MemoryBankModel

    L.seed_everything(0)
    data = ContrastiveDataModule(
        data_dir=str(data_dir), image_size=32, batch_size=8, two_views=True, bank_loader=False,
        cache_images=True, synthetic_classes=4, synthetic_train_per_class=8, synthetic_val_per_class=4,
        synthetic_image_size=48, local_crop=0.5,
    )
    model = MemoryBankModel(method="moco", backbone="conv4", head="mlp", embedding_dim=16, queue_size=16, knn_k=5,
                            pooling="gmp", loss_pooling="gap", knn_embedding="backbone", refresh_bank=True)
    return model, data


def tiny_retrieval(data_dir: Path) -> tuple[L.LightningModule, L.LightningDataModule]:
    """A Conv4 retrieval model (16-d, Recall@1/2) and 3 batches of 3 classes x 2 images at 32 px."""
    from fam_lightning.datamodules import RetrievalDataModule
    from fam_lightning.models import RetrievalModel

    L.seed_everything(0)
    data = RetrievalDataModule(
        data_dir=str(data_dir), image_size=32, classes_per_batch=3, samples_per_class=2, train_batches=3,
        batch_size=32, explain_queries=4, synthetic_classes=24, synthetic_images_per_class=20,
    )
    return RetrievalModel(backbone="conv4", embedding_dim=16, ks=(1, 2)), data


class Recorder(Callback):
    """Every logged value, by (epoch, name), and the training episodes / batches seen."""

    def __init__(self) -> None:
        self.metrics: dict[tuple[int, str], float] = {}
        self.batches: list[tuple[int, int, float]] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, idx: int) -> None:
        images = next(batch[key] for key in ("support", "image", "view1") if key in batch)
        self.batches.append((trainer.current_epoch, idx, float(images.double().sum())))
        self._record(trainer)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._record(trainer)

    def _record(self, trainer: L.Trainer) -> None:
        for name, value in trainer.callback_metrics.items():
            self.metrics[(trainer.current_epoch, name)] = float(value)


def assert_same_run(
    straight: tuple[L.Trainer, Recorder], resumed: tuple[L.Trainer, Recorder], first_epoch: int = 1
) -> None:
    """The resumed run saw the straight run's batches from ``first_epoch`` on and ended with its weights and logs."""
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

