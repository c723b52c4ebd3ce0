"""FAM callback: heatmap grids and localisation / faithfulness metrics in TensorBoard.

During validation (and test) it explains every decision the model made in the
step, from the feature maps and references the step already computed
(:class:`fam_lightning.protocol.ExplanationInputs`), so maps cost no second
backbone pass. Metrics use correctly classified samples only, as in the paper;
Average Drop / Increase in Confidence need one extra forward pass of the masked
correct images. At the end of every ``every_n_epochs``-th validation a fixed set
of probe images is explained and logged as one grid under the same tag, so
TensorBoard's step slider shows the maps evolving.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import move_data_to_device, rank_zero_warn
from torch import Tensor, nn
from torchvision.utils import make_grid

from fam_lightning.explainers import EXPLAINERS, Explainer
from fam_lightning.metrics import AverageDrop, EnergyPointingGame, IncreaseInConfidence, LocalizationIoU
from fam_lightning.protocol import ExplanationInputs, check_similarity_model
from fam_lightning.similarity import mean_similarity
from fam_lightning.visualize import IMAGENET_MEAN, IMAGENET_STD, YELLOW, add_border, denormalize, draw_boxes, overlay

class FAMCallback(L.Callback):
    """Explain validation/test decisions with FAM; log maps and metrics.

    Args:
        explainers: one explainer name or a list (``fam_lightning.explainers.EXPLAINERS``,
            e.g. ``["fam", "gradcam", "scorecam"]``): each gets a column in the
            grid and its own metrics, ``<stage>/<name>_<metric>``.
        every_n_epochs: log the probe grid every n validation epochs (the last
            epoch is always logged).
        num_probe_images: probe decisions shown in the grid (fixed across epochs).
        metrics: compute energy pointing game and IoU (needs boxes in the batch).
        faithfulness: compute Average Drop and Increase in Confidence (one extra
            forward pass of the masked correct images per batch).
        max_metric_batches: compute metrics on at most this many batches per
            epoch (None: all), to bound the cost on large validation sets.
        metrics_every_n_epochs: compute the metrics on every n-th validation
            epoch only (the last one always; test always): the faithfulness
            pass costs about one forward pass of the explained images.
        iou_threshold: binarisation threshold of the localisation IoU.
        overlay_alpha: heatmap opacity in the grid.
    """

    def __init__(
        self,
        explainers: str | list[str] = "fam",
        every_n_epochs: int = 1,
        num_probe_images: int = 10,
        metrics: bool = True,
        faithfulness: bool = True,
        max_metric_batches: int | None = None,
        metrics_every_n_epochs: int = 1,
        iou_threshold: float = 0.2,
        overlay_alpha: float = 0.5,
    ) -> None:
        names = [explainers] if isinstance(explainers, str) else list(explainers)
        unknown = [name for name in names if name not in EXPLAINERS]
        if unknown or not names:
            raise ValueError(
                f"unknown explainer {', '.join(map(repr, unknown)) or '(none given)'}; "
                f"available: {', '.join(sorted(EXPLAINERS))}"
            )
        if min(every_n_epochs, num_probe_images, metrics_every_n_epochs) < 1:
            raise ValueError(
                "every_n_epochs, num_probe_images and metrics_every_n_epochs must be >= 1, got "
                f"{every_n_epochs}, {num_probe_images}, {metrics_every_n_epochs}"
            )
        self.explainer_names = names
        self.every_n_epochs = every_n_epochs
        self.num_probe_images = num_probe_images
        self.compute_localization = metrics
        self.compute_faithfulness = faithfulness
        self.max_metric_batches = max_metric_batches
        self.metrics_every_n_epochs = metrics_every_n_epochs
        self._metrics_active = True
        self.overlay_alpha = overlay_alpha
        self.metrics = nn.ModuleDict({name: _metric_set(iou_threshold) for name in names})
        # a uniform map's energy is the box-area fraction: the chance level a map must beat
        self.uniform_energy = EnergyPointingGame()
        self._probe_batch: Any = None
        self._explainers: dict[str, Explainer] = {}

    # -- lifecycle ----------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        check_similarity_model(pl_module)
        if not hasattr(pl_module, "explanation_inputs"):
            raise TypeError(
                f"{type(pl_module).__name__} has no explanation_inputs(batch); FAMCallback needs it "
                "(fam_lightning.protocol.ExplainsDecisions)"
            )
        self._explainers = {name: EXPLAINERS[name](pl_module) for name in self.explainer_names}

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
            self._log_metrics(pl_module, "val")
        if _due(trainer, self.every_n_epochs):
            self._log_probe_grid(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log_metrics(pl_module, "test")
        self._log_probe_grid(trainer, pl_module, "test")

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
        if not (self.compute_localization or self.compute_faithfulness):
            return
        if outputs is None:
            return  # a pass with no decisions (e.g. a retrieval model's gallery pass)
        inputs = outputs.get("explain") if isinstance(outputs, dict) else None
        if not isinstance(inputs, ExplanationInputs):
            raise TypeError(
                f"{type(pl_module).__name__}'s eval step must return {{'explain': ExplanationInputs}} "
                f"(or None for batches without decisions) for FAMCallback, got {type(outputs).__name__}"
            )
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
            maps = self.explain(inputs, name)
            if localize:
                annotated = maps if boxed is None else maps[boxed]
                metrics["energy_pointing_game"].update(annotated, boxes)
                metrics["iou"].update(annotated, boxes)
            if self.compute_faithfulness:
                y, o = self.faithfulness_scores(pl_module, inputs, maps)
                metrics["average_drop"].update(y, o)
                metrics["increase_in_confidence"].update(y, o)

    @staticmethod
    def faithfulness_scores(
        pl_module: L.LightningModule, inputs: ExplanationInputs, maps: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Y: similarity to the references; O: the same for image x map (normalised input space).

        Y and O come from one forward pass over [images, masked images]: scores
        of the same image differ in the last bits between batch shapes (cuDNN
        picks other algorithms), which would count as an "increase" in IC.
        """
        kind = pl_module.similarity
        masked = inputs.images * maps.unsqueeze(1).to(inputs.images.dtype)
        embeddings = pl_module.embed(pl_module.forward_features(torch.cat([inputs.images, masked])))
        original, perturbed = embeddings.chunk(2)
        y = mean_similarity(original, inputs.references, kind, inputs.reference_weights)
        o = mean_similarity(perturbed, inputs.references, kind, inputs.reference_weights)
        return y, o

    def _log_metrics(self, pl_module: L.LightningModule, stage: str) -> None:
        # every rank takes the same branches: compute() is a collective under DDP
        if self.compute_localization:
            pl_module.log(f"{stage}/fam_energy_uniform_baseline", 100.0 * self.uniform_energy.compute())
        for explainer, metrics in self.metrics.items():
            for name, metric in metrics.items():
                if name in LOCALIZATION and self.compute_localization:
                    pl_module.log(f"{stage}/{explainer}_{name}", 100.0 * metric.compute())
                elif name not in LOCALIZATION and self.compute_faithfulness:
                    pl_module.log(f"{stage}/{explainer}_{name}", metric.compute())

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
        grid = self.probe_grid(trainer, pl_module, stage)
        logger.experiment.add_image(f"{stage}/fam_probe", grid, global_step=trainer.global_step)

    def probe_grid(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str = "val") -> Tensor:
        """(3, H', W') grid, one decision per row.

        Columns: image + box | one overlay per explainer (frame: correct?) | reference image
        (| the reference's own map against the image, when the model gives
        its feature maps, as retrieval does).
        """
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.inference_mode():
                batch = move_data_to_device(self._probe(trainer, stage), pl_module.device)
                inputs = pl_module.explanation_inputs(batch)
                count = min(self.num_probe_images, inputs.images.shape[0])
                rows = torch.linspace(0, inputs.images.shape[0] - 1, count, device=inputs.images.device).long()
                inputs = _select(inputs, rows)
                maps = [self.explain(inputs, name) for name in self.explainer_names]
                reference_maps = None
                if inputs.reference_feature_maps is not None:
                    reference_maps = self._explainers[self.explainer_names[0]](
                        inputs.reference_images, inputs.embeddings.unsqueeze(1),
                        feature_maps=inputs.reference_feature_maps,
                    )
        finally:
            pl_module.train(was_training)
        mean, std = _normalization(trainer)
        images = denormalize(inputs.images.float(), mean, std)
        if inputs.boxes is not None:
            images = draw_boxes(images, inputs.boxes, color=YELLOW)
        columns = [images]
        for explainer_maps in maps:
            columns.append(add_border(overlay(images, explainer_maps.float(), self.overlay_alpha), inputs.correct))
        if inputs.reference_images is not None:
            shown = inputs.reference_images.float()
            shown = shown.unsqueeze(1) if shown.dim() == 4 else shown  # (B, R, 3, H, W): R references
            for r in range(shown.shape[1]):
                references = denormalize(shown[:, r], mean, std)
                columns.append(references)
                if reference_maps is not None and r == 0:
                    columns.append(overlay(references, reference_maps.float(), self.overlay_alpha))
        tiles = torch.stack(columns, dim=1).flatten(0, 1)  # row-major: one decision per row
        return make_grid(tiles, nrow=len(columns), padding=2, pad_value=1.0)


