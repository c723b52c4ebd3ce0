"""Contrastive memory-bank models (NPID, MoCo) classified by a weighted kNN over the bank.

- NPID (Wu et al. 2018): L2-normalised 128-d embeddings through a linear head;
  a memory bank of every training image, updated with momentum 0.5; the
  non-parametric softmax is trained with NCE (4096 noise samples, T = 0.07).
- MoCo (He et al. 2020): momentum key encoder (0.999), a queue of negative keys,
  InfoNCE at T = 0.07; v1 linear head or v2 MLP head. Simplification: no
  shuffled BN across GPUs.

Both keep a bank of one embedding per training image (NPID's own bank; for MoCo
the latest key of each image), and classify by the kNN vote of NPID: the K = 200
most similar bank entries each vote for their label with weight exp(s / 0.07).
FAM explains a decision against the predicted class's neighbours among those K,
weighted by their votes, through the linear (or linearised MLP) head.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric

from fam_lightning.backbones import build_backbone
from fam_lightning.knn import KNNIndex
from fam_lightning.memory import FeatureQueue, MemoryBank
from fam_lightning.models.bank_data import BankData
from fam_lightning.models.bank_fill import fill_bank
from fam_lightning.models.base import SimilarityModule
from fam_lightning.models.contrastive_steps import ContrastiveObjectives
from fam_lightning.models.published import import_into
from fam_lightning.protocol import ExplanationInputs
from fam_lightning.reliability import NonFiniteCount, nan_if_nonfinite


def _check_bank_options(method: str, pooling: str, loss_pooling: str | None, refresh_bank: bool,
                        knn_embedding: str) -> str:
    """The loss's pooling (``pooling`` unless given), or a ValueError naming the option that does not fit."""
    loss_pooling = pooling if loss_pooling is None else loss_pooling
    for name, value, allowed in (("pooling", pooling, ("gap", "gmp")), ("loss_pooling", loss_pooling, ("gap", "gmp")),
                                 ("knn_embedding", knn_embedding, ("head", "backbone"))):
        if value not in allowed:
            raise ValueError(f"{name} must be {' or '.join(map(repr, allowed))}, got {value!r}")
    if loss_pooling != pooling and not refresh_bank:
        raise ValueError(f"loss_pooling={loss_pooling!r} differs from pooling={pooling!r}: that needs "
                         "refresh_bank=True, so the kNN bank is computed with pooling")
    if knn_embedding == "backbone" and not refresh_bank:
        raise ValueError("knn_embedding='backbone' needs refresh_bank=True: the bank then "
                         "holds backbone features, which training does not write")
    return loss_pooling


