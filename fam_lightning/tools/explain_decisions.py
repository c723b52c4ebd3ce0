"""fam-explain's decisions, per family: what each image is explained against, and the words for it.

- ``references``: the few-shot decision against the user's support images of one class;
- ``model``: a memory-bank model's own weighted kNN vote, or a retrieval model's top-1 gallery image
  (both need the checkpoint's data module);
- ``none``: reference-free maps of the embedding itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fam_lightning.datamodules.formats.cub import display_class_name
from fam_lightning.similarity import mean_similarity
from fam_lightning.tools.common import model_family
from fam_lightning.tools.explain_figure import MAX_REFERENCES_SHOWN
from fam_lightning.tools.explain_photo import Photo
from fam_lightning.visualize import IMAGENET_MEAN, IMAGENET_STD, denormalize

DECISIONS = ("auto", "references", "model", "none")
NEEDS_DATA = (
    "the model's own decision needs its data module (the memory bank's labels and images, or the gallery): "
    "pass --data.root <the checkpoint's data>, or --references / --decision none"
)


@dataclass
class Decision:
    """What each image is explained against, and how the figure words it.

    Attributes:
        references: (B, N, D) embeddings, or None (reference-free maps).
        weights: optional (B, N) weights of the references (kNN votes).
        lines: per image, the decision in words.
        reference_panels: per image, the reference images shown ``(label, (3, h, w) in [0, 1])``.
    """

    references: Tensor | None
    weights: Tensor | None
    lines: list[list[str]]
    reference_panels: list[list[tuple[str, Tensor]]] = field(default_factory=list)


def reference_decision(
    model: Any, embeddings: Tensor, refs: Sequence[Photo], class_name: str | None = None
) -> Decision:
    """The few-shot decision: each image's mean similarity to the references, one class's support set."""
    device = embeddings.device
    with torch.no_grad():
        support = model.embed(model.forward_features(torch.stack([r.model_input for r in refs]).to(device)))
        references = support.unsqueeze(0).expand(embeddings.shape[0], -1, -1)  # (B, N, D): one class
        scores = mean_similarity(embeddings, references, model.similarity).float().cpu()
    count = len(refs)
    of_class = f"the {count} support image{'s' if count != 1 else ''} of class {class_name!r}" if class_name else (
        f"{count} reference image{'s' if count != 1 else ''} (one class's supports)"
    )
    family = model_family(model)
    note = {
        "memory bank": "(the user's references: this model itself decides by a kNN vote over its memory bank; "
                       "run without --references to explain that)",
        "retrieval": "(the user's references: this model itself retrieves its top-1 gallery image; "
                     "run without --references to explain that)",
    }.get(family)
    lines = []
    for score in scores.tolist():
        text = [f"decision score {score:.4f} = mean {model.similarity} similarity to {of_class}"]
        lines.append(text + ([note] if note else []))
    panels = [(f"support {i + 1}: {r.path.name}", r.pixels) for i, r in enumerate(refs)]
    return Decision(references, None, lines, [panels] * embeddings.shape[0])


def knn_decision(model: Any, datamodule: Any, embeddings: Tensor) -> Decision:
    """A memory-bank model's own decision: its weighted kNN vote over the bank; the strongest voters shown."""
    model.attach_datamodule(datamodule)
    model.on_validation_epoch_start()  # the model's own kNN index over its bank (labels from the data module)
    with torch.no_grad():
        scores, rows, votes = model.knn(embeddings)  # (B, C), (B, K), (B, K)
    predicted = scores.argmax(1)
    weights = votes * (model.bank.labels[rows] == predicted.unsqueeze(1))  # the voters for the predicted class
    names = class_names(datamodule, "train")
    k = rows.shape[1]
    temperature = model.hparams.get("knn_temperature")
    lines, panels = [], []
    for i in range(embeddings.shape[0]):
        label = int(predicted[i])
        share = float(scores[i, label] / scores[i].sum().clamp_min(1e-12))
        voters = int((weights[i] > 0).sum())
        lines.append([
            f"decision: class {_class(names, label)} by a weighted kNN vote of the {k} nearest memory-bank "
            f"images (T = {temperature}): {share:.0%} of the vote, {voters} of the {k} neighbours in the class",
            "maps: the similarity to those neighbours, weighted by their votes",
        ])
        strongest = weights[i].argsort(descending=True)[:MAX_REFERENCES_SHOWN]
        strongest = strongest[weights[i, strongest] > 0]
        images = _shown(datamodule, datamodule.train_images(rows[i, strongest].cpu())) if len(strongest) else []
        panels.append([
            (f"vote {float(weights[i, j]):.3g}", image) for j, image in zip(strongest.tolist(), images)
        ])
    references = model.bank.bank[rows].to(embeddings.dtype)
    return Decision(references, weights.to(embeddings.dtype), lines, panels)


