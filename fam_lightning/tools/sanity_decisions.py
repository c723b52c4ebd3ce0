"""The decisions ``fam-sanity`` holds fixed: the trained model's own, from its validation steps' explanation inputs.

Every family's ``validation_step`` returns ``{"explain": ExplanationInputs}`` for the batches it decides on (and
None for the others, e.g. a retrieval model's gallery pass). Those inputs are the decisions: the images, the
reference embeddings each was compared with and their weights (kNN votes). What the inputs do not carry is the
image behind every reference, which a randomised model needs to embed its own references; that is the one thing
asked per family (:data:`REFERENCE_IMAGES`):

- few-shot: the support images of the predicted class (the batch's ``support`` rows of that class);
- memory bank: the training images of the bank entries that vote for the predicted class, strongest first;
- retrieval: the top-1 gallery image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import move_data_to_device
from torch import Tensor

from fam_lightning.callbacks.step0 import muted_logging
from fam_lightning.models import FewShotClassifier, MemoryBankModel, RetrievalModel
from fam_lightning.protocol import ExplanationInputs


@dataclass
class Decisions:
    """A batch of the trained model's decisions, held fixed while its weights change.

    Attributes:
        images: (B, 3, H, W) the images whose decisions are explained.
        references: (B, N, D) the embeddings the trained model compared them with.
        reference_images: (R, 3, H, W) every image behind those references.
        reference_rows: (B, N) long, the row of ``reference_images`` behind each reference.
        reference_weights: optional (B, N) weights of the references (kNN votes).
    """

    images: Tensor
    references: Tensor
    reference_images: Tensor
    reference_rows: Tensor
    reference_weights: Tensor | None = None


def fewshot_references(model: Any, datamodule: Any, batch: dict, inputs: ExplanationInputs) -> Decisions:
    """The support images of the predicted class (``support_class`` rows equal to the prediction), in order."""
    if inputs.predictions is None:
        raise ValueError("the few-shot episodes carry no support_class: the sanity check cannot tell which support "
                         "images a decision was made against")
    support_class = batch["support_class"].reshape(-1)
    matches = support_class.unsqueeze(0) == inputs.predictions.unsqueeze(1)  # (Q, W*S)
    shots = inputs.references.shape[1]
    rows = matches.nonzero()[:, 1].view(-1, shots)  # way-major supports: predicted * shots + arange(shots)
    return Decisions(inputs.images, inputs.references, batch["support"].flatten(0, -4), rows)


def memory_bank_references(model: Any, datamodule: Any, batch: dict, inputs: ExplanationInputs) -> Decisions:
    """The bank entries that vote for the predicted class (the others weigh 0), strongest first, and their images."""
    if not hasattr(datamodule, "train_images"):
        raise TypeError(f"{type(datamodule).__name__} has no train_images(indices): the kNN neighbours' images")
    _, rows, _ = model.knn(inputs.embeddings)  # (B, K) bank rows = training image indices
    weights = inputs.reference_weights
    count = max(1, int((weights > 0).sum(1).max()))
    order = weights.argsort(dim=1, descending=True)[:, :count]
    rows, weights = rows.gather(1, order), weights.gather(1, order)
    used = rows[weights > 0].unique()  # sorted
    return Decisions(
        images=inputs.images,
        references=inputs.references.gather(1, order.unsqueeze(2).expand(-1, -1, inputs.references.shape[2])),
        reference_images=datamodule.train_images(used.cpu()).to(model.device),
        reference_rows=torch.searchsorted(used, rows).clamp_max(used.numel() - 1),  # weight-0 rows: any
        reference_weights=weights,
    )


class _Gallery:
    """The data set index of each gallery row, in the order the retrieval model stores them (its gallery pass)."""

    def __init__(self) -> None:
        self.parts: list[Tensor] = []

    def __call__(self, model: Any, datamodule: Any, batch: dict, inputs: ExplanationInputs) -> Decisions:
        top1 = model.top1(F.normalize(inputs.embeddings, dim=1), batch["index"])  # (B,) gallery rows
        indices = torch.cat(self.parts)
        return Decisions(
            images=inputs.images,
            references=inputs.references,  # (B, 1, D)
            reference_images=datamodule.images_at(indices[top1].cpu()).to(model.device),
            reference_rows=torch.arange(top1.numel(), device=top1.device).unsqueeze(1),
        )


ReferenceImages = Callable[[Any, Any, dict, ExplanationInputs], Decisions]
REFERENCE_IMAGES: dict[type, Callable[[], ReferenceImages]] = {
    FewShotClassifier: lambda: fewshot_references,
    MemoryBankModel: lambda: memory_bank_references,
    RetrievalModel: _Gallery,
}


def model_decisions(model: Any, datamodule: Any, batches: int) -> Iterable[Decisions]:
    """The first ``batches`` decided batches of the model's own validation (its eval preparation first)."""
    family = next((make for kind, make in REFERENCE_IMAGES.items() if isinstance(model, kind)), None)
    if family is None:
        known = ", ".join(kind.__name__ for kind in REFERENCE_IMAGES)
        raise TypeError(f"{type(model).__name__} is none of the families the sanity check knows: {known}")
    references = family()
    if hasattr(model, "attach_datamodule"):  # bank labels (an imported MoCo: its bank) from the data, as in fit
        model.attach_datamodule(datamodule)
    loaders = datamodule.val_dataloader()
    loaders = list(loaders) if isinstance(loaders, Sequence) else [loaders]
    taken = 0
    with muted_logging(model):
        model.on_validation_epoch_start()  # the model's own kNN index over its bank, its gallery
        for loader_idx, loader in enumerate(loaders):
            for batch_idx, batch in enumerate(loader):
                batch = move_data_to_device(batch, model.device)
                outputs = model.validation_step(batch, batch_idx, loader_idx) if len(loaders) > 1 else (
                    model.validation_step(batch, batch_idx))
                inputs = outputs.get("explain") if isinstance(outputs, dict) else None
                if inputs is None:  # a batch without decisions: the retrieval gallery
                    if isinstance(references, _Gallery):
                        references.parts.append(batch["index"])
                    continue
                yield references(model, datamodule, batch, inputs)
                taken += 1
                if taken >= batches:
                    return
