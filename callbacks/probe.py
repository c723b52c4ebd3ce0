"""The probe decisions :class:`fam_lightning.callbacks.FAMCallback` draws at every validation, and what the trainer
tells the drawing (class names, normalisation); the drawing itself is :func:`fam_lightning.visualize.decision_grid`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor

from fam_lightning.metrics.explanation import select
from fam_lightning.protocol import ExplanationInputs
from fam_lightning.similarity import mean_similarity
from fam_lightning.visualize import IMAGENET_MEAN, IMAGENET_STD, decision_grid, vote_shares


def probe_batch(trainer: L.Trainer, stage: str) -> Any:
    """The data module's fixed probe batch (``probe_batch()`` / ``probe_episode()``), else the first ``stage`` batch."""
    datamodule = trainer.datamodule
    if datamodule is not None and hasattr(datamodule, "probe_batch"):
        return datamodule.probe_batch()
    if datamodule is not None and hasattr(datamodule, "probe_episode"):
        return datamodule.probe_episode()
    loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    return next(iter(loader))


def probe_rows(inputs: ExplanationInputs, count: int) -> ExplanationInputs:
    """``count`` decisions spread evenly over the batch (host-side indices: selecting list boxes needs no sync)."""
    count = min(count, inputs.images.shape[0])
    rows = torch.linspace(0, inputs.images.shape[0] - 1, count).long()
    return select(inputs, rows.to(inputs.images.device), rows.tolist())


def decision_scores(inputs: ExplanationInputs, similarity: str) -> Tensor:
    """(B,) each decision's (weighted) mean similarity to its references, in float32."""
    weights = None if inputs.reference_weights is None else inputs.reference_weights.float()
    return mean_similarity(inputs.embeddings.float(), inputs.references.float(), similarity, weights)


def probe_decisions(
    pl_module: Any, batch: Any, count: int, explain: Callable[[ExplanationInputs, str], Tensor],
    explainers: list[str],
) -> tuple[ExplanationInputs, dict[str, Tensor], Tensor | None, Tensor]:
    """(the ``count`` probe decisions, their maps by explainer, the first reference's map against the image when
    the model gives the reference's feature maps (retrieval), the decisions' scores). Call in eval / inference mode."""
    inputs = probe_rows(pl_module.explanation_inputs(batch), count)
    maps = {name: explain(inputs, name) for name in explainers}
    reference_maps = None
    if inputs.reference_feature_maps is not None:
        reference_maps = explain(
            ExplanationInputs(inputs.reference_images, inputs.reference_feature_maps, inputs.embeddings,
                              inputs.embeddings.unsqueeze(1), inputs.correct), explainers[0],
        )
    return inputs, maps, reference_maps, decision_scores(inputs, pl_module.similarity)


def normalization(trainer: L.Trainer) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the data module's images (ImageNet's when it does not say)."""
    datamodule = trainer.datamodule
    mean = tuple(getattr(datamodule, "mean", IMAGENET_MEAN))
    std = tuple(getattr(datamodule, "std", IMAGENET_STD))
    return mean, std


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


def grid_of(
    trainer: L.Trainer, stage: str, inputs: ExplanationInputs, maps: Mapping[str, Tensor],
    reference_maps: Tensor | None, scores: Tensor, tile_size: int, alpha: float,
) -> Tensor:
    """The probe decisions drawn by :func:`decision_grid`, with the trainer's class names and normalisation."""
    votes = None
    references = inputs.reference_images
    if inputs.reference_weights is not None and references is not None and references.dim() == 5:
        votes = vote_shares(inputs.reference_weights, references.shape[1])
    mean, std = normalization(trainer)
    return decision_grid(
        inputs.images, maps, inputs.correct, scores, boxes=inputs.boxes, reference_images=references,
        reference_maps=reference_maps, labels=inputs.labels, predictions=inputs.predictions, votes=votes,
        class_names=class_names(trainer, stage), mean=mean, std=std, tile_size=tile_size, alpha=alpha,
    )
