"""lemniscate.pytorch NPID checkpoints (Wu et al. 2018, github.com/zhirongw/lemniscate.pytorch).

``main.py`` saves ``{'epoch', 'arch', 'state_dict', 'lemniscate', 'best_prec1',
'optimizer'}``: ``state_dict`` is the DataParallel-wrapped ResNet (keys
``module.conv1.weight`` ...) whose ``fc`` is Linear(512 x expansion, 128)
followed by an L2 norm; ``lemniscate`` is the pickled ``NCEAverage`` (or
``LinearAverage``) module itself, whose ``memory`` buffer (N x 128, one row
per training image in ImageFolder order) is the kNN bank, and whose
``params`` buffer holds (K, T, Z, momentum).

Unpickling that module object needs its classes (``lib.NCEAverage``,
``lib.alias_multinomial``) and ``torch.load(weights_only=False)``, which
runs whatever the file's pickle names: **load only files you trust.** Here
every lemniscate class resolves to an inert stand-in that only keeps its
pickled state (no lemniscate code is imported or run), and this is the only
place in fam-lightning that loads with ``weights_only=False``.
"""

from __future__ import annotations

import logging
import pickle
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fam_lightning.backbones.weights import strip_prefix, unwrap_state_dict
from fam_lightning.importers.common import ImportedModel, split_resnet_encoder

log = logging.getLogger(__name__)

NPID_KEYS = ("state_dict", "lemniscate")
# Modules of lemniscate's own classes (Python 2 pickles name alias_multinomial without lib.).
LEMNISCATE_MODULES = ("lib", "alias_multinomial", "NCEAverage", "LinearAverage")


class PickledStandIn:
    """Stand-in for a lemniscate class during unpickling: keeps the pickled state, runs no code."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = state[0] or {}
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})

    def __call__(self, *args: Any, **kwargs: Any) -> None:  # e.g. an old torch backend function
        return None


def _is_lemniscate(module: str) -> bool:
    return module.split(".", 1)[0] in LEMNISCATE_MODULES or module.startswith("torch.nn.backends")


class _StandInUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if _is_lemniscate(module):
            return type(name, (PickledStandIn,), {"__module__": module})
        return super().find_class(module, name)


# torch.load(pickle_module=...) wants a module with Unpickler and load
_stand_in_pickle = types.ModuleType("fam_lightning_npid_pickle")
_stand_in_pickle.Unpickler = _StandInUnpickler  # type: ignore[attr-defined]
_stand_in_pickle.load = lambda file, **kwargs: _StandInUnpickler(file, **kwargs).load()  # type: ignore[attr-defined]


def load_lemniscate_file(path: str | Path) -> dict[str, Any]:
    """``torch.load`` of a lemniscate checkpoint with stand-ins for its classes (``weights_only=False``)."""
    log.warning(
        "loading %s with torch.load(weights_only=False) to unpickle lemniscate's NCEAverage "
        "(stand-in classes, no lemniscate code): load only checkpoint files you trust", path,
    )
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_stand_in_pickle)
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in NPID_KEYS):
        found = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path} is not a lemniscate.pytorch checkpoint: expected keys {NPID_KEYS}, found {found}")
    return checkpoint


def _buffer(obj: Any, name: str) -> Tensor | None:
    """A registered buffer of an unpickled module (stand-in or real)."""
    buffers = getattr(obj, "_buffers", None) or getattr(obj, "__dict__", {}).get("_buffers") or {}
    value = buffers.get(name)
    return value if isinstance(value, Tensor) else None


def read_npid(path: str | Path, checkpoint: dict[str, Any] | None = None) -> ImportedModel:
    """Read a lemniscate.pytorch checkpoint into an :class:`ImportedModel` (its memory as the bank)."""
    source = str(path)
    checkpoint = load_lemniscate_file(path) if checkpoint is None else checkpoint
    state = strip_prefix(unwrap_state_dict(checkpoint["state_dict"], source), "module.")
    arch, head, backbone, projection = split_resnet_encoder(state, source)
    named = str(checkpoint.get("arch", arch))
    if named != arch:
        raise ValueError(f"{source}: 'arch' says {named!r} but the weights are a {arch}")
    if head != "linear":
        raise ValueError(f"{source}: NPID has a linear fc head, found an MLP (fc.0 / fc.2)")
    memory = _buffer(checkpoint["lemniscate"], "memory")
    if memory is None or memory.dim() != 2:
        raise ValueError(f"{source}: 'lemniscate' has no (N, D) memory buffer (a pickled NCEAverage / LinearAverage)")
    dim = projection["weight"].shape[0]
    if memory.shape[1] != dim:
        raise ValueError(f"{source}: memory rows have {memory.shape[1]} dims but fc outputs {dim}")
    extras: dict[str, object] = {"epoch": checkpoint.get("epoch"), "best_prec1": checkpoint.get("best_prec1")}
    params = _buffer(checkpoint["lemniscate"], "params")
    if params is not None and params.numel() == 4:  # NCEAverage: (K, T, Z, momentum)
        extras.update(nce_k=int(params[0]), temperature=float(params[1]), nce_z=float(params[2]),
                      bank_momentum=float(params[3]))
    return ImportedModel(
        source="npid", path=source, arch=arch, head=head, embedding_dim=dim, backbone=backbone,
        projection=projection, bank=F.normalize(memory.float(), dim=1), extras=extras,
    )