LOCALIZATION = ("energy_pointing_game", "iou")


def _due(trainer: L.Trainer, every_n_epochs: int) -> bool:
    """Every n-th epoch, and always the last one."""
    epoch = trainer.current_epoch
    last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
    return epoch % every_n_epochs == 0 or last


def _metric_set(iou_threshold: float) -> nn.ModuleDict:
    return nn.ModuleDict(
        {
            "energy_pointing_game": EnergyPointingGame(),
            "iou": LocalizationIoU(threshold=iou_threshold),
            "average_drop": AverageDrop(),
            "increase_in_confidence": IncreaseInConfidence(),
        }
    )


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


def _select(inputs: ExplanationInputs, index: Tensor) -> ExplanationInputs:
    """Rows ``index`` of every per-sample field."""
    boxes = inputs.boxes
    if isinstance(boxes, list):
        boxes = [boxes[i] for i in index.tolist()]
    elif boxes is not None:
        boxes = boxes[index]
    return ExplanationInputs(
        images=inputs.images[index],
        feature_maps=inputs.feature_maps[index],
        embeddings=inputs.embeddings[index],
        references=inputs.references[index],
        correct=inputs.correct[index],
        boxes=boxes,
        reference_weights=None if inputs.reference_weights is None else inputs.reference_weights[index],
        reference_images=None if inputs.reference_images is None else inputs.reference_images[index],
        reference_feature_maps=(
            None if inputs.reference_feature_maps is None else inputs.reference_feature_maps[index]
        ),
    )


def _normalization(trainer: L.Trainer) -> tuple[tuple[float, ...], tuple[float, ...]]:
    datamodule = trainer.datamodule
    mean = tuple(getattr(datamodule, "mean", IMAGENET_MEAN))
    std = tuple(getattr(datamodule, "std", IMAGENET_STD))
    return mean, std