class MemoryBankModel(BankData, ContrastiveObjectives, SimilarityModule):
    """NPID or MoCo with kNN classification, implementing the SimilarityModel protocol.

    Args:
        method: "npid" or "moco".
        backbone: registered backbone name or an ``nn.Module`` with ``forward_features``.
        backbone_slope: LeakyReLU slope of registry backbones (0 = ReLU, as NPID / MoCo).
        embedding_dim: 128 in both papers.
        head: "linear" (NPID, MoCo v1) or "mlp" (MoCo v2).
        pooling: "gap" (NPID, MoCo) or "gmp" of the feature maps before the head.
        refresh_bank: Recompute the kNN bank from the un-augmented training images before
            every evaluation (MoCo's kNN monitor), instead of comparing with the rows
            written while training (NPID's memory, MoCo's latest keys): for views that
            are not the images the kNN compares, such as local crops. NPID then keeps its
            memory, which its loss reads, apart (``memory``, ``instances_per_image`` rows per
            image): the kNN bank is recomputed, the memory is left as trained.
        knn_embedding: What the kNN compares (and FAM explains): "head", the head's output,
            as NPID and MoCo do; or "backbone", the pooled backbone features, the representation
            self-supervised evaluations read (the head then serves the loss only; needs
            ``refresh_bank=True``).
        loss_pooling: Pooling of the training views for the loss; None: ``pooling``. Another
            one (e.g. GAP over a local crop's few positions, GMP over the whole image for the
            kNN) needs ``refresh_bank=True``: the bank is then computed with ``pooling``.
        bank_size: training images; None reads the datamodule's ``num_train_images``.
        instances_per_image: NPID with ``refresh_bank``: memory rows per training image, one per part
            its views come from (``ContrastiveDataModule(local_crop_grid=G)``: ``G x G``, the item's
            ``"instance"`` the row); None reads the datamodule's ``instances_per_image`` (1: the image).
        num_classes: classes of the kNN vote; None reads the datamodule's ``num_classes``.
        temperature: of NCE / InfoNCE.
        nce_negatives: NPID noise samples per image.
        npid_loss: "nce" (NPID's noise-contrastive estimation, normaliser Z
            estimated on the first batch) or "softmax" (cross-entropy over the
            positive and the sampled entries: a sampled non-parametric softmax).
        bank_momentum: NPID bank momentum (MoCo's bank is overwritten with keys).
        encoder_momentum: MoCo key-encoder EMA.
        queue_size: MoCo negatives; a multiple of the global batch.
        knn_k, knn_temperature: the kNN classifier (K = 200, T = 0.07).
        lr, momentum, weight_decay: SGD; cosine schedule over ``trainer.max_epochs`` (resuming
            with another ``max_epochs`` stops with ``ScheduleHorizonError``). NPID's noise
            samples come from the global RNG, reseeded every epoch from (seed, epoch, rank).
        pretrained_path: local weight file for a backbone given by name (never downloaded):
            a registered ResNet takes torchvision-layout weights; ``timm:`` / ``torchvision:``
            backbones take the full model's state_dict (``fam_lightning.backbones.external``).
        backbone_kwargs: extra arguments of the backbone's factory.
        import_checkpoint: a published NPID (lemniscate.pytorch) or MoCo v1 / v2
            checkpoint to start from (``fam_lightning.importers``): its weights,
            NPID's memory as the bank, MoCo's queue; a MoCo bank is computed over
            the training set before the first evaluation.
    """

    similarity = "cosine"

    def __init__(
        self,
        method: Literal["npid", "moco"] = "npid",
        backbone: str | nn.Module = "resnet18",
        backbone_slope: float = 0.0,
        embedding_dim: int = 128,
        head: Literal["linear", "mlp"] = "linear",
        pooling: Literal["gap", "gmp"] = "gap",
        refresh_bank: bool = False,
        knn_embedding: Literal["head", "backbone"] = "head",
        loss_pooling: Literal["gap", "gmp"] | None = None,
        bank_size: int | None = None,
        instances_per_image: int | None = None,
        num_classes: int | None = None,
        temperature: float = 0.07,
        nce_negatives: int = 4096,
        npid_loss: Literal["nce", "softmax"] = "nce",
        bank_momentum: float = 0.5,
        encoder_momentum: float = 0.999,
        queue_size: int = 4096,
        knn_k: int = 200,
        knn_temperature: float = 0.07,
        lr: float = 0.03,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        pretrained_path: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        import_checkpoint: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"] if isinstance(backbone, nn.Module) else None)
        self.pooling = pooling
        self.loss_pooling = _check_bank_options(method, pooling, loss_pooling, refresh_bank, knn_embedding)
        self.backbone = build_backbone(backbone, pretrained_path, backbone_kwargs, slope=backbone_slope)
        channels = self.backbone.out_channels
        if head == "linear":
            loss_head: nn.Module = nn.Linear(channels, embedding_dim)
        else:
            loss_head = nn.Sequential(
                nn.Linear(channels, channels), nn.ReLU(inplace=True), nn.Linear(channels, embedding_dim)
            )
        # the protocol's projection is the head when the kNN compares head outputs (state-dict key "projection")
        self.projection: nn.Module | None = loss_head if knn_embedding == "head" else None
        self.loss_head: nn.Module | None = None if knn_embedding == "head" else loss_head
        self.key_backbone: nn.Module | None = None
        self.key_projection: nn.Module | None = None
        self.queue: FeatureQueue | None = None
        if method == "moco":
            self.key_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
            self.key_projection = copy.deepcopy(loss_head).requires_grad_(False)
            self.queue = FeatureQueue(queue_size, embedding_dim)
        self.bank: MemoryBank | None = None
        self.memory: MemoryBank | None = None  # NPID's memory when it is not the kNN bank (refresh_bank)
        if bank_size is not None:
            self._build_bank(bank_size)
        self.register_buffer("nce_normalizer", torch.tensor(-1.0))  # NPID's Z, estimated once
        self.val_top1, self.val_top5 = MeanMetric(), MeanMetric()
        self.val_nonfinite = NonFiniteCount()  # kNN scores with inf / NaN: no vote is counted as a prediction
        self._index: KNNIndex | None = None
        self.bank_filled = True  # False: the bank is computed over the training set before evaluating
        self.memory_imported = False  # True: ``memory`` holds an imported file's rows, one per image
        if import_checkpoint is not None:
            import_into(self, import_checkpoint)

    # -- protocol -----------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, D) unit embeddings (the rows the bank holds)."""
        return F.normalize(self.embed(self.forward_features(x)), dim=1)

    # -- setup --------------------------------------------------------------------------
    def replace_bank(self, rows: Tensor) -> None:
        """Use (N, D) ``rows`` as the memory bank (an imported NPID memory); labels come at setup."""
        self._build_bank(rows.shape[0])
        self.bank.bank.copy_(rows)

    def replace_queue(self, keys: Tensor, ptr: int = 0) -> None:
        """Use (K, D) ``keys`` as MoCo's queue (an imported one), next write at row ``ptr``."""
        self.queue = FeatureQueue(keys.shape[0], keys.shape[1])
        self.queue.queue.copy_(keys)
        self.queue.ptr.fill_(ptr % keys.shape[0])
        self.hparams["queue_size"] = keys.shape[0]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["memory_bank_filled"] = self.bank_filled
        checkpoint["npid_memory_imported"] = self.memory_imported
        if "hyper_parameters" in checkpoint:  # the imported weights are in it: reloading needs no original file
            checkpoint["hyper_parameters"] = {**checkpoint["hyper_parameters"], "import_checkpoint": None}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.bank_filled = checkpoint.get("memory_bank_filled", True)
        self.memory_imported = checkpoint.get("npid_memory_imported", False)
        self._raise_bank_size_mismatch()  # now that the file is known (trainer.ckpt_path)

    def _build_bank(self, size: int) -> None:
        npid, refresh = self.hparams.method == "npid", self.hparams.refresh_bank
        width = self.hparams.embedding_dim if self.projection is not None else self.backbone.out_channels
        self.bank = MemoryBank(size, width, momentum=self.hparams.bank_momentum if npid and not refresh else 0.0)
        self.hparams["bank_size"] = size
        if npid and refresh:
            self._build_memory()

    def _build_memory(self) -> None:
        """NPID's memory apart from the recomputed kNN bank: ``instances_per_image`` rows per bank row."""
        rows = self.bank.size * (self.hparams.instances_per_image or 1)
        self.memory = MemoryBank(rows, self.hparams.embedding_dim, momentum=self.hparams.bank_momentum)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        self._take_instances(getattr(datamodule, "instances_per_image", 1))
        self._use_datamodule(datamodule, relabel=stage == "fit")

    def on_train_start(self) -> None:
        self._raise_bank_size_mismatch()
        self._check_view_size(getattr(self.trainer.datamodule, "train_view_size", None))
        if self.queue is not None:
            batch = self.trainer.train_dataloader.batch_size
            if batch is not None:
                self.queue.check_batch(batch * self.trainer.world_size)
        memory = self._npid_memory()
        if self.hparams.method == "npid" and self.hparams.nce_negatives >= memory.size:
            raise ValueError(
                f"nce_negatives={self.hparams.nce_negatives} must be smaller than the memory bank "
                f"({memory.size} rows)"
            )

    # -- training -----------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if self.hparams.method == "npid":
            loss = self._npid_step(batch)
        else:
            loss = self._moco_step(batch)
        self.guard_finite_loss(loss, {f"{self.hparams.method}_loss": loss})
        self.log("train/loss", loss, batch_size=batch["index"].shape[0])
        return loss

    # -- kNN evaluation -----------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._build_index()

    def on_test_epoch_start(self) -> None:
        self._build_index()

    def _build_index(self) -> None:
        self._raise_bank_size_mismatch()
        if not self.bank_filled or self.hparams.refresh_bank:
            fill_bank(self)
            self.bank_filled = True
        if bool((self.bank.labels < 0).all()):  # e.g. restored from a converted file, saved before any labels
            self._labels_from_datamodule()
        if bool((self.bank.labels < 0).all()):
            raise ValueError("the memory bank has no labels: the datamodule must expose train_labels")
        # lemniscate's kNN: unit queries against the rows as stored (unit once trained; an imported bank's
        # never-updated rows keep their initial norms, as the authors score them)
        self._index = KNNIndex(backend="torch", metric="dot")
        self._index.add(self.bank.bank, self.bank.labels)
        self.val_top1.reset()
        self.val_top5.reset()
        self.val_nonfinite.reset()

    def knn(self, embeddings: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(scores (B, C), neighbour rows (B, K), vote weights (B, K)) of the weighted kNN."""
        k = self.hparams.knn_k
        if k > self.bank.size:
            raise ValueError(f"knn_k={k} is larger than the memory bank ({self.bank.size} entries)")
        return self._index.classify(
            F.normalize(embeddings.float(), dim=1), k=k, temperature=self.hparams.knn_temperature,
            num_classes=self.hparams.num_classes,
        )

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self.validation_step(batch, batch_idx, dataloader_idx)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Any:
        if dataloader_idx != 0:
            return None  # only the val images are classified (the bank holds the train side)
        feature_maps = self.forward_features(batch["image"])
        embeddings = self.embed(feature_maps)
        scores, rows, votes = self.knn(embeddings)
        labels = batch["label"]
        top5 = scores.topk(min(5, scores.shape[1]), dim=1).indices
        self.val_top1.update((top5[:, 0] == labels).float() * 100)
        self.val_top5.update((top5 == labels.unsqueeze(1)).any(1).float() * 100)
        self.val_nonfinite.update(scores)
        return {"explain": self._explanation(batch, feature_maps, embeddings, scores, rows, votes)}

    def _explanation(
        self, batch: dict[str, Any], feature_maps: Tensor, embeddings: Tensor,
        scores: Tensor, rows: Tensor, votes: Tensor,
    ) -> ExplanationInputs:
        """References: the predicted class's neighbours among the K, weighted by their votes."""
        predictions = scores.argmax(1)
        same_class = self.bank.labels[rows] == predictions.unsqueeze(1)  # (B, K)
        return ExplanationInputs(
            images=batch["image"],
            feature_maps=feature_maps,
            embeddings=embeddings,
            references=self.bank.bank[rows],  # (B, K, D)
            reference_weights=votes * same_class,
            correct=predictions == batch["label"],
            boxes=batch.get("boxes"),
            labels=batch["label"],
            predictions=predictions,
        )

    def explanation_inputs(self, batch: dict[str, Any], num_neighbours: int = 3) -> ExplanationInputs:
        """Explain kNN decisions; shows the strongest voters of the predicted class."""
        if self._index is None:
            self._build_index()
        feature_maps = self.forward_features(batch["image"])
        embeddings = self.embed(feature_maps)
        scores, rows, votes = self.knn(embeddings)
        inputs = self._explanation(batch, feature_maps, embeddings, scores, rows, votes)
        datamodule = self.bank_datamodule()
        if datamodule is not None and hasattr(datamodule, "train_images"):
            count = min(num_neighbours, rows.shape[1])
            strongest = inputs.reference_weights.topk(count, dim=1).indices  # (B, R) largest votes
            nearest = rows.gather(1, strongest)  # bank rows = training image indices
            images = datamodule.train_images(nearest.flatten())
            inputs.reference_images = images.view(*nearest.shape, *images.shape[1:]).to(self.device)
        return inputs

    def on_validation_epoch_end(self) -> None:
        self._log_knn("val")

    def on_test_epoch_end(self) -> None:
        self._log_knn("test")

    def _log_knn(self, stage: str) -> None:
        bad = self.val_nonfinite.compute()
        # Metric values are equal on every rank already; sync_dist marks them reduced.
        self.log(f"{stage}/knn_top1", nan_if_nonfinite(self.val_top1.compute(), bad), prog_bar=True, sync_dist=True)
        self.log(f"{stage}/knn_top5", nan_if_nonfinite(self.val_top5.compute(), bad), sync_dist=True)
        if bad > 0:  # counted and shown, never hidden in an accuracy
            self.log(f"{stage}/nonfinite_scores", bad.float(), sync_dist=True)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params, lr=self.hparams.lr, momentum=self.hparams.momentum, weight_decay=self.hparams.weight_decay
        )
        return self.cosine_schedule(optimizer, default_epochs=200)
