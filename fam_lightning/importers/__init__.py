"""Importers for published contrastive checkpoints (lemniscate.pytorch NPID, facebookresearch/moco v1 / v2).

Each reads a file in its project's exact layout into an :class:`ImportedModel`
under our names; :func:`import_into` loads it into a
:class:`~fam_lightning.models.MemoryBankModel`, which is how
``--model.init_args.import_checkpoint <file>`` works::

    python train.py validate --config configs/contrastive/npid_resnet50_import.yaml \\
        --model.init_args.import_checkpoint lemniscate_resnet50.pth.tar --data.root /data/imagenet
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from fam_lightning.backbones.weights import load_into
from fam_lightning.importers.common import ImportedModel
from fam_lightning.importers.moco import read_moco
from fam_lightning.importers.npid import is_lemniscate_checkpoint, read_npid
from fam_lightning.importers.safe_load import PublishedCheckpointError, load_published_file

if TYPE_CHECKING:
    from fam_lightning.models import MemoryBankModel

__all__ = [
    "ImportedModel", "PublishedCheckpointError", "import_into", "model_for", "read_moco", "read_npid",
    "read_published_checkpoint",
]

log = logging.getLogger(__name__)


def read_published_checkpoint(path: str | Path) -> ImportedModel:
    """Read ``path`` (an NPID or MoCo checkpoint, told apart by its content) into an :class:`ImportedModel`.

    The file is unpickled once, by :func:`~fam_lightning.importers.safe_load.load_published_file`
    (torch's weights-only unpickler; lemniscate's classes as inert stand-ins, no other global).

    Raises:
        PublishedCheckpointError: a missing or unreadable file, a refused global, or neither format.
    """
    checkpoint = load_published_file(path)
    if is_lemniscate_checkpoint(checkpoint):
        return read_npid(path, checkpoint)
    return read_moco(path, checkpoint)


def import_into(model: MemoryBankModel, path: str | Path | ImportedModel) -> ImportedModel:
    """Load a published NPID / MoCo checkpoint (a file, or one already read) into ``model``.

    The model must have the checkpoint's architecture (checked, each mismatch
    named with the option that fixes it). NPID's memory becomes the bank
    (labels come from the datamodule's ``train_labels``); MoCo has none, so the
    model's bank is marked unfilled and computed over the training set before
    the first evaluation.
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
    parts = [(model.backbone, imported.backbone, "backbone"), (model.projection, imported.projection, "head")]
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
        model.replace_bank(imported.bank)
        if imported.extras.get("nce_z", -1.0) > 0:
            model.nce_normalizer.fill_(imported.extras["nce_z"])
    else:
        model.bank_filled = False
    log.info("imported %s %s from %s (epoch %s)", imported.source, imported.arch, path, imported.extras.get("epoch"))
    return imported


def model_for(imported: ImportedModel, **kwargs: object) -> MemoryBankModel:
    """A :class:`~fam_lightning.models.MemoryBankModel` shaped like ``imported``, its weights loaded.

    Args:
        imported: a checkpoint read by :func:`read_published_checkpoint`.
        **kwargs: further model arguments (``bank_size``, ``knn_k``, ...).
    """
    from fam_lightning.models import MemoryBankModel

    model = MemoryBankModel(
        method="npid" if imported.source == "npid" else "moco", backbone=imported.arch, backbone_slope=0.0,
        head=imported.head, embedding_dim=imported.embedding_dim, **kwargs,
    )
    import_into(model, imported)
    return model
