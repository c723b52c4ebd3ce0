"""lemniscate.pytorch NPID checkpoints (Wu et al. 2018, github.com/zhirongw/lemniscate.pytorch).

``main.py`` saves ``{'epoch', 'arch', 'state_dict', 'lemniscate', 'best_prec1',
'optimizer'}``: ``state_dict`` is the DataParallel-wrapped ResNet (keys
``module.conv1.weight`` ...) whose ``fc`` is Linear(512 x expansion, 128)
followed by an L2 norm; ``lemniscate`` is the pickled ``NCEAverage`` (or
``LinearAverage``) module itself, whose ``memory`` buffer (N x 128, one row
per training image in ImageFolder order) is the kNN bank, and whose
``params`` buffer holds (K, T, Z, momentum).

That module object is read by :func:`fam_lightning.importers.safe_load.load_published_file`:
torch's weights-only unpickler with lemniscate's three classes resolved to inert
stand-ins (no lemniscate code is imported or run) and no other global
resolvable, whatever the file names.

The memory rows are kept as saved: lemniscate's kNN (``test.py``) scores a
query by its dot product with the raw rows, so :class:`MemoryBankModel` does too
(rows training updated are unit vectors; only never-updated rows, still the
uniform initialisation, are not).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import Tensor

from fam_lightning.backbones.weights import strip_prefix, unwrap_state_dict
from fam_lightning.importers.common import ImportedModel, split_resnet_encoder
from fam_lightning.importers.safe_load import (
    ALLOWED_DESCRIPTION, LEMNISCATE_CLASSES, PublishedCheckpointError, is_stand_in, load_published_file,
)

log = logging.getLogger(__name__)

NPID_KEYS = ("state_dict", "lemniscate")


def is_lemniscate_checkpoint(checkpoint: Any) -> bool:
    """Whether a loaded file is lemniscate's: a dict whose 'lemniscate' is its pickled memory module."""
    return isinstance(checkpoint, dict) and is_stand_in(checkpoint.get("lemniscate"), LEMNISCATE_CLASSES)


def _buffer(obj: Any, name: str) -> Tensor | None:
    """A registered buffer of an unpickled module (stand-in or real)."""
    buffers = getattr(obj, "_buffers", None) or getattr(obj, "__dict__", {}).get("_buffers") or {}
    value = buffers.get(name)
    return value if isinstance(value, Tensor) else None


def read_npid(path: str | Path, checkpoint: dict[str, Any] | None = None) -> ImportedModel:
    """Read a lemniscate.pytorch checkpoint into an :class:`ImportedModel` (its memory as the bank)."""
    source = str(path)
    checkpoint = load_published_file(path) if checkpoint is None else checkpoint
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in NPID_KEYS):
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise PublishedCheckpointError(
            f"{source} is not a lemniscate.pytorch checkpoint: expected keys {NPID_KEYS}, found {found}"
        )
    if is_lemniscate_checkpoint(checkpoint):
        log.warning("%s holds lemniscate's pickled memory module; read with only %s resolvable", source,
                    ALLOWED_DESCRIPTION)
    state = strip_prefix(unwrap_state_dict(checkpoint["state_dict"], source), "module.")
    arch, head, backbone, projection = split_resnet_encoder(state, source)
    named = str(checkpoint.get("arch", arch))
    if named != arch:
        raise PublishedCheckpointError(f"{source}: 'arch' says {named!r} but the weights are a {arch}")
    if head != "linear":
        raise PublishedCheckpointError(f"{source}: NPID has a linear fc head, found an MLP (fc.0 / fc.2)")
    memory = _buffer(checkpoint["lemniscate"], "memory")
    if memory is None or memory.dim() != 2:
        raise PublishedCheckpointError(f"{source}: 'lemniscate' has no (N, D) memory buffer (a pickled NCEAverage / LinearAverage)")
    dim = projection["weight"].shape[0]
    if memory.shape[1] != dim:
        raise PublishedCheckpointError(f"{source}: memory rows have {memory.shape[1]} dims but fc outputs {dim}")
    extras: dict[str, object] = {"epoch": checkpoint.get("epoch"), "best_prec1": checkpoint.get("best_prec1")}
    params = _buffer(checkpoint["lemniscate"], "params")
    if params is not None and params.numel() == 4:  # NCEAverage: (K, T, Z, momentum)
        extras.update(nce_k=int(params[0]), temperature=float(params[1]), nce_z=float(params[2]),
                      bank_momentum=float(params[3]))
    return ImportedModel(
        source="npid", path=source, arch=arch, head=head, embedding_dim=dim, backbone=backbone,
        projection=projection, bank=memory.float(), extras=extras,
    )
