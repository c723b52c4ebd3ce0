"""The localisation and faithfulness metrics of every explainer, as one object: :class:`ExplanationMetrics`.

What :class:`fam_lightning.callbacks.FAMCallback` logs at every validation / test (and so what ``fam-evaluate``
writes into its tables) is ``ExplanationMetrics.compute(stage)`` after one ``update(inputs, maps, model)`` per
batch of decisions:

- ``<stage>/<explainer>_energy_pointing_game``, ``_iou`` (percent; eq. 19, 20): annotated images only;
- ``<stage>/<explainer>_average_drop``, ``_increase_in_confidence`` (percent; eq. 21, 22): ``Y`` is the
  decision's score from the step's embeddings, ``O`` the score of the image times its map (one forward pass,
  :func:`faithfulness_scores`);
- ``<stage>/<explainer>_deletion_auc``, ``_insertion_auc`` (optional, raw AUCs);
- ``<stage>/fam_energy_uniform_baseline``: what a uniform map scores on the same images (chance level).

Decisions are the correct ones only (``decisions="correct"``, as in the paper) or all of them (``"all"``: the
untrained model's class-agnostic baseline). A metric that scored no decision gives no value (never a made-up 0);
a NaN score makes its metric NaN. Every value is reduced across DDP ranks by torchmetrics; ``compute`` is a
collective (every rank takes the same branches).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Union

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from fam_lightning.metrics.deletion_insertion import DeletionAUC, InsertionAUC, deletion_insertion_auc
from fam_lightning.metrics.faithfulness import AverageDrop, IncreaseInConfidence
from fam_lightning.metrics.localization import EnergyPointingGame, LocalizationIoU
from fam_lightning.protocol import ExplanationInputs, SimilarityModel
from fam_lightning.similarity import mean_similarity

LOCALIZATION = ("energy_pointing_game", "iou")
FAITHFULNESS = ("average_drop", "increase_in_confidence")
AUC = ("deletion_auc", "insertion_auc")
KINDS = (*LOCALIZATION, *FAITHFULNESS, *AUC)
UNIFORM = "fam_energy_uniform_baseline"

# maps of every decision in the inputs, by explainer; or a function (inputs, explainer) -> maps of those inputs
Maps = Union[Mapping[str, Tensor], Callable[[ExplanationInputs, str], Tensor]]


class ExplanationMetrics(nn.Module):
    """Localisation + faithfulness metrics per explainer, updated from a step's decisions.

    Args:
        explainers: explainer names (each gets ``<stage>/<name>_<metric>``).
        localization: energy pointing game and IoU (needs boxes).
        faithfulness: Average Drop and Increase in Confidence (one forward pass of the masked images per batch
            and explainer).
        deletion_insertion: deletion / insertion AUC (``2 * deletion_steps`` forward passes per batch and explainer).
        kinds: the metrics to hold, a subset of :data:`KINDS` (default: what the three switches enable).
        decisions: "correct" (the paper's protocol) or "all".
        uniform_baseline: also score a uniform map (``<stage>/fam_energy_uniform_baseline``).
        iou_threshold: binarisation threshold of the IoU.
        ic_rtol: relative tolerance of Increase in Confidence; None: :func:`round_off_rtol` of the embeddings' dtype.
        deletion_steps: resolution of the deletion / insertion curves.
    """

    def __init__(
        self,
        explainers: Sequence[str],
        localization: bool = True,
        faithfulness: bool = True,
        deletion_insertion: bool = False,
        kinds: Sequence[str] | None = None,
        decisions: str = "correct",
        uniform_baseline: bool = True,
        iou_threshold: float = 0.2,
        ic_rtol: float | None = None,
        deletion_steps: int = 20,
    ) -> None:
        super().__init__()
        if kinds is None:
            kinds = (LOCALIZATION if localization else ()) + (FAITHFULNESS if faithfulness else ()) + (
                AUC if deletion_insertion else ())
        unknown = [kind for kind in kinds if kind not in KINDS]
        if unknown:
            raise ValueError(f"unknown metric {', '.join(map(repr, unknown))}; available: {', '.join(KINDS)}")
        if decisions not in ("correct", "all"):
            raise ValueError(f"decisions must be 'correct' or 'all', got {decisions!r}")
        if not explainers:
            raise ValueError("ExplanationMetrics needs at least one explainer name")
        self.explainer_names = list(explainers)
        self.kinds = tuple(kinds)
        self.decisions = decisions
        self.ic_rtol = ic_rtol
        self.deletion_steps = deletion_steps
        self.metrics = nn.ModuleDict({name: _metric_set(self.kinds, iou_threshold) for name in self.explainer_names})
        localizes = any(kind in LOCALIZATION for kind in self.kinds)
        # a uniform map's energy is the box-area fraction: the chance level a map must beat
        self.uniform_energy = EnergyPointingGame() if uniform_baseline and localizes else None

    def __getitem__(self, explainer: str) -> nn.ModuleDict:
        """The metrics of one explainer, by kind (``metrics["fam"]["iou"]``)."""
        return self.metrics[explainer]

    def _all(self) -> list[Metric]:
        extra = [self.uniform_energy] if self.uniform_energy is not None else []
        return [*extra, *(metric for group in self.metrics.values() for metric in group.values())]

    def reset(self) -> None:
        for metric in self._all():
            metric.reset()

    @property
    def update_called(self) -> bool:
        """Whether any metric was updated (on this rank) since the last reset."""
        return any(metric.update_called for metric in self._all())

    def update(self, inputs: ExplanationInputs, maps: Maps, model: SimilarityModel) -> None:
        """One batch of decisions. ``maps``: each explainer's (B, H, W) maps of every decision in ``inputs``, or a
        function ``(inputs, explainer) -> maps`` called with the decisions that are scored (the correct ones only:
        no map is computed for the others)."""
        keep = None
        if self.decisions == "correct":
            keep = inputs.correct.nonzero().squeeze(1)  # one index sync per batch
            if keep.numel() == 0:
                return
            inputs = select(inputs, keep)
        boxed, boxes = annotated(inputs.boxes)
        localize = boxes is not None
        if localize and self.uniform_energy is not None:
            size = tuple(inputs.images.shape[-2:])
            self.uniform_energy.update(inputs.images.new_ones((len(boxes), *size)), boxes)
        for name, metrics in self.metrics.items():
            if callable(maps):
                explained = maps(inputs, name)
            else:
                explained = maps[name] if keep is None else maps[name][keep]
            if localize:
                shown = explained if boxed is None else explained[boxed]
                for kind in LOCALIZATION:
                    if kind in metrics:
                        metrics[kind].update(shown, boxes)
            if "average_drop" in metrics or "increase_in_confidence" in metrics:
                y, o = faithfulness_scores(model, inputs, explained)
                if "average_drop" in metrics:
                    metrics["average_drop"].update(y, o)
                if "increase_in_confidence" in metrics:
                    rtol = self.ic_rtol if self.ic_rtol is not None else round_off_rtol(inputs.embeddings.dtype)
                    metrics["increase_in_confidence"].rtol = rtol
                    metrics["increase_in_confidence"].update(y, o)
            if "deletion_auc" in metrics or "insertion_auc" in metrics:
                deletion, insertion = deletion_insertion_auc(
                    model, inputs.images, explained, inputs.references, inputs.reference_weights,
                    steps=self.deletion_steps,
                )
                for kind, auc in (("deletion_auc", deletion), ("insertion_auc", insertion)):
                    if kind in metrics:
                        metrics[kind].update(auc)

    def compute(self, stage: str) -> dict[str, Tensor]:
        """``{<stage>/<explainer>_<metric>: value}`` of every metric that scored a decision (percent, AUCs raw)."""
        values: dict[str, Tensor] = {}
        if self.uniform_energy is not None and self.uniform_energy.scored():
            values[f"{stage}/{UNIFORM}"] = 100.0 * self.uniform_energy.compute()
        for explainer, metrics in self.metrics.items():
            for kind, metric in metrics.items():
                if not metric.scored():
                    continue  # no decision to score (e.g. none right yet): no value, rather than a made-up 0
                value = metric.compute()
                if kind in LOCALIZATION:
                    value = 100.0 * value
                elif kind in AUC:  # a NaN AUC (NaN map or score) is never averaged away
                    value = torch.where(metric.any_nan(), torch.full_like(value, float("nan")), value)
                values[f"{stage}/{explainer}_{kind}"] = value
        return values


def _metric_set(kinds: Sequence[str], iou_threshold: float) -> nn.ModuleDict:
    make = {
        "energy_pointing_game": EnergyPointingGame,
        "iou": lambda: LocalizationIoU(threshold=iou_threshold),
        "average_drop": AverageDrop,
        "increase_in_confidence": IncreaseInConfidence,
        "deletion_auc": DeletionAUC,
        "insertion_auc": InsertionAUC,
    }
    return nn.ModuleDict({kind: make[kind]() for kind in KINDS if kind in kinds})


def faithfulness_scores(model: SimilarityModel, inputs: ExplanationInputs, maps: Tensor) -> tuple[Tensor, Tensor]:
    """Y: the decision score the step computed; O: the same for image x map (normalised input space).

    Y comes from the step's embeddings (no backbone pass); O from one forward pass of the masked images. In eval
    mode a sample's score does not depend on its batch up to float round-off (batchnorm uses running statistics),
    which Increase in Confidence absorbs with its ``rtol``. Both in float32 (bf16 embeddings are widened exactly).
    """
    kind = model.similarity
    references = inputs.references.float()
    weights = None if inputs.reference_weights is None else inputs.reference_weights.float()
    masked = inputs.images * maps.unsqueeze(1).to(inputs.images.dtype)
    perturbed = model.embed(model.forward_features(masked))
    y = mean_similarity(inputs.embeddings.float(), references, kind, weights)
    o = mean_similarity(perturbed.float(), references, kind, weights)
    return y, o


def round_off_rtol(dtype: torch.dtype) -> float:
    """Increase-in-Confidence tolerance for scores from two passes: above round-off of ``dtype``."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else 0.0
    return max(1e-4, 2 * eps)


def annotated(boxes: Tensor | list[Tensor] | None) -> tuple[Tensor | None, Tensor | list[Tensor] | None]:
    """Localisation uses annotated images only: (rows to keep or None for all, their boxes).

    Box lists are host metadata (an image without a VOC file has a (0, 4) entry), so this needs no device sync.
    """
    if not isinstance(boxes, list):
        return None, boxes
    rows = [i for i, b in enumerate(boxes) if b.shape[0] > 0]
    if len(rows) == len(boxes):
        return None, boxes
    if not rows:
        return None, None
    return torch.tensor(rows, device=boxes[rows[0]].device), [boxes[i] for i in rows]


def select(inputs: ExplanationInputs, index: Tensor, host_index: list[int] | None = None) -> ExplanationInputs:
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
