"""Few-shot episodic classifier: mean-similarity-to-support decisions, multi-task loss.

The decision score of a query for class j is the mean similarity of its
embedding to the class's support embeddings (FAM paper, eq. 11), times a
learnable scale. Training adds a global classification loss over the base
classes (as CAN does) and weighs the two losses by learned homoscedastic
uncertainty (Kendall et al. 2018): ``sum_i exp(-s_i) L_i + s_i / 2``.

A batch is one episode, or ``E`` episodes stacked along a leading axis
(``FewShotDataModule(episodes_per_batch=E)``): one backbone pass runs over all
their images, the loss is the mean of the ``E`` per-episode losses, and every
episode still counts as one episode in the accuracy and its confidence
interval. In train mode BatchNorm normalises over all ``E`` episodes' images,
so ``E`` changes the batch statistics as well as the number of optimizer steps.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fam_lightning import fam
from fam_lightning.backbones import build_backbone
from fam_lightning.metrics import EpisodeAccuracy
from fam_lightning.models.base import SimilarityModule
from fam_lightning.protocol import ExplanationInputs
from fam_lightning.reliability import NonFiniteCount, nan_if_nonfinite
from fam_lightning.similarity import class_scores

EPISODE_KEYS = ("support", "query", "support_target", "query_target", "support_class", "query_class")


class UncertaintyWeighting(nn.Module):
    """Kendall et al. 2018 multi-task weighting with ``s_i = log sigma_i^2`` (init 0)."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.log_vars = nn.Parameter(torch.zeros(num_tasks))

    def forward(self, losses: Tensor) -> Tensor:
        """(T,) task losses -> scalar ``sum exp(-s) L + s / 2``."""
        return (torch.exp(-self.log_vars) * losses + 0.5 * self.log_vars).sum()


