"""fam-benchmark's recorder: a Lightning callback that explains the eval steps' decisions and scores each one.

Per decision and explainer (and a uniform map, the chance level): energy pointing game, IoU, Average Drop,
Increase in Confidence, deletion / insertion AUC and curves, time per image.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from fam_lightning.explainers import EXPLAINERS
from fam_lightning.metrics import energy_pointing_game, localization_iou
from fam_lightning.metrics.deletion_insertion import deletion_insertion_curves
from fam_lightning.metrics.explanation import annotated, faithfulness_scores, round_off_rtol, select
from fam_lightning.metrics.faithfulness import average_drop_per_sample, increase_in_confidence_per_sample
from fam_lightning.protocol import ExplanationInputs

UNIFORM = "uniform"
REFERENCE = "fam"


@dataclass(frozen=True)
class Metric:
    """A per-decision metric: its key, the table's column name, and which way is better."""

    key: str
    label: str
    higher_is_better: bool | None
    digits: int


METRICS = (
    Metric("energy", "energy (%)", True, 1),
    Metric("iou", "IoU (%)", True, 1),
    Metric("average_drop", "AD (%)", False, 1),
    Metric("increase_in_confidence", "IC (%)", True, 1),
    Metric("deletion_auc", "deletion AUC", False, 3),
    Metric("insertion_auc", "insertion AUC", True, 3),
    Metric("ms_per_image", "ms / image", None, 2),
)


class UniformMap:
    """A constant map: what a map that knows nothing scores (the chance level of every metric)."""

    def __call__(self, images: Tensor, references: Tensor | None = None, reference_weights: Tensor | None = None,
                 feature_maps: Tensor | None = None) -> Tensor:
        return images.new_ones(images.shape[0], *images.shape[-2:])


class _Enough(Exception):
    """Raised by the recorder once the requested decisions are explained: ends the evaluation loop early."""


@dataclass
class Records:
    """Per-decision values of one explainer, in decision order (lists of per-batch tensors until finished)."""

    values: dict[str, list[Tensor]] = field(default_factory=lambda: {m.key: [] for m in METRICS})
    deletion: list[Tensor] = field(default_factory=list)
    insertion: list[Tensor] = field(default_factory=list)
    nonfinite: list[Tensor] = field(default_factory=list)


