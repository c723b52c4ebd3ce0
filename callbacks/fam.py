"""FAM callback: heatmap grids and localisation / faithfulness metrics in TensorBoard.

During validation (and test) it explains every decision the model made in the
step, from the feature maps and references the step already computed
(:class:`fam_lightning.protocol.ExplanationInputs`), so maps cost no second
backbone pass. Metrics use correctly classified samples only, as in the paper;
Average Drop / Increase in Confidence need one forward pass of the masked
correct images (``Y`` is the score the step already computed). At the end of
every ``every_n_epochs``-th validation a fixed set of probe images is explained
and logged as one grid under the same tag, so TensorBoard's step slider shows
the maps evolving.

Before the first training step (``log_initial``) the callback runs the model's
validation over the whole validation set once, on the untrained model, and
logs the grid and the metrics at global step 0, so the slider starts at
initialisation. The untrained model's energy over all its decisions, right or
wrong (``val/<explainer>_energy_untrained``, a class-agnostic baseline), is
then repeated at every validation as a flat reference line beside the
uniform-map baseline. A metric that scored no decision (none right yet) logs
no value rather than a made-up 0. This pass runs the model's
``on_validation_epoch_start`` and ``validation_step`` hooks (so it covers the
few-shot, memory-bank and retrieval families alike: kNN index, gallery pass),
in eval mode under inference mode, with the model's ``self.log`` muted, the
model's own torchmetrics states restored afterwards, and the RNG states
isolated, so training draws the same numbers as without it. For a memory-bank
model the step-0 decisions are kNN votes over the random initial bank, which is
what an untrained model decides with. On resume the pass does not run again:
the untrained baseline lives in the callback's ``state_dict``.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import move_data_to_device, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor, nn
from torchmetrics import Metric

from fam_lightning.explainers import EXPLAINERS, Explainer
from fam_lightning.metrics import (
    AverageDrop,
    DeletionAUC,
    EnergyPointingGame,
    IncreaseInConfidence,
    InsertionAUC,
    LocalizationIoU,
    deletion_insertion_auc,
)
from fam_lightning.protocol import ExplanationInputs, check_similarity_model
from fam_lightning.runs import logging_step_of_trainer as logging_step
from fam_lightning.similarity import mean_similarity
from fam_lightning.callbacks.evolution import DARK_GREEN, EvolutionRecord, class_label
from fam_lightning.visualize import (
    GREEN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RED,
    YELLOW,
    add_border,
    denormalize,
    draw_boxes,
    draw_text,
    fit_width,
    overlay,
    resize_longer_side,
    tile_rows,
)

class FAMCallback(L.Callback):
    """Explain validation/test decisions with FAM; log maps and metrics.

    Args:
        explainers: one explainer name or a list (``fam_lightning.explainers.EXPLAINERS``,
            e.g. ``["fam", "gradcam", "scorecam"]``): each gets a row in the
            grid and its own metrics, ``<stage>/<name>_<metric>``.
        every_n_epochs: log the probe grid every n validation epochs (the last
            epoch is always logged).
        num_probe_images: probe decisions shown in the grid (fixed across epochs).
        metrics: compute energy pointing game and IoU (needs boxes in the batch).
        faithfulness: compute Average Drop and Increase in Confidence (one extra
            forward pass of the masked correct images per batch).
        deletion_insertion: also compute deletion / insertion AUC
            (``2 * deletion_steps`` forward passes of the correct images per
            batch and explainer: off by default).
        deletion_steps: resolution of the deletion / insertion curves.
        max_metric_batches: compute metrics on at most this many batches per
            epoch (None: all), to bound the cost on large validation sets.
        metrics_every_n_epochs: compute the metrics on every n-th validation
            epoch only (the last one always; test always): the faithfulness
            pass costs about one forward pass of the explained images.
        log_initial: explain the probe set and compute the metrics once before
            the first training step (the untrained model, global step 0), and
            log the untrained energy as a flat reference line at every validation.
        iou_threshold: binarisation threshold of the localisation IoU.
        ic_rtol: relative tolerance of Increase in Confidence: ``Y`` (from the
            validation step) and ``O`` (from the masked pass) come from
            different batches, whose kernels differ in the last bits; None:
            ``max(1e-4, 2 * eps)`` of the embeddings' dtype (1e-4 in float32,
            1.6e-2 in bfloat16), above round-off and below a real change.
        overlay_alpha: heatmap opacity in the grid.
        tile_size: pixels of the longer side of each grid tile (images are
            upsampled to it; TensorBoard shows the grid scaled to its card).
    """

    def __init__(
        self,
        explainers: str | list[str] = "fam",
        every_n_epochs: int = 1,
        num_probe_images: int = 8,
        metrics: bool = True,
        faithfulness: bool = True,
        deletion_insertion: bool = False,
        deletion_steps: int = 20,
        max_metric_batches: int | None = None,
        metrics_every_n_epochs: int = 1,
        log_initial: bool = True,
        iou_threshold: float = 0.2,
        ic_rtol: float | None = None,
        overlay_alpha: float = 0.5,
        tile_size: int = 128,
    ) -> None:
        names = [explainers] if isinstance(explainers, str) else list(explainers)
        unknown = [name for name in names if name not in EXPLAINERS]
        if unknown or not names:
            raise ValueError(
                f"unknown explainer {', '.join(map(repr, unknown)) or '(none given)'}; "
                f"available: {', '.join(sorted(EXPLAINERS))}"
            )
        counts = {
            "every_n_epochs": every_n_epochs, "num_probe_images": num_probe_images,
            "metrics_every_n_epochs": metrics_every_n_epochs, "deletion_steps": deletion_steps,
            "tile_size": tile_size,
        }
        bad = {name: value for name, value in counts.items() if value < 1}
        if bad:
            raise ValueError(f"{', '.join(bad)} must be >= 1, got {', '.join(map(str, bad.values()))}")
        if ic_rtol is not None and ic_rtol < 0:
            raise ValueError(f"ic_rtol must be >= 0 or None, got {ic_rtol}")
        self.explainer_names = names
        self.every_n_epochs = every_n_epochs
        self.num_probe_images = num_probe_images
        self.compute_localization = metrics
        self.compute_faithfulness = faithfulness
        self.compute_deletion_insertion = deletion_insertion
        self.deletion_steps = deletion_steps
        self.max_metric_batches = max_metric_batches
        self.metrics_every_n_epochs = metrics_every_n_epochs
        self.log_initial = log_initial
        self.ic_rtol = ic_rtol
        self._metrics_active = True
        self.overlay_alpha = overlay_alpha
        self.tile_size = tile_size
        self.metrics = nn.ModuleDict({name: _metric_set(iou_threshold, deletion_insertion) for name in names})
        # a uniform map's energy is the box-area fraction: the chance level a map must beat
        self.uniform_energy = EnergyPointingGame()
        self._probe_batch: Any = None
        self._explainers: dict[str, Explainer] = {}
        # set by the step-0 pass (or restored on resume): {tag: value}, logged at every validation
        self.untrained: dict[str, float] = {}
        # during the step-0 pass: energy of every decision, right or wrong (the class-agnostic baseline)
        self._untrained_energy: nn.ModuleDict | None = None
        self._initial_done = False
        self._stage_of_grid = "val"
        self.evolution = EvolutionRecord()  # probe maps and energies per validation, drawn at the end of fit

    # -- lifecycle ----------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        check_similarity_model(pl_module)
        if not hasattr(pl_module, "explanation_inputs"):
            raise TypeError(
                f"{type(pl_module).__name__} has no explanation_inputs(batch); FAMCallback needs it "
                "(fam_lightning.protocol.ExplainsDecisions)"
            )
        self._explainers = {name: EXPLAINERS[name](pl_module) for name in self.explainer_names}
        if stage == "fit" and trainer.global_rank == 0:
            logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
            if logger is not None:
                logger.experiment.add_custom_scalars(scalars_layout(self.explainer_names, self.compute_faithfulness))

    def state_dict(self) -> dict[str, Any]:
        return {"untrained": dict(self.untrained), "initial_done": self._initial_done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.untrained = dict(state_dict.get("untrained", {}))
        self._initial_done = bool(state_dict.get("initial_done", True))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a resumed run (callback state loaded, or past step 0) keeps its step-0 record
        if not self.log_initial or self._initial_done or trainer.global_step > 0:
            return
        self._initial_done = True
        loaders = trainer.val_dataloaders
        if loaders is None:
            rank_zero_warn(
                "FAMCallback: no validation dataloader at train start (no validation in epoch 0?); "
                "the step-0 maps and the untrained baseline are skipped"
            )
            return
        with isolate_rng():  # the pass must not shift any random draw of training
            self._initial_validation(trainer, pl_module, loaders)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._metrics_active = _due(trainer, self.metrics_every_n_epochs)
        self._reset(pl_module)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._metrics_active = True
        self._reset(pl_module)

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self._update(pl_module, outputs, batch_idx)

    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:
        self._update(pl_module, outputs, batch_idx)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if self._metrics_active:
            values = self._metric_values("val")
            self.evolution.record_energies(logging_step(trainer), values)
            for tag, value in values.items():
                pl_module.log(tag, value, sync_dist=True)  # already reduced by torchmetrics; marks it so under DDP
        for tag, value in self.untrained.items():  # the flat reference line
            pl_module.log(tag, value, sync_dist=True)
        if _due(trainer, self.every_n_epochs):
            self._log_probe_grid(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for tag, value in self._metric_values("test").items():
            pl_module.log(tag, value, sync_dist=True)
        self._log_probe_grid(trainer, pl_module, "test")

    # -- step 0: the untrained model ----------------------------------------------------
    def _initial_validation(self, trainer: L.Trainer, pl_module: L.LightningModule, loaders: Any) -> None:
        """The model's validation over the whole val set, before training; metrics + grid at step 0."""
        if isinstance(loaders, dict):
            loaders = list(loaders.values())
        loaders = list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
        limits = trainer.num_val_batches
        modes = {module: module.training for module in pl_module.modules()}
        model_metrics = _metric_states(pl_module)
        self._metrics_active = True
        self._reset(pl_module)
        if self.compute_localization:
            self._untrained_energy = nn.ModuleDict({name: EnergyPointingGame() for name in self.explainer_names})
            self._untrained_energy.to(pl_module.device)
        pl_module.eval()
        try:
            with torch.inference_mode(), _muted_logging(pl_module):
                pl_module.on_validation_epoch_start()  # the model's own eval preparation (kNN index, gallery)
                for loader_idx, (loader, limit) in enumerate(zip(loaders, limits)):
                    for batch_idx, batch in enumerate(loader):
                        if batch_idx >= limit:
                            break
                        batch = trainer.strategy.batch_to_device(batch, dataloader_idx=loader_idx)
                        args = (batch, batch_idx, loader_idx) if len(loaders) > 1 else (batch, batch_idx)
                        with trainer.precision_plugin.val_step_context():
                            outputs = pl_module.validation_step(*args)
                        self._update(pl_module, outputs, batch_idx)
                values = self._metric_values("val")  # a collective under DDP: every rank gets here
                self.evolution.record_energies(0, values)
                self.untrained = self._untrained_values()
                for logger in trainer.loggers:  # rank-zero-only loggers
                    logger.log_metrics({**{k: float(v) for k, v in values.items()}, **self.untrained}, step=0)
                self._log_probe_grid(trainer, pl_module, "val")  # needs the model's eval state (gallery)
        finally:
            _restore_metric_states(model_metrics)
            for module, training in modes.items():
                module.training = training
            self._reset(pl_module)
            self._untrained_energy = None

    def _untrained_values(self) -> dict[str, float]:
        """``{val/<explainer>_energy_untrained: percent}`` for explainers measured on any decision.

        Over every decision of the step-0 pass, right or wrong: the untrained
        model's maps are class-agnostic, and few of its decisions are right.
        """
        if self._untrained_energy is None:
            return {}
        return {
            f"val/{name}_energy_untrained": float(100.0 * energy.compute())
            for name, energy in self._untrained_energy.items()
            if _measured(energy)  # every rank takes the same branches: both are collectives
        }

    # -- metrics ------------------------------------------------------------------------
    def _reset(self, pl_module: L.LightningModule) -> None:
        self.metrics.to(pl_module.device)
        self.uniform_energy.to(pl_module.device)
        for metric in [self.uniform_energy, *(m for group in self.metrics.values() for m in group.values())]:
            metric.reset()

    def explain(self, inputs: ExplanationInputs, name: str | None = None) -> Tensor:
        """(B, H, W) maps for the decisions in ``inputs`` by explainer ``name`` (the first by default)."""
        if not self._explainers:
            raise RuntimeError("FAMCallback.setup has not run")
        explainer = self._explainers[name or self.explainer_names[0]]
        # the step's feature maps are reused; perturbation methods add their own passes
        return explainer(inputs.images, inputs.references, inputs.reference_weights, feature_maps=inputs.feature_maps)

    def _update(self, pl_module: L.LightningModule, outputs: Any, batch_idx: int) -> None:
        if not self._metrics_active:
            return
        if self.max_metric_batches is not None and batch_idx >= self.max_metric_batches:
            return
        if not (self.compute_localization or self.compute_faithfulness or self.compute_deletion_insertion):
            return
        if outputs is None:
            return  # a pass with no decisions (e.g. a retrieval model's gallery pass)
        inputs = outputs.get("explain") if isinstance(outputs, dict) else None
        if not isinstance(inputs, ExplanationInputs):
            raise TypeError(
                f"{type(pl_module).__name__}'s eval step must return {{'explain': ExplanationInputs}} "
                f"(or None for batches without decisions) for FAMCallback, got {type(outputs).__name__}"
            )
        # step 0: every decision's maps feed the untrained baseline; the correct ones are reused below
        all_maps = self._update_untrained(inputs) if self._untrained_energy is not None else None
        # The paper evaluates correct decisions only: one index sync per batch.
        keep = inputs.correct.nonzero().squeeze(1)
        if keep.numel() == 0:
            return
        inputs = _select(inputs, keep)
        boxed, boxes = _annotated(inputs.boxes)
        localize = self.compute_localization and boxes is not None
        if localize:
            size = tuple(inputs.images.shape[-2:])
            self.uniform_energy.update(inputs.images.new_ones((len(boxes), *size)), boxes)
        for name, metrics in self.metrics.items():
            maps = all_maps[name][keep] if all_maps is not None else self.explain(inputs, name)
            if localize:
                annotated = maps if boxed is None else maps[boxed]
                metrics["energy_pointing_game"].update(annotated, boxes)
                metrics["iou"].update(annotated, boxes)
            if self.compute_faithfulness:
                y, o = self.faithfulness_scores(pl_module, inputs, maps)
                rtol = self.ic_rtol if self.ic_rtol is not None else _round_off_rtol(inputs.embeddings.dtype)
                metrics["average_drop"].update(y, o)
                metrics["increase_in_confidence"].rtol = rtol
                metrics["increase_in_confidence"].update(y, o)
            if self.compute_deletion_insertion:
                deletion, insertion = deletion_insertion_auc(
                    pl_module, inputs.images, maps, inputs.references, inputs.reference_weights,
                    steps=self.deletion_steps,
                )
                metrics["deletion_auc"].update(deletion)
                metrics["insertion_auc"].update(insertion)

    def _update_untrained(self, inputs: ExplanationInputs) -> dict[str, Tensor]:
        """Energy of every decision's map (the class-agnostic baseline); returns the maps by explainer."""
        boxed, boxes = _annotated(inputs.boxes)
        all_maps = {name: self.explain(inputs, name) for name in self.explainer_names}
        if boxes is not None:
            for name, energy in self._untrained_energy.items():
                maps = all_maps[name]
                energy.update(maps if boxed is None else maps[boxed], boxes)
        return all_maps

    @staticmethod
    def faithfulness_scores(
        pl_module: L.LightningModule, inputs: ExplanationInputs, maps: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Y: the decision score the step computed; O: the same for image x map (normalised input space).

        Y comes from the step's embeddings (no backbone pass); O from one
        forward pass of the masked images. In eval mode a sample's score does
        not depend on its batch up to float round-off (batchnorm uses running
        statistics), which Increase in Confidence absorbs with ``ic_rtol``.
        Both in float32 (bf16 embeddings are widened exactly).
        """
        kind = pl_module.similarity
        references = inputs.references.float()
        weights = None if inputs.reference_weights is None else inputs.reference_weights.float()
        masked = inputs.images * maps.unsqueeze(1).to(inputs.images.dtype)
        perturbed = pl_module.embed(pl_module.forward_features(masked))
        y = mean_similarity(inputs.embeddings.float(), references, kind, weights)
        o = mean_similarity(perturbed.float(), references, kind, weights)
        return y, o

    def _metric_values(self, stage: str) -> dict[str, Tensor]:
        """``{tag: value}`` of every enabled metric that saw a sample (percent, AUCs raw); a collective under DDP."""
        values: dict[str, Tensor] = {}
        if self.compute_localization and _measured(self.uniform_energy):
            values[f"{stage}/fam_energy_uniform_baseline"] = 100.0 * self.uniform_energy.compute()
        enabled = {
            "energy_pointing_game": self.compute_localization, "iou": self.compute_localization,
            "average_drop": self.compute_faithfulness, "increase_in_confidence": self.compute_faithfulness,
            "deletion_auc": self.compute_deletion_insertion, "insertion_auc": self.compute_deletion_insertion,
        }
        for explainer, metrics in self.metrics.items():
            for name, metric in metrics.items():
                if not enabled[name] or not _measured(metric):
                    continue  # no decision to score (e.g. none right yet): no value, rather than a made-up 0
                value = metric.compute()
                if name in LOCALIZATION:
                    value = 100.0 * value
                elif name in AUC:  # a NaN AUC (NaN map or score) is never averaged away
                    with metric.sync_context():
                        nan = metric.num_excluded > 0
                    value = torch.where(nan, torch.full_like(value, float("nan")), value)
                values[f"{stage}/{explainer}_{name}"] = value
        return values

    # -- probe grid ---------------------------------------------------------------------
    def _probe(self, trainer: L.Trainer, stage: str) -> Any:
        if self._probe_batch is None:
            datamodule = trainer.datamodule
            if datamodule is not None and hasattr(datamodule, "probe_batch"):
                self._probe_batch = datamodule.probe_batch()
            elif datamodule is not None and hasattr(datamodule, "probe_episode"):
                self._probe_batch = datamodule.probe_episode()
            else:
                loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
                loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
                self._probe_batch = next(iter(loader))
        return self._probe_batch

    def _log_probe_grid(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.global_rank != 0:
            return
        logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if logger is None:
            rank_zero_warn("FAMCallback: no TensorBoardLogger attached; probe heatmaps are not logged")
            return
        self._stage_of_grid = stage
        grid = self.probe_grid(trainer, pl_module, stage)
        logger.experiment.add_image(f"{stage}/fam_probe", grid, global_step=logging_step(trainer))
        if stage == "val" and trainer.state.fn == "fit":  # the filmstrip drawn at the end of fit
            inputs, maps, scores = self._last_probe
            self.evolution.record_probes(
                logging_step(trainer), inputs.images, inputs.boxes, maps[0], scores, inputs.correct, inputs.labels,
                inputs.predictions, _normalization(trainer), self.tile_size, class_names(trainer, "val"),
            )

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        if trainer.global_rank == 0 and logger is not None:  # evolution at a glance: run folder + TensorBoard
            self.evolution.write(Path(logger.log_dir) / "fam_evolution", logger.experiment, trainer.global_step,
                                 self.explainer_names, self.untrained, self.overlay_alpha)

    def probe_grid(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str = "val") -> Tensor:
        """(3, H', W') CPU grid in [0, 1], one probe decision per column, wider than tall.

        Rows: the image with its ground-truth box (yellow) | one overlay per
        explainer (framed green if the decision was right, red if wrong) | the
        reference(s) the decision was made against (| the reference's own map
        against the image, when the model gives its feature maps, as retrieval
        does). Above each column: true and predicted class (when the model
        reports them) and the decision's similarity score; left: row names.
        Tiles are upsampled to ``tile_size``; the device is synced once.
        """
        modes = {module: module.training for module in pl_module.modules()}
        pl_module.eval()
        try:
            with torch.inference_mode():
                batch = move_data_to_device(self._probe(trainer, stage), pl_module.device)
                inputs = pl_module.explanation_inputs(batch)
                count = min(self.num_probe_images, inputs.images.shape[0])
                # host-side indices: selecting list boxes needs no device sync
                rows = torch.linspace(0, inputs.images.shape[0] - 1, count).long()
                inputs = _select(inputs, rows.to(inputs.images.device), rows.tolist())
                maps = [self.explain(inputs, name) for name in self.explainer_names]
                reference_maps = None
                if inputs.reference_feature_maps is not None:
                    reference_maps = self._explainers[self.explainer_names[0]](
                        inputs.reference_images, inputs.embeddings.unsqueeze(1),
                        feature_maps=inputs.reference_feature_maps,
                    )
                weights = None if inputs.reference_weights is None else inputs.reference_weights.float()
                scores = mean_similarity(
                    inputs.embeddings.float(), inputs.references.float(), pl_module.similarity, weights
                )
        finally:
            for module, training in modes.items():
                module.training = training
        self._last_probe = (inputs, maps, scores)
        return self._render_grid(trainer, inputs, maps, reference_maps, scores)

    def _render_grid(
        self, trainer: L.Trainer, inputs: ExplanationInputs, maps: list[Tensor],
        reference_maps: Tensor | None, scores: Tensor,
    ) -> Tensor:
        """Tiles on the device, then one host copy (tiles + numbers together) for the text."""
        mean, std = _normalization(trainer)
        size = self.tile_size
        scale = size / max(inputs.images.shape[-2:])
        images = resize_longer_side(denormalize(inputs.images.float(), mean, std), size)
        if inputs.boxes is not None:
            boxes = [b * scale for b in inputs.boxes] if isinstance(inputs.boxes, list) else inputs.boxes * scale
            images = draw_boxes(images, boxes, color=YELLOW, thickness=max(1, size // 64))
        frame = max(2, size // 32)
        tiles, names = [images], ["image"]
        for name, explainer_maps in zip(self.explainer_names, maps):
            upsampled = resize_longer_side(explainer_maps.float().unsqueeze(1), size).squeeze(1)
            tiles.append(add_border(overlay(images, upsampled, self.overlay_alpha), inputs.correct, frame))
            names.append(name)
        if inputs.reference_images is not None:
            shown = inputs.reference_images.float()
            shown = shown.unsqueeze(1) if shown.dim() == 4 else shown  # (B, R, 3, H, W): R references
            for r in range(shown.shape[1]):
                references = resize_longer_side(denormalize(shown[:, r], mean, std), size)
                tiles.append(references)
                names.append("reference" if shown.shape[1] == 1 else f"reference {r + 1}")
                if reference_maps is not None and r == 0:
                    upsampled = resize_longer_side(reference_maps.float().unsqueeze(1), size).squeeze(1)
                    tiles.append(overlay(references, upsampled, self.overlay_alpha))
                    names.append("its map")
        # TensorBoard fits the image into a card about 450 x 215 px: the header text is
        # large (a fifth of a tile) so it stays readable there
        font = max(10, round(size / 4.5))
        padding = max(2, size // 32)
        top, left = 3 * font + 4 * padding, font + 2 * padding  # header: 3 lines; left: row names
        canvas = tile_rows(tiles, padding=padding, top=top, left=left)
        labels = _labels(inputs)
        votes = _vote_weights(inputs)
        numbers = torch.stack([labels[0], labels[1], scores.float(), inputs.correct.float()]).float()
        host = torch.cat([canvas.flatten(), numbers.flatten(), votes.flatten()]).cpu()  # the one sync of the grid
        canvas, rest = host[: canvas.numel()].view_as(canvas), host[canvas.numel():]
        numbers, votes = rest[: numbers.numel()].view(4, -1), rest[numbers.numel():].view_as(votes)
        true, predicted, similarity, correct = (row.tolist() for row in numbers)
        names_of = class_names(trainer, self._stage_of_grid)
        tile_width = images.shape[-1]
        step, height = images.shape[-1] + padding, images.shape[-2]
        black = (0.0, 0.0, 0.0)
        texts = []
        for column in range(len(similarity)):
            x, verdict = left + padding + column * step, GREEN_TEXT if correct[column] else RED
            lines = (
                [(f"true {class_label(names_of, true[column])}", black), (f"pred {class_label(names_of, predicted[column])}", verdict)]
                if labels[2] else [("right" if correct[column] else "wrong", verdict)]
            )
            lines.append((f"sim {similarity[column]:.3f}".replace("0.", ".", 1), black))
            for i, (text, color) in enumerate(lines):
                # class names are long: a smaller font where the text would not fit the tile
                size_i = font if fit_width(text, tile_width, font) == text else max(8, font * 3 // 5)
                y = padding + i * (font + padding) + (font - size_i) // 2
                texts.append((x, y, fit_width(text, tile_width, size_i), color, None, size_i))
        row_names = [
            (padding, top + padding + row * (height + padding) + height // 2, name, black)
            for row, name in enumerate(names)
        ]
        if votes.numel():  # kNN decisions: each reference's share of the vote, inside its tile
            first = names.index("reference 1") if "reference 1" in names else names.index("reference")
            rows_of = [first + r + (1 if r > 0 and "its map" in names else 0) for r in range(votes.shape[1])]
            small = max(8, font * 3 // 5)
            for column in range(votes.shape[0]):
                x = left + padding + column * step + padding
                for r, row in enumerate(rows_of):
                    y = top + padding + row * (height + padding) + height - small - 2 * padding
                    texts.append((x, y, f"vote {votes[column, r]:.2f}".replace("0.", ".", 1), WHITE, black, small))
        return draw_text(
            canvas, texts, font_size=font, vertical=row_names, vertical_font_size=font,
            vertical_max_length=height - padding,
        )


LOCALIZATION = ("energy_pointing_game", "iou")
AUC = ("deletion_auc", "insertion_auc")
GREEN_TEXT = DARK_GREEN  # GREEN is a frame colour; text on white needs a darker one


def _due(trainer: L.Trainer, every_n_epochs: int) -> bool:
    """Every n-th epoch, and always the last one."""
    epoch = trainer.current_epoch
    last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
    return epoch % every_n_epochs == 0 or last


def _metric_set(iou_threshold: float, deletion_insertion: bool = False) -> nn.ModuleDict:
    metrics: dict[str, Metric] = {
        "energy_pointing_game": EnergyPointingGame(),
        "iou": LocalizationIoU(threshold=iou_threshold),
        "average_drop": AverageDrop(),
        "increase_in_confidence": IncreaseInConfidence(),
    }
    if deletion_insertion:
        metrics.update(deletion_auc=DeletionAUC(), insertion_auc=InsertionAUC())
    return nn.ModuleDict(metrics)


def _measured(metric: Metric) -> bool:
    """Whether any rank gave ``metric`` a sample (NaN samples count: they must show). A collective under DDP."""
    counts = [name for name in ("num_samples", "num_valid", "num_excluded", "num_nan") if hasattr(metric, name)]
    if isinstance(metric, (AverageDrop, IncreaseInConfidence)):
        counts.remove("num_excluded")  # Y <= 0 only: excluded samples give no value
    with metric.sync_context():
        return bool(sum(int(getattr(metric, name)) for name in counts) > 0)


def _round_off_rtol(dtype: torch.dtype) -> float:
    """Increase-in-Confidence tolerance for scores from two passes: above round-off of ``dtype``."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return max(1e-4, 2 * eps)


@contextmanager
def _muted_logging(pl_module: L.LightningModule) -> Iterator[None]:
    """The model's ``self.log`` / ``self.log_dict`` do nothing inside (its step-0 values are not its own)."""

    def ignore(*args: Any, **kwargs: Any) -> None:
        return None

    pl_module.__dict__["log"] = pl_module.__dict__["log_dict"] = ignore  # instance attributes shadow the methods
    try:
        yield
    finally:
        del pl_module.__dict__["log"], pl_module.__dict__["log_dict"]


def _metric_states(pl_module: nn.Module) -> list[tuple[Metric, dict[str, Any], int, Any]]:
    """A copy of every torchmetrics state in the model, to put back after the step-0 pass."""
    return [
        (metric, copy.deepcopy(metric.metric_state), metric._update_count, metric._computed)
        for metric in pl_module.modules()
        if isinstance(metric, Metric)
    ]


def _restore_metric_states(saved: list[tuple[Metric, dict[str, Any], int, Any]]) -> None:
    for metric, state, update_count, computed in saved:
        for name, value in state.items():
            setattr(metric, name, value)
        metric._update_count, metric._computed = update_count, computed


def _labels(inputs: ExplanationInputs) -> tuple[Tensor, Tensor, bool]:
    """(true classes, predicted classes, whether the model reported them) as float rows for the grid."""
    if inputs.labels is None or inputs.predictions is None:
        zeros = torch.zeros(inputs.images.shape[0], device=inputs.images.device)
        return zeros, zeros, False
    return inputs.labels.float(), inputs.predictions.float(), True


def _annotated(boxes: Tensor | list[Tensor] | None) -> tuple[Tensor | None, Tensor | list[Tensor] | None]:
    """Localisation uses annotated images only: (rows to keep or None for all, their boxes).

    Box lists are host metadata (an image without a VOC file has a (0, 4) entry),
    so this needs no device sync.
    """
    if not isinstance(boxes, list):
        return None, boxes
    rows = [i for i, b in enumerate(boxes) if b.shape[0] > 0]
    if len(rows) == len(boxes):
        return None, boxes
    if not rows:
        return None, None
    return torch.tensor(rows, device=boxes[rows[0]].device), [boxes[i] for i in rows]


def _select(inputs: ExplanationInputs, index: Tensor, host_index: list[int] | None = None) -> ExplanationInputs:
    """Rows ``index`` of every per-sample field (``host_index``: the same on the host, saves a sync)."""
    selected = {}
    for field in dataclasses.fields(inputs):
        value = getattr(inputs, field.name)
        if isinstance(value, list):  # per-image box lists
            rows = host_index if host_index is not None else index.tolist()
            value = [value[i] for i in rows]
        elif isinstance(value, Tensor):
            value = value[index]
        selected[field.name] = value
    return ExplanationInputs(**selected)


def _normalization(trainer: L.Trainer) -> tuple[tuple[float, ...], tuple[float, ...]]:
    datamodule = trainer.datamodule
    mean = tuple(getattr(datamodule, "mean", IMAGENET_MEAN))
    std = tuple(getattr(datamodule, "std", IMAGENET_STD))
    return mean, std


WHITE = (1.0, 1.0, 1.0)


def _vote_weights(inputs: ExplanationInputs) -> Tensor:
    """(B, R) share of each shown reference in the predicted class's kNN vote, or an empty tensor."""
    weights = inputs.reference_weights
    if weights is None or inputs.reference_images is None or inputs.reference_images.dim() != 5:
        return inputs.images.new_zeros(0, 0)
    shown = inputs.reference_images.shape[1]
    weights = weights.float()
    shares = weights / weights.sum(1, keepdim=True).clamp_min(1e-12)
    # the shown references are the strongest voters, strongest first (MemoryBankModel.explanation_inputs)
    return shares.sort(dim=1, descending=True).values[:, :shown]


def class_names(trainer: L.Trainer, stage: str = "val") -> list[str] | None:
    """Display names of the classes the ``stage`` loader's labels index, if its data set has them.

    Looks for ``classes`` / ``class_names`` (a list of strings) on the loader's data set and the data
    sets it wraps (an episode data set over a CUB split, a subset ...).
    """
    loaders = getattr(trainer, "val_dataloaders" if stage == "val" else "test_dataloaders", None)
    loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
    dataset, seen = getattr(loader, "dataset", None), 0
    while dataset is not None and seen < 4:
        for attribute in ("class_names", "classes"):  # display names before ids (ImageNet: wnids)
            names = getattr(dataset, attribute, None)
            if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
                return list(names)
        dataset, seen = getattr(dataset, "dataset", None), seen + 1
    return None


def scalars_layout(explainers: list[str], faithfulness: bool) -> dict[str, dict[str, list]]:
    """TensorBoard custom-scalars layout: each explainer's energy on one chart with its two baselines."""
    def exact(*tags: str) -> list[str]:
        return [f"^{re.escape(tag)}$" for tag in tags]

    energy = {
        f"{name} energy vs uniform map and untrained model": ["Multiline", exact(
            f"val/{name}_energy_pointing_game", f"val/{name}_energy_uniform_baseline", f"val/{name}_energy_untrained")]
        for name in explainers
    }
    quality = {"accuracy (few-shot / kNN / retrieval)": ["Multiline", exact(
        "val/acc", "val/knn_top1", "val/knn_top5", "val/recall@1", "val/map@r")]}
    more = {f"{name} IoU": ["Multiline", exact(f"val/{name}_iou")] for name in explainers}
    if faithfulness:
        more.update({f"{name} Average Drop / Increase in Confidence": ["Multiline", exact(
            f"val/{name}_average_drop", f"val/{name}_increase_in_confidence")] for name in explainers})
    return {"1. FAM energy and its baselines": energy, "2. Decisions": quality, "3. Localisation and faithfulness": more}
