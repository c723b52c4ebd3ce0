"""FAM callback: heatmap grids and localisation / faithfulness metrics in TensorBoard.

During validation (and test) it explains every decision the model made in the step, from the feature maps and
references the step already computed (:class:`fam_lightning.protocol.ExplanationInputs`), so maps cost no second
backbone pass, and scores them with :class:`fam_lightning.metrics.ExplanationMetrics` (correct decisions only, as
in the paper; a metric that scored no decision logs no value rather than a made-up 0). At the end of every
``every_n_epochs``-th validation a fixed set of probe decisions is drawn as one grid under one tag
(:mod:`.probe`, :func:`fam_lightning.visualize.decision_grid`), so TensorBoard's step slider shows the maps evolving;
at the end of ``fit`` the filmstrips and the energy plot (:mod:`.evolution`).

Before the first training step (``log_initial``) the model's own validation (``on_validation_epoch_start`` and
``validation_step``: few-shot, memory bank and retrieval alike) runs once over the validation set on the
untrained model, isolated (:mod:`.step0`: eval and inference mode, the model's logging muted, its torchmetrics
left untouched, the RNG states isolated, so training draws the same numbers as without it); the grid and the
metrics are logged at global step 0. The untrained model's energy over all its decisions, right or wrong
(``val/<explainer>_energy_untrained``, a class-agnostic baseline), is then logged at every validation as a flat
line beside the uniform-map baseline. On resume the pass does not run again: the baseline lives in the callback's
``state_dict``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import move_data_to_device, rank_zero_warn
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor

from fam_lightning.callbacks.evolution import EvolutionRecord
from fam_lightning.callbacks.layout import scalars_layout
from fam_lightning.callbacks.probe import class_names, grid_of, normalization, probe_batch, probe_decisions
from fam_lightning.callbacks.step0 import eval_mode, isolated_pass, request_validation_loaders, validation_outputs
from fam_lightning.explainers import EXPLAINERS, Explainer
from fam_lightning.metrics.explanation import ExplanationMetrics, faithfulness_scores
from fam_lightning.protocol import ExplanationInputs, check_similarity_model
from fam_lightning.runs import logging_step_of_trainer as logging_step

__all__ = ["FAMCallback", "class_names", "scalars_layout"]


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
        self.max_metric_batches = max_metric_batches
        self.metrics_every_n_epochs = metrics_every_n_epochs
        self.log_initial = log_initial
        self._metrics_active = True
        self.overlay_alpha = overlay_alpha
        self.tile_size = tile_size
        self.metrics = ExplanationMetrics(
            names, localization=metrics, faithfulness=faithfulness, deletion_insertion=deletion_insertion,
            iou_threshold=iou_threshold, ic_rtol=ic_rtol, deletion_steps=deletion_steps,
        )
        self._probe_batch: Any = None
        self._explainers: dict[str, Explainer] = {}
        # set by the step-0 pass (or restored on resume): {tag: value}, logged at every validation
        self.untrained: dict[str, float] = {}
        # during the step-0 pass: energy of every decision, right or wrong (the class-agnostic baseline)
        self._untrained_energy: ExplanationMetrics | None = None
        self._initial_done = False
        self.evolution = EvolutionRecord()  # probe maps and energies per validation, drawn at the end of fit

    faithfulness_scores = staticmethod(faithfulness_scores)  # Y and O of the decisions (see the metrics module)

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
            logger = _tensorboard(trainer)
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
        if request_validation_loaders(trainer) is None:
            rank_zero_warn(
                "FAMCallback: no validation dataloader at train start (no validation in epoch 0?); "
                "the step-0 maps and the untrained baseline are skipped"
            )
            return
        with isolate_rng():  # the pass must not shift any random draw of training
            self._initial_validation(trainer, pl_module)

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
            values = self.metrics.compute("val")
            self.evolution.record_energies(logging_step(trainer), values)
            for tag, value in values.items():
                pl_module.log(tag, value, sync_dist=True)  # already reduced by torchmetrics; marks it so under DDP
        for tag, value in self.untrained.items():  # the flat reference line
            pl_module.log(tag, value, sync_dist=True)
        if _due(trainer, self.every_n_epochs):
            self._log_probe_grid(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for tag, value in self.metrics.compute("test").items():
            pl_module.log(tag, value, sync_dist=True)
        self._log_probe_grid(trainer, pl_module, "test")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = _tensorboard(trainer)
        if trainer.global_rank == 0 and logger is not None:  # evolution at a glance: run folder + TensorBoard
            self.evolution.write(Path(logger.log_dir) / "fam_evolution", logger.experiment, trainer.global_step,
                                 self.explainer_names, self.untrained, self.overlay_alpha)

    # -- step 0: the untrained model ----------------------------------------------------
    def _initial_validation(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The model's validation over the whole val set, before training; metrics + grid at step 0."""
        self._metrics_active = True
        self._reset(pl_module)
        if self.compute_localization:
            self._untrained_energy = ExplanationMetrics(
                self.explainer_names, kinds=("energy_pointing_game",), decisions="all", uniform_baseline=False,
            ).to(pl_module.device)
        try:
            with isolated_pass(pl_module):
                for outputs, batch_idx in validation_outputs(trainer, pl_module):
                    self._update(pl_module, outputs, batch_idx)
                values = self.metrics.compute("val")  # a collective under DDP: every rank gets here
                self.evolution.record_energies(0, values)
                self.untrained = self._untrained_values()
                for logger in trainer.loggers:  # rank-zero-only loggers
                    logger.log_metrics({**{k: float(v) for k, v in values.items()}, **self.untrained}, step=0)
                self._log_probe_grid(trainer, pl_module, "val")  # needs the model's eval state (gallery)
        finally:
            self._reset(pl_module)
            self._untrained_energy = None

    def _untrained_values(self) -> dict[str, float]:
        """``{val/<explainer>_energy_untrained: percent}`` for explainers measured on any decision.

        Over every decision of the step-0 pass, right or wrong: the untrained
        model's maps are class-agnostic, and few of its decisions are right.
        """
        if self._untrained_energy is None:
            return {}
        values = self._untrained_energy.compute("val")  # every rank takes the same branches: a collective
        return {
            f"val/{name}_energy_untrained": float(values[f"val/{name}_energy_pointing_game"])
            for name in self.explainer_names if f"val/{name}_energy_pointing_game" in values
        }

    # -- metrics ------------------------------------------------------------------------
    def _reset(self, pl_module: L.LightningModule) -> None:
        self.metrics.to(pl_module.device)
        self.metrics.reset()

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
        if self._untrained_energy is None:  # maps of the correct decisions only, computed by the metrics
            self.metrics.update(inputs, self.explain, pl_module)
            return
        # step 0: every decision's maps feed the untrained baseline; the correct ones are reused by the metrics
        maps = {name: self.explain(inputs, name) for name in self.explainer_names}
        self._untrained_energy.update(inputs, maps, pl_module)
        self.metrics.update(inputs, maps, pl_module)

    # -- probe grid ---------------------------------------------------------------------
    def _log_probe_grid(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.global_rank != 0:
            return
        logger = _tensorboard(trainer)
        if logger is None:
            rank_zero_warn("FAMCallback: no TensorBoardLogger attached; probe heatmaps are not logged")
            return
        grid = self.probe_grid(trainer, pl_module, stage)
        logger.experiment.add_image(f"{stage}/fam_probe", grid, global_step=logging_step(trainer))
        if stage == "val" and trainer.state.fn == "fit":  # the filmstrip drawn at the end of fit
            inputs, maps, scores = self._last_probe
            self.evolution.record_probes(
                logging_step(trainer), inputs.images, inputs.boxes, maps[self.explainer_names[0]], scores,
                inputs.correct, inputs.labels, inputs.predictions, normalization(trainer), self.tile_size,
                class_names(trainer, "val"),
            )

    def probe_grid(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str = "val") -> Tensor:
        """(3, H', W') CPU grid in [0, 1], one probe decision per column, wider than tall.

        Rows: the image with its ground-truth box (yellow) | one overlay per
        explainer (framed green if the decision was right, red if wrong) | the
        reference(s) the decision was made against (| the reference's own map
        against the image, when the model gives its feature maps, as retrieval
        does); see :func:`fam_lightning.visualize.decision_grid`.
        """
        with eval_mode(pl_module), torch.inference_mode():
            if self._probe_batch is None:
                self._probe_batch = probe_batch(trainer, stage)
            batch = move_data_to_device(self._probe_batch, pl_module.device)
            inputs, maps, reference_maps, scores = probe_decisions(
                pl_module, batch, self.num_probe_images, self.explain, self.explainer_names
            )
        self._last_probe = (inputs, maps, scores)
        return grid_of(trainer, stage, inputs, maps, reference_maps, scores, self.tile_size, self.overlay_alpha)


def _tensorboard(trainer: L.Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


def _due(trainer: L.Trainer, every_n_epochs: int) -> bool:
    """Every n-th epoch, and always the last one."""
    epoch = trainer.current_epoch
    last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
    return epoch % every_n_epochs == 0 or last