def retrieval_decision(model: Any, datamodule: Any, embeddings: Tensor) -> Decision:
    """A retrieval model's own decision: its top-1 image of the data module's evaluation gallery."""
    datamodule.setup("validate")
    loaders = datamodule.val_dataloader()
    gallery_loader = loaders[0] if isinstance(loaders, Sequence) else loaders
    gallery, labels, indices = [], [], []
    with torch.no_grad():
        for batch in gallery_loader:
            gallery.append(model.embed(model.forward_features(batch["image"].to(embeddings.device))))
            labels.append(batch["label"])
            indices.append(batch["index"])
    gallery_t, labels_t, indices_t = torch.cat(gallery), torch.cat(labels), torch.cat(indices)
    cosine = F.normalize(embeddings.float(), dim=1) @ F.normalize(gallery_t.float(), dim=1).T  # (B, G)
    best, top1 = cosine.max(1)
    names = class_names(datamodule, "test")
    images = _shown(datamodule, datamodule.images_at(indices_t[top1.cpu()]))
    lines, panels = [], []
    for i in range(embeddings.shape[0]):
        label = int(labels_t[top1[i]])
        lines.append([
            f"decision: retrieves gallery image {int(indices_t[top1[i]])} of class {_class(names, label)}, "
            f"the top-1 of {len(gallery_t)} (cosine {float(best[i]):.4f})",
            "maps: the similarity to that image's embedding",
        ])
        panels.append([(f"top-1: {_class(names, label)}", images[i])])
    return Decision(gallery_t[top1].unsqueeze(1), None, lines, panels)


def no_decision(model: Any, count: int) -> Decision:
    family = model_family(model)
    how = {
        "few-shot": "few-shot models decide by the mean similarity to a class's supports: pass --references",
        "memory bank": "this model decides by a kNN vote over its memory bank: --decision model explains it",
        "retrieval": "this model retrieves its top-1 gallery image: --decision model explains it",
    }.get(family, "pass --references to explain a similarity decision")
    return Decision(None, None, [["no decision: reference-free maps of the embedding itself", f"({how})"]] * count)


def class_names(datamodule: Any, split: str) -> list[str] | None:
    """Display names of a data module's classes in label order, where it has them."""
    candidates = []
    for getter in (
        lambda: datamodule.split_index(split).class_names,  # ImageNet layout (contrastive)
        lambda: datamodule._split(split).dataset.classes,  # CUB retrieval
        lambda: datamodule._image_set(split).classes,  # CUB few-shot
        lambda: datamodule.class_names,
        lambda: datamodule.classes,
    ):
        try:
            candidates = list(getter())
        except Exception:  # the attribute path does not exist for this data module
            continue
        if candidates and all(isinstance(name, str) for name in candidates):
            return [display_class_name(name) for name in candidates]
    return None


def _class(names: list[str] | None, label: int) -> str:
    return f"{names[label]!r}" if names and 0 <= label < len(names) else str(label)


def _shown(datamodule: Any, images: Tensor) -> list[Tensor]:
    """A data module's normalised images -> [0, 1] pixels for the figure."""
    mean = getattr(datamodule, "mean", IMAGENET_MEAN)
    std = getattr(datamodule, "std", IMAGENET_STD)
    return list(denormalize(images.float().cpu(), mean, std))


def choose_decision(decision: str, model: Any, has_references: bool) -> str:
    """``auto`` -> the decision explained: references, the model's own (memory bank / retrieval), or none."""
    if decision != "auto":
        return decision
    if has_references:
        return "references"
    return "model" if model_family(model) in ("memory bank", "retrieval") else "none"


def make_decision(
    kind: str, model: Any, embeddings: Tensor, refs: Sequence[Photo], datamodule: Any = None,
    class_name: str | None = None,
) -> Decision:
    if kind == "references":
        return reference_decision(model, embeddings, refs, class_name)
    if kind == "none":
        return no_decision(model, embeddings.shape[0])
    family = model_family(model)
    decide = {"memory bank": knn_decision, "retrieval": retrieval_decision}.get(family)
    if decide is not None:
        try:
            return decide(model, datamodule, embeddings)
        except FileNotFoundError as err:  # the data is read when first needed
            raise ValueError(f"{err}; {NEEDS_DATA}") from err
    raise ValueError(
        f"--decision model: a {family or type(model).__name__} model has no decision of its own on a single "
        "image (few-shot models compare with a class's supports): pass --references"
    )
