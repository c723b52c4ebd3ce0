"""Metric-learning retriever (MS model, Margin model): decides by the most similar gallery image.

backbone -> pooling (GMP by default, as the MS model) -> linear embedding head
(512-d, FAM's transformation module, eq. 16-18) -> cosine similarity. Trained
with the Multi-Similarity loss (Wang et al. 2019) or the Margin loss with
distance-weighted sampling (Wu et al. 2017); evaluated by Recall@K and MAP@R,
each test image queried against all other test images.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fam_lightning.backbones import build_backbone
from fam_lightning.distributed import gather_ragged
from fam_lightning.knn import KNNIndex
from fam_lightning.losses import MarginLoss, MultiSimilarityLoss
from fam_lightning.metrics import RecallAtK
from fam_lightning.models.base import SimilarityModule
from fam_lightning.protocol import ExplanationInputs
from fam_lightning.reliability import NonFiniteCount, nan_if_nonfinite


class RetrievalModel(SimilarityModule):
    """Embedding model for image retrieval implementing the SimilarityModel protocol.

    Args:
        backbone: registered backbone name or an ``nn.Module`` with ``forward_features``.
        embedding_dim: output size of the linear embedding head.
        pooling: "gmp" (MS model), "gap" or "lse".
        loss: "ms" (Multi-Similarity) or "margin" (Margin + distance-weighted sampling).
        num_classes: training classes (Margin loss's per-class beta); None reads
            the datamodule's ``num_train_classes`` at setup.
        lr, weight_decay: Adam(W) settings; the loss's parameters (Margin beta)
            use ``loss_lr``. Cosine schedule over ``trainer.max_epochs``; resuming with
            another ``max_epochs`` stops with ``ScheduleHorizonError``.
        ks: Recall@K cut-offs.
        pretrained_path: local weight file for a backbone given by name (never downloaded):
            a registered ResNet takes torchvision-layout weights; ``timm:`` / ``torchvision:``
            backbones take the full model's state_dict (``fam_lightning.backbones.external``).
        backbone_kwargs: extra arguments of the backbone's factory.
    """

    similarity = "cosine"
    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        embedding_dim: int = 512,
        pooling: Literal["gap", "gmp", "lse"] = "gmp",
        loss: Literal["ms", "margin"] = "ms",
        num_classes: int | None = None,
        lr: float = 3e-4,
        loss_lr: float = 5e-4,
        weight_decay: float = 5e-4,
        max_epochs_hint: int = 100,
        ks: tuple[int, ...] = (1, 2, 4, 8),
        pretrained_path: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"] if isinstance(backbone, nn.Module) else None)
        self.backbone = build_backbone(backbone, pretrained_path, backbone_kwargs)
        self.pooling = pooling
        self.projection = nn.Linear(self.backbone.out_channels, embedding_dim)
        self.criterion: nn.Module | None = MultiSimilarityLoss() if loss == "ms" else None
        if loss == "margin" and num_classes is not None:
            self._build_margin(num_classes)
        self.val_recall = RecallAtK(ks=ks)
        self.test_recall = RecallAtK(ks=ks)
        # gallery embeddings with inf / NaN: retrieval among them ranks garbage
        self.val_nonfinite, self.test_nonfinite = NonFiniteCount(), NonFiniteCount()
        self._gallery: dict[str, Tensor] | None = None
        self._gallery_parts: list[tuple[Tensor, Tensor, Tensor]] = []
        self._index: KNNIndex | None = None

    # -- protocol -----------------------------------------------------------------------
    # -- setup --------------------------------------------------------------------------
    def _build_margin(self, num_classes: int) -> None:
        self.criterion = MarginLoss(num_classes)
        self.hparams["num_classes"] = num_classes

    def setup(self, stage: str) -> None:
        if self.criterion is not None:
            return
        classes = getattr(getattr(self.trainer, "datamodule", None), "num_train_classes", None)
        if classes is None:
            raise ValueError("RetrievalModel(loss='margin') needs num_classes or a datamodule with num_train_classes")
        self._build_margin(int(classes))

    # -- training -----------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        embeddings = self(batch["image"])
        loss = self.criterion(embeddings, batch["label"])
        self.guard_finite_loss(loss, {f"{self.hparams.loss}_loss": loss})
        self.log("train/loss", loss, batch_size=embeddings.shape[0])
        return loss

    # -- evaluation: loader 0 = gallery pass, loader 1 = queries to explain ----------------
    def on_validation_epoch_start(self) -> None:
        self._reset_gallery()

    def on_test_epoch_start(self) -> None:
        self._reset_gallery()

    def _reset_gallery(self) -> None:
        self._gallery, self._gallery_parts, self._index = None, [], None

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self._eval_step(batch, dataloader_idx, self.val_recall, self.val_nonfinite)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self._eval_step(batch, dataloader_idx, self.test_recall, self.test_nonfinite)

    def _eval_step(
        self, batch: dict[str, Any], dataloader_idx: int, recall: RecallAtK, nonfinite: NonFiniteCount
    ) -> Any:
        if dataloader_idx == 0:
            embeddings = F.normalize(self(batch["image"]), dim=1)
            nonfinite.update(embeddings)
            recall.update(embeddings, batch["label"])
            self._gallery_parts.append((embeddings, batch["label"], batch["index"]))
            return None
        return {"explain": self._explain_queries(batch)}

    def _ensure_gallery(self) -> None:
        """Gather every rank's gallery embeddings once, then index them (first query step)."""
        if self._gallery is not None:
            return
        if not self._gallery_parts:
            raise RuntimeError("retrieval queries arrived before the gallery pass (eval loader 0)")
        embeddings, labels, indices = (torch.cat(parts) for parts in zip(*self._gallery_parts))
        self._gallery = {
            "embeddings": gather_ragged(embeddings),
            "labels": gather_ragged(labels),
            "indices": gather_ragged(indices),
        }
        self._gallery_parts = []
        self._index = KNNIndex(backend="torch", metric="cosine")
        self._index.add(self._gallery["embeddings"], self._gallery["labels"])

    def top1(self, embeddings: Tensor, query_indices: Tensor) -> Tensor:
        """Row of each query's most similar gallery image other than itself. (B,) long."""
        self._ensure_gallery()
        _, rows = self._index.search(embeddings, 2)
        is_self = self._gallery["indices"][rows[:, 0]] == query_indices
        return torch.where(is_self, rows[:, 1], rows[:, 0])

    def _explain_queries(self, batch: dict[str, Any], with_reference: bool = False) -> ExplanationInputs:
        feature_maps = self.forward_features(batch["image"])
        embeddings = self.embed(feature_maps)
        rows = self.top1(F.normalize(embeddings, dim=1), batch["index"])
        inputs = ExplanationInputs(
            images=batch["image"],
            feature_maps=feature_maps,
            embeddings=embeddings,
            references=self._gallery["embeddings"][rows].unsqueeze(1),  # (B, 1, D)
            correct=self._gallery["labels"][rows] == batch["label"],
            boxes=batch.get("box"),
            labels=batch["label"],
            predictions=self._gallery["labels"][rows],  # the class of the retrieved image
        )
        if with_reference:
            datamodule = self.trainer.datamodule
            images = datamodule.images_at(self._gallery["indices"][rows]).to(self.device)
            inputs.reference_images = images
            inputs.reference_feature_maps = self.forward_features(images)
        return inputs

    def explanation_inputs(self, batch: dict[str, Any]) -> ExplanationInputs:
        """Queries against their top-1 retrieved image (and that image's own maps)."""
        return self._explain_queries(batch, with_reference=True)

    def on_validation_epoch_end(self) -> None:
        self._log_recall(self.val_recall, self.val_nonfinite, "val")

    def on_test_epoch_end(self) -> None:
        self._log_recall(self.test_recall, self.test_nonfinite, "test")

    def _log_recall(self, metric: RecallAtK, nonfinite: NonFiniteCount, stage: str) -> None:
        bad = nonfinite.compute()
        for name, value in metric.compute().items():  # synchronised across ranks; sync_dist marks them reduced
            self.log(f"{stage}/{name}", nan_if_nonfinite(value, bad), prog_bar=name == "recall@1", sync_dist=True)
        if bad > 0:  # counted and shown, never hidden in a recall
            self.log(f"{stage}/nonfinite_scores", bad.float(), sync_dist=True)
        metric.reset()
        nonfinite.reset()

    def configure_optimizers(self) -> Any:
        groups = [
            {"params": list(self.backbone.parameters()) + list(self.projection.parameters())},
            {"params": list(self.criterion.parameters()), "lr": self.hparams.loss_lr, "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return self.cosine_schedule(optimizer, default_epochs=self.hparams.max_epochs_hint)
