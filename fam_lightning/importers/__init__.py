"""Readers of published contrastive checkpoints (lemniscate.pytorch NPID, facebookresearch/moco v1 / v2).

Each reads a file in its project's exact layout into an :class:`ImportedModel` (plain tensors under our
names). Readers never import a model: :func:`fam_lightning.models.published.import_into` loads what they
read into a :class:`~fam_lightning.models.MemoryBankModel`, which is how
``--model.init_args.import_checkpoint <file>`` works::

    python train.py validate --config configs/contrastive/npid_resnet50_import.yaml \\
        --model.init_args.import_checkpoint lemniscate_resnet50.pth.tar --data.root /data/imagenet
"""

from __future__ import annotations

from pathlib import Path

from fam_lightning.importers.common import ImportedModel
from fam_lightning.importers.moco import read_moco
from fam_lightning.importers.npid import is_lemniscate_checkpoint, read_npid
from fam_lightning.importers.safe_load import PublishedCheckpointError, load_published_file

__all__ = ["ImportedModel", "PublishedCheckpointError", "read_moco", "read_npid", "read_published_checkpoint"]


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
