"""Published NPID / MoCo weights into a :class:`MemoryBankModel`: the model side of the importers.

The readers (:mod:`fam_lightning.importers`) turn a published file into plain tensors
(:class:`~fam_lightning.importers.ImportedModel`) and know nothing of models; this module checks that a
model fits what was read and loads it (``--model.init_args.import_checkpoint``, ``fam-convert``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import Tensor, nn

from fam_lightning.backbones.weights import load_into
from fam_lightning.importers import ImportedModel, PublishedCheckpointError, read_published_checkpoint

__all__ = ["import_into"]

log = logging.getLogger(__name__)


def import_into(model: nn.Module, path: str | Path | ImportedModel) -> ImportedModel:
    """Load a published NPID / MoCo checkpoint (a file, or one already read) into ``model`` (a MemoryBankModel).

    The model must have the checkpoint's architecture (checked, each mismatch
    named with the option that fixes it). NPID's memory becomes the bank
    (labels come from the datamodule's ``train_labels``); MoCo has none, so the
    model's bank is marked unfilled and computed over the training set before
    the first evaluation. An NPID model with ``refresh_bank`` takes the memory as
    the loss's memory and computes its kNN bank likewise.
    """
    imported = path if isinstance(path, ImportedModel) else read_published_checkpoint(path)
    path = imported.path
    hp = model.hparams
    method = "npid" if imported.source == "npid" else "moco"
    wanted = {"method": method, "backbone": imported.arch, "head": imported.head,
              "embedding_dim": imported.embedding_dim, "backbone_slope": 0.0}
    wrong = [f"--model.init_args.{k} {v}" for k, v in wanted.items() if hp.get(k) != v]
    if wrong:
        raise PublishedCheckpointError(
            f"{path} is a {imported.source} {imported.arch} ({imported.head} head, {imported.embedding_dim}-d); "
            f"the model does not match it: set {' '.join(wrong)}"
        )
    name = f"{imported.source} checkpoint"
    parts = [(model.backbone, imported.backbone, "backbone"), (model._head(), imported.projection, "head")]
    if model.key_backbone is not None and imported.key_backbone is not None:
        parts += [(model.key_backbone, imported.key_backbone, "key backbone"),
                  (model.key_projection, imported.key_projection, "key head")]
    for module, state, part in parts:
        try:
            load_into(module, state, f"{name} {part}", str(path))
        except ValueError as error:  # missing keys / shapes (e.g. backbone_kwargs that change the ResNet)
            raise PublishedCheckpointError(str(error)) from None
    if model.queue is not None and imported.queue is not None:
        model.replace_queue(imported.queue, imported.queue_ptr)
    if imported.bank is not None:
        _take_memory(model, imported.bank, path)
        if imported.extras.get("nce_z", -1.0) > 0:
            model.nce_normalizer.fill_(imported.extras["nce_z"])
    else:
        model.bank_filled = False
    log.info("imported %s %s from %s (epoch %s)", imported.source, imported.arch, path, imported.extras.get("epoch"))
    return imported


def _take_memory(model: nn.Module, rows: Tensor, path: str | Path) -> None:
    """An imported NPID memory, (N, D) ``rows``: the kNN bank, or with ``refresh_bank`` the memory the loss reads.

    With ``refresh_bank`` the kNN bank is computed from the training images before the first evaluation, so
    training on from an imported file starts from its memory, not from a random one.
    """
    if not model.hparams.refresh_bank:
        model.replace_bank(rows)
        return
    model._build_bank(rows.shape[0])  # the kNN bank (and, with refresh_bank, the separate memory)
    if model.memory.size != rows.shape[0]:
        raise PublishedCheckpointError(
            f"{path}: the imported NPID memory has {rows.shape[0]} rows, one per training image, but "
            f"instances_per_image={model.hparams.instances_per_image} asks for {model.memory.size}; leave "
            "instances_per_image unset and local_crop_grid at 0"
        )
    model.memory.bank.copy_(rows)
    model.memory_imported = True
    model.bank_filled = False
