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
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fam_lightning.backbones.weights import load_into
from fam_lightning.importers.common import ImportedModel
from fam_lightning.importers.moco import read_moco
from fam_lightning.importers.npid import LEMNISCATE_MODULES, read_npid

if TYPE_CHECKING:
    from fam_lightning.models import MemoryBankModel

__all__ = ["ImportedModel", "import_into", "model_for", "read_moco", "read_npid", "read_published_checkpoint"]

log = logging.getLogger(__name__)


def read_published_checkpoint(path: str | Path) -> ImportedModel:
    """Detect the format of ``path`` (NPID or MoCo) and read it.

    The file is first opened with ``weights_only=True``; only when that fails on
    lemniscate's pickled classes is it reopened as an NPID checkpoint (see
    :mod:`fam_lightning.importers.npid` on ``weights_only=False``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"import_checkpoint {str(path)!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if any(name in str(error) for name in LEMNISCATE_MODULES):
            return read_npid(path)
        raise ValueError(
            f"{path} is neither a lemniscate.pytorch NPID nor a MoCo checkpoint; "
            f"weights_only loading failed: {str(error).splitlines()[0]}"
        ) from None
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
        raise ValueError(
            f"{path} is a {imported.source} {imported.arch} ({imported.head} head, {imported.embedding_dim}-d); "
            f"the model does not match it: set {' '.join(wrong)}"
        )
    name = f"{imported.source} checkpoint"
    load_into(model.backbone, imported.backbone, f"{name} backbone", str(path))
    load_into(model.projection, imported.projection, f"{name} head", str(path))
    if model.key_backbone is not None and imported.key_backbone is not None:
        load_into(model.key_backbone, imported.key_backbone, f"{name} key backbone", str(path))
        load_into(model.key_projection, imported.key_projection, f"{name} key head", str(path))
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
