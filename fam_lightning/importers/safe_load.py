"""Reading a published checkpoint file without running anything it names.

Every published file (MoCo, lemniscate.pytorch NPID) is unpickled by
:class:`RestrictedUnpickler`, whose ``find_class`` resolves a global only if
its exact ``module.name`` is one of:

- torch's weights-only set (what ``torch.load(weights_only=True)`` resolves:
  tensor / storage rebuild functions, storage types, dtypes, ``torch.Size``,
  ``torch.device``, ``collections.OrderedDict``, ``builtins.set`` ...);
- lemniscate's ``lib.NCEAverage.NCEAverage``, ``lib.LinearAverage.LinearAverage``
  and ``lib.alias_multinomial.AliasMethod`` (its pickled memory module) and
  ``argparse.Namespace`` (the ``args`` some training scripts save), each
  resolved to a :class:`PickledStandIn` subclass that only keeps its pickled
  attributes: no lemniscate or project code is imported or run;
- ``torch.nn.backends.thnn._get_thnn_function_backend``, torch's own no-op kept
  for PyTorch 0.4 modules (their ``_backend`` attribute).

Any other global, in any file, is refused before it is resolved (``find_class``
decides, never an error text), with a :class:`PublishedCheckpointError` naming
the file and the global. It runs through ``torch.load(pickle_module=...)``, so
zip files and legacy (PyTorch 0.4 style, ``_use_new_zipfile_serialization=False``)
files are read alike; torch's own weights-only unpickler cannot read the latter
when they hold an ``nn.Module`` (lemniscate's), hence this one.
"""

from __future__ import annotations

import _compat_pickle
import pickle
import types
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.backends.thnn
from torch._weights_only_unpickler import _get_allowed_globals
from torch.serialization import SourceChangeWarning

# lemniscate.pytorch's classes (lib/NCEAverage.py, lib/LinearAverage.py, lib/alias_multinomial.py)
LEMNISCATE_CLASSES = ("lib.NCEAverage.NCEAverage", "lib.LinearAverage.LinearAverage", "lib.alias_multinomial.AliasMethod")
NAMESPACE_CLASS = "argparse.Namespace"
THNN_BACKEND = "torch.nn.backends.thnn._get_thnn_function_backend"


class PublishedCheckpointError(ValueError):
    """A published (or converted) checkpoint that cannot be read or does not fit the model / data.

    Its message is one sentence for the user, naming the file; ``fam-train`` prints it and exits 2.
    """


class PickledStandIn:
    """Inert stand-in for a class named by a pickle: keeps the pickled attributes, runs no code."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})


def _stand_in(dotted: str) -> type[PickledStandIn]:
    module, _, name = dotted.rpartition(".")
    return type(name, (PickledStandIn,), {"__module__": module, "__qualname__": name})


STAND_INS: dict[str, type[PickledStandIn]] = {name: _stand_in(name) for name in (*LEMNISCATE_CLASSES, NAMESPACE_CLASS)}
ALLOWED_DESCRIPTION = (
    "tensors, storages, dtypes and plain containers (torch's weights-only set), "
    f"{', '.join(LEMNISCATE_CLASSES)} and {NAMESPACE_CLASS} as inert stand-ins that keep only their "
    f"pickled attributes, and torch's no-op {THNN_BACKEND}"
)


def allowed_globals() -> dict[str, Any]:
    """``module.name`` -> the object it resolves to; nothing else is ever resolved."""
    return {**_get_allowed_globals(), **STAND_INS, THNN_BACKEND: torch.nn.backends.thnn._get_thnn_function_backend}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a global outside :func:`allowed_globals` (``name``: its ``module.name``)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"global {name} is not allowed")
        self.name = name


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` resolves exactly :func:`allowed_globals`."""

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (torch.save's protocol 2 writes __builtin__.set), as pickle.Unpickler maps them
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        dotted = f"{module}.{name}"
        allowed = allowed_globals()
        if dotted not in allowed:
            raise RefusedGlobal(dotted)
        return allowed[dotted]


# torch.load(pickle_module=...) wants a module with Unpickler and load (the legacy format calls both)
restricted_pickle = types.ModuleType("fam_lightning_restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
restricted_pickle.load = lambda file, **kwargs: RestrictedUnpickler(file, **kwargs).load()  # type: ignore[attr-defined]


def is_stand_in(obj: object, dotted: str | tuple[str, ...]) -> bool:
    """Whether ``obj`` was unpickled as the stand-in of ``dotted`` (one class path or several)."""
    names = (dotted,) if isinstance(dotted, str) else dotted
    return isinstance(obj, tuple(STAND_INS[name] for name in names))


def load_published_file(path: str | Path) -> Any:
    """``torch.load`` of a published checkpoint with only :func:`allowed_globals` resolvable (on the CPU).

    Raises:
        PublishedCheckpointError: no such file, a refused global (named), or a file torch cannot read.
    """
    path = Path(path)
    if not path.is_file():
        raise PublishedCheckpointError(f"published checkpoint {str(path)!r} does not exist")
    try:
        with warnings.catch_warnings():
            # legacy files carry the source of pickled nn.Module classes; stand-ins have none to compare
            warnings.filterwarnings("ignore", message="Couldn't retrieve source code for container")
            warnings.simplefilter("ignore", SourceChangeWarning)
            # weights_only=False only lets torch take pickle_module; every global goes through find_class
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle)
    except RefusedGlobal as error:
        raise PublishedCheckpointError(
            f"{path} was not read: it names the global {error.name}, which is never unpickled here (only "
            f"{ALLOWED_DESCRIPTION} are); if you trust the file, load it yourself and save its tensors "
            "with torch.save"
        ) from None
    except Exception as error:  # not a torch file, truncated, the pre-0.4 tar format ...
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise PublishedCheckpointError(f"{path} is not a readable torch checkpoint: {reason}") from None


def published_cause(error: BaseException) -> PublishedCheckpointError | None:
    """The :class:`PublishedCheckpointError` behind ``error`` (itself, or one it was raised from), if any.

    jsonargparse re-raises an exception of a model's ``__init__`` as its own ``ValueError``.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, PublishedCheckpointError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