class DecisionRecorder(L.Callback):
    """Explains the eval steps' decisions with every explainer and keeps each decision's metrics.

    Args:
        explainers: names (``EXPLAINERS``); the uniform map is added.
        decisions: stop after this many explained decisions.
        steps: deletion / insertion curve steps.
        all_decisions: explain wrong decisions too (default: correct ones only, as the paper).
        ic_rtol: Increase-in-Confidence tolerance (None: float round-off of the embeddings' dtype).
        progress: show a progress bar over the decisions.
    """

    def __init__(self, explainers: Sequence[str], decisions: int, steps: int = 10, all_decisions: bool = False,
                 ic_rtol: float | None = None, progress: bool = True) -> None:
        self.names = [*explainers, UNIFORM]
        self.decisions = decisions
        self.steps = steps
        self.all_decisions = all_decisions
        self.ic_rtol = ic_rtol
        self.progress = progress
        self.ids: list[str] = []
        self.records = {name: Records() for name in self.names}
        self.seen = 0  # decisions the model made (right or wrong) in the batches looked at
        self._explainers: dict[str, Any] = {}
        self._bar: Any = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._explainers = {name: EXPLAINERS[name](pl_module) for name in self.names if name != UNIFORM}
        self._explainers[UNIFORM] = UniformMap()
        self._bar = tqdm(total=self.decisions, desc="decisions explained", unit="decision",
                         disable=not self.progress, dynamic_ncols=True)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._bar is not None:
            self._bar.close()

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self.record(pl_module, outputs, f"test:{dataloader_idx}:{batch_idx}")

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self.record(pl_module, outputs, f"val:{dataloader_idx}:{batch_idx}")

    def record(self, pl_module: L.LightningModule, outputs: Any, batch_id: str) -> None:
        """Explain and score one batch's decisions; raises ``_Enough`` when the count is reached."""
        if outputs is None:
            return  # a batch without decisions (a retrieval gallery pass)
        inputs = outputs.get("explain") if isinstance(outputs, dict) else None
        if not isinstance(inputs, ExplanationInputs):
            raise TypeError(f"{type(pl_module).__name__}'s eval step must return {{'explain': ExplanationInputs}} "
                            f"for fam-benchmark, got {type(outputs).__name__}")
        self.seen += inputs.correct.numel()
        rows = torch.arange(inputs.correct.numel()) if self.all_decisions else inputs.correct.cpu().nonzero()[:, 0]
        rows = rows[: self.decisions - len(self.ids)].tolist()  # the one host sync of the batch's bookkeeping
        if rows:
            self._score(pl_module, select(inputs, torch.tensor(rows, device=inputs.correct.device), rows))
            self.ids += [f"{batch_id}:{row}" for row in rows]
            self._bar.update(len(rows))
        if len(self.ids) >= self.decisions:
            raise _Enough

    def _score(self, pl_module: L.LightningModule, inputs: ExplanationInputs) -> None:
        batch = inputs.images.shape[0]
        boxed, boxes = annotated(inputs.boxes)
        boxed = torch.arange(batch, device=inputs.images.device) if boxed is None else boxed
        rtol = self.ic_rtol if self.ic_rtol is not None else round_off_rtol(inputs.embeddings.dtype)
        device = inputs.images.device
        first = not self.ids
        for name in self.names:
            explainer = self._explainers[name]

            def explain() -> Tensor:
                return explainer(inputs.images, inputs.references, inputs.reference_weights,
                                 feature_maps=inputs.feature_maps)

            if first:
                explain()  # warm-up: lazy initialisation and kernel selection stay out of the timing
            _synchronize(device)
            start = time.perf_counter()
            maps = explain()
            _synchronize(device)
            seconds = time.perf_counter() - start
            values = self.records[name].values
            values["ms_per_image"].append(torch.full((batch,), 1e3 * seconds / batch, dtype=torch.float64))
            nan = torch.full((batch,), math.nan, dtype=torch.float64, device=device)
            energy, iou = nan.clone(), nan.clone()
            if boxes is not None:
                energy[boxed] = 100.0 * energy_pointing_game(maps[boxed], boxes).double()
                iou[boxed] = 100.0 * localization_iou(maps[boxed], boxes).double()
            values["energy"].append(energy)
            values["iou"].append(iou)
            y, o = faithfulness_scores(pl_module, inputs, maps)
            y, o = y.double(), o.double()
            # the metric classes' per-sample twins: Y <= 0 excluded (NaN here, left out of the means)
            values["average_drop"].append(average_drop_per_sample(y, o))
            values["increase_in_confidence"].append(increase_in_confidence_per_sample(y, o, rtol))
            deletion, insertion = deletion_insertion_curves(
                pl_module, inputs.images, maps, inputs.references, inputs.reference_weights, steps=self.steps
            )
            deletion, insertion = deletion.double(), insertion.double()
            values["deletion_auc"].append(torch.trapezoid(deletion, dx=1.0 / self.steps, dim=1))
            values["insertion_auc"].append(torch.trapezoid(insertion, dx=1.0 / self.steps, dim=1))
            record = self.records[name]
            record.deletion.append(deletion)
            record.insertion.append(insertion)
            # a NaN map or score is never dropped as "not scored": it makes the explainer's figures NaN
            record.nonfinite.append(~maps.flatten(1).isfinite().all(1) | ~y.isfinite() | ~o.isfinite())

    def finished(self) -> dict[str, dict[str, np.ndarray]]:
        """``{explainer: {metric: (N,), "deletion_curve": (N, T), "insertion_curve": (N, T), "nonfinite": (N,)}}``."""
        result = {}
        for name, record in self.records.items():
            arrays = {key: _host(parts) for key, parts in record.values.items()}
            arrays["deletion_curve"] = _host(record.deletion)
            arrays["insertion_curve"] = _host(record.insertion)
            arrays["nonfinite"] = _host(record.nonfinite).astype(bool)
            result[name] = arrays
        return result


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _host(parts: list[Tensor]) -> np.ndarray:
    return torch.cat(parts).cpu().numpy() if parts else np.zeros(0)