class FewShotClassifier(SimilarityModule):
    """Episodic few-shot learner implementing :class:`fam_lightning.protocol.SimilarityModel`.

    Args:
        backbone: a registered backbone name (``fam_lightning.backbones``) or an
            ``nn.Module`` exposing ``forward_features`` and ``out_channels``.
        num_classes: number of base classes for the global classification
            head; None reads it from the datamodule's ``num_base_classes`` at setup.
        pooling: "gap" (paper), "gmp" or "lse".
        similarity: "cosine" (paper), "euclidean" or "dot".
        init_scale: initial value of the learnable logit scale.
        multitask: add the global classification loss (uncertainty-weighted).
        optimizer: "sgd" (momentum 0.9, Nesterov) or "adam".
        lr: learning rate; weight_decay: L2 penalty.
        scheduler: "cosine" (to zero over ``trainer.max_epochs``) or "none". Resuming
            with another ``max_epochs`` than the run started with stops with an error
            (:class:`fam_lightning.reliability.ScheduleHorizonError`).
        channels_last: run convolutions in NHWC memory format (faster with
            bf16 on tensor-core GPUs).
        pretrained_path: local weight file for a backbone given by name (never downloaded):
            a registered ResNet takes torchvision-layout weights; ``timm:`` / ``torchvision:``
            backbones take the full model's state_dict (``fam_lightning.backbones.external``).
        backbone_kwargs: extra arguments of the backbone's factory.
    """

    def __init__(
        self,
        backbone: str | nn.Module = "conv4",
        num_classes: int | None = None,
        pooling: Literal["gap", "gmp", "lse"] = "gap",
        similarity: Literal["cosine", "euclidean", "dot"] = "cosine",
        init_scale: float = 10.0,
        multitask: bool = True,
        optimizer: Literal["sgd", "adam"] = "sgd",
        lr: float = 0.05,
        weight_decay: float = 5e-4,
        scheduler: Literal["cosine", "none"] = "cosine",
        channels_last: bool = False,
        pretrained_path: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"] if isinstance(backbone, nn.Module) else None)
        self.backbone = build_backbone(backbone, pretrained_path, backbone_kwargs)
        if not hasattr(self.backbone, "forward_features"):
            raise TypeError(f"backbone {type(self.backbone).__name__} has no forward_features(x)")
        self.pooling = pooling
        self.similarity = similarity
        self.projection: nn.Module | None = None
        self.logit_scale = nn.Parameter(torch.tensor(float(init_scale)))
        self.loss_weighting = UncertaintyWeighting(2) if multitask else None
        self.global_head: nn.Linear | None = None
        if multitask and num_classes is not None:
            self._build_global_head(num_classes)
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.val_accuracy = EpisodeAccuracy()
        self.test_accuracy = EpisodeAccuracy()
        # queries whose class scores hold inf / NaN: their argmax is no prediction
        self.val_nonfinite, self.test_nonfinite = NonFiniteCount(), NonFiniteCount()

    # -- setup --------------------------------------------------------------------------
    def _build_global_head(self, num_classes: int) -> None:
        self.global_head = nn.Linear(self.backbone.out_channels, num_classes)
        self.hparams["num_classes"] = num_classes

    def setup(self, stage: str) -> None:
        if self.loss_weighting is None:
            return
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        data_classes = getattr(datamodule, "num_base_classes", None)
        if self.global_head is None:
            if data_classes is None:
                raise ValueError(
                    "FewShotClassifier(multitask=True) needs num_classes (base classes for the "
                    "global head): pass model.num_classes or use a datamodule with num_base_classes"
                )
            self._build_global_head(int(data_classes))
        elif data_classes is not None and stage == "fit" and data_classes != self.global_head.out_features:
            raise ValueError(
                f"model.num_classes={self.global_head.out_features} but the datamodule has "
                f"{data_classes} base classes; set model.num_classes to {data_classes} or leave it unset"
            )

    # -- episodes -----------------------------------------------------------------------
    def episode_forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """One backbone pass over support + query of one episode, or of ``E`` stacked episodes.

        One episode (``support`` (W*S, 3, H, W)) gives ``feature_maps``
        (W*S + Q, C, h, w) and ``embeddings`` (W*S + Q, D), supports first,
        ``support`` (W, S, D) and ``scores`` (Q, W) unscaled similarities.
        ``E`` stacked episodes (``support`` (E, W*S, 3, H, W)) give ``support``
        (E, W, S, D) and ``scores`` (E, Q, W); ``feature_maps`` and ``embeddings``
        stay flat: all supports, then all queries, episode-major in each part.
        """
        missing = [key for key in EPISODE_KEYS if key not in batch]
        if missing:
            raise KeyError(f"episode batch is missing {missing}; got keys {sorted(batch)}")
        ways, shots = int(batch["ways"]), int(batch["shots"])
        stacked = _stacked(batch)
        episodes = batch["support"].shape[0] if stacked else 1
        images = torch.cat([_flat(batch, "support"), _flat(batch, "query")])  # (E*(W*S + Q), 3, H, W)
        feature_maps = self.forward_features(images)
        embeddings = self.embed(feature_maps)
        num_support = episodes * ways * shots
        support = embeddings[:num_support].view(episodes, ways, shots, -1)  # (E, W, S, D)
        queries = embeddings[num_support:].view(episodes, -1, embeddings.shape[1])  # (E, Q, D)
        scores = torch.stack([class_scores(q, s, self.similarity) for q, s in zip(queries, support)])  # (E, Q, W)
        if not stacked:
            support, scores = support[0], scores[0]
        return {"feature_maps": feature_maps, "embeddings": embeddings, "support": support, "scores": scores}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """Multi-task loss of the batch: the mean of its episodes' losses.

        Every episode has the same number of queries and images, so the mean
        over all queries (images) of the batch is the mean of the per-episode
        means, and the uncertainty weighting, linear in the task losses, keeps it.
        """
        out = self.episode_forward(batch)
        query_target = _flat(batch, "query_target")
        scores = out["scores"].flatten(0, -2)  # (E*Q, W)
        episode_loss = F.cross_entropy(self.logit_scale * scores, query_target)
        global_loss = None
        if self.loss_weighting is None or self.global_head is None:
            loss = episode_loss
        else:
            pooled = fam.pool(out["feature_maps"], self.pooling, self.lse_r)
            classes = torch.cat([_flat(batch, "support_class"), _flat(batch, "query_class")])
            global_loss = F.cross_entropy(self.global_head(pooled), classes)
            loss = self.loss_weighting(torch.stack([episode_loss, global_loss]))
        self.guard_finite_loss(
            loss,
            {"loss_episode": episode_loss, "loss_global": global_loss, "logit_scale": self.logit_scale,
             "log_vars": None if self.loss_weighting is None else self.loss_weighting.log_vars},
        )
        if self._logging_step():
            log = partial(self.log, batch_size=query_target.numel())
            log("train/loss", loss)
            log("train/loss_episode", episode_loss)
            if global_loss is not None:
                log("train/loss_global", global_loss)
            accuracy = (scores.argmax(1) == query_target).float().mean()
            log("train/acc", 100.0 * accuracy)
            log("train/logit_scale", self.logit_scale.detach())
        return loss

    def _logging_step(self) -> bool:
        """Log training scalars only on the steps the logger writes: self.log costs ~1 ms of Python."""
        trainer = self._trainer
        if trainer is None:
            return True
        return (trainer.global_step + 1) % max(1, trainer.log_every_n_steps) == 0 or trainer.fast_dev_run

    def _eval_step(
        self, batch: dict[str, Any], accuracy: EpisodeAccuracy, nonfinite: NonFiniteCount, stage: str
    ) -> dict[str, Any]:
        out = self.episode_forward(batch)
        scores = out["scores"].flatten(0, -2)  # (E*Q, W)
        predictions = scores.argmax(1)
        targets = _flat(batch, "query_target")
        # one row per episode: each counts once in the accuracy and its CI
        episodes = out["support"].shape[0] if _stacked(batch) else 1
        accuracy.update(predictions.view(episodes, -1), targets.view(episodes, -1))
        nonfinite.update(scores)
        loss = F.cross_entropy(self.logit_scale * scores, targets)
        self.log(f"{stage}/loss", loss, batch_size=predictions.numel(), sync_dist=True)
        return {"loss": loss, "explain": self._explanation_inputs(batch, out, predictions)}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._eval_step(batch, self.val_accuracy, self.val_nonfinite, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._eval_step(batch, self.test_accuracy, self.test_nonfinite, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_accuracy(self.val_accuracy, self.val_nonfinite, "val")

    def on_test_epoch_end(self) -> None:
        self._log_accuracy(self.test_accuracy, self.test_nonfinite, "test")

    def _log_accuracy(self, metric: EpisodeAccuracy, nonfinite: NonFiniteCount, stage: str) -> None:
        result = metric.compute()  # synchronised across DDP ranks by torchmetrics
        bad = nonfinite.compute()
        # Values are already equal on every rank; sync_dist marks them reduced (and silences Lightning).
        self.log(f"{stage}/acc", nan_if_nonfinite(result["mean"], bad), prog_bar=True, sync_dist=True)
        self.log(f"{stage}/acc_ci95", nan_if_nonfinite(result["ci95"], bad), sync_dist=True)
        if bad > 0:  # counted and shown, never hidden in an accuracy
            self.log(f"{stage}/nonfinite_scores", bad.float(), sync_dist=True)
        metric.reset()
        nonfinite.reset()

    # -- explanation --------------------------------------------------------------------
    def _explanation_inputs(
        self, batch: dict[str, Any], out: dict[str, Tensor], predictions: Tensor
    ) -> ExplanationInputs:
        """Queries against the support images of their predicted class, in their own episode.

        ``predictions`` (E*Q,): episode-local way of every query, episode-major.
        """
        support = out["support"] if _stacked(batch) else out["support"].unsqueeze(0)  # (E, W, S, D)
        episodes, ways, shots = support.shape[:3]
        episode = torch.arange(episodes, device=predictions.device).repeat_interleave(predictions.numel() // episodes)
        # row (in all supports of the batch) of the predicted class's first support image
        first_support = (episode * ways + predictions) * shots
        num_support = episodes * ways * shots
        return ExplanationInputs(
            images=_flat(batch, "query"),
            feature_maps=out["feature_maps"][num_support:],
            embeddings=out["embeddings"][num_support:],
            references=support[episode, predictions],  # (E*Q, S, D)
            correct=predictions == _flat(batch, "query_target"),
            boxes=_flat(batch, "query_box"),
            reference_images=_flat(batch, "support")[first_support],
            labels=_flat(batch, "query_class"),
            predictions=None if "support_class" not in batch else _flat(batch, "support_class")[first_support],
        )

    def explanation_inputs(self, batch: dict[str, Any]) -> ExplanationInputs:
        """Run one episode (or ``E`` stacked ones) and return all query decisions for explanation."""
        out = self.episode_forward(batch)
        return self._explanation_inputs(batch, out, out["scores"].flatten(0, -2).argmax(1))

    # -- optimisation -------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        params = self.parameters()
        if self.hparams.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                params, lr=self.hparams.lr, momentum=0.9, nesterov=True,
                weight_decay=self.hparams.weight_decay,
            )
        else:
            optimizer = torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.scheduler == "none":
            return optimizer
        return self.cosine_schedule(optimizer, default_epochs=100)


def _stacked(batch: dict[str, Any]) -> bool:
    """Whether ``batch`` holds several episodes stacked along a leading axis (``support`` (E, W*S, 3, H, W))."""
    return batch["support"].dim() == 5


def _flat(batch: dict[str, Any], key: str) -> Tensor | None:
    """``batch[key]`` with a stacked batch's episode axis merged into the rows (None when absent)."""
    value = batch.get(key)
    if value is None or not _stacked(batch):
        return value
    return value.flatten(0, 1)
