"""Load what a training run left behind: the model (and its data module) from a Lightning checkpoint.

A checkpoint written by ``fam-train fit`` (LightningCLI in subclass mode) names
its own classes: ``hyper_parameters["_class_path"]`` is the model's dotted
class path, ``datamodule_hyper_parameters["_class_path"]`` the data module's,
each beside the ``__init__`` arguments they were built with. The tools read
the classes from there; an explicit class (``--model_class``) overrides it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from fam_lightning.protocol import SimilarityModel, check_similarity_model

MODEL_KEY = "hyper_parameters"
DATAMODULE_KEY = "datamodule_hyper_parameters"
EXAMPLE_MODEL_CLASS = "fam_lightning.models.FewShotClassifier"


def import_class(dotted: str) -> type:
    """``package.module.Class`` -> the class.

    The top-level names of fam-lightning 0.1, ``datamodules.X`` / ``callbacks.X`` (in older checkpoints and
    configs), resolve to ``fam_lightning.datamodules.X`` / ``fam_lightning.callbacks.X``, where the package
    keeps them now.
    """
    module_name, _, class_name = dotted.rpartition(".")
    if not module_name:
        raise ValueError(f"a class must be a dotted path such as {EXAMPLE_MODEL_CLASS}, got {dotted!r}")
    candidates = [module_name]
    if module_name.split(".")[0] in ("datamodules", "callbacks"):
        candidates = [f"fam_lightning.{module_name}"]
    errors = []
    for candidate in candidates:
        try:
            return getattr(importlib.import_module(candidate), class_name)
        except (ImportError, AttributeError) as err:
            errors.append(str(err))
    raise ValueError(f"cannot import class {dotted!r}: {'; '.join(errors)}")


def read_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    """The checkpoint's dict (on the CPU); errors name the file."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(64)
    if not head:
        raise ValueError(f"cannot read checkpoint {path}: the file is empty (0 bytes; a write or copy was cut short)")
    if head.startswith(b"version https://git-lfs"):
        raise ValueError(
            f"cannot read checkpoint {path}: it is a Git LFS pointer, not the checkpoint itself "
            "(run `git lfs pull` in its repository, or download the file)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, foreign pickles: all unreadable here
        raise ValueError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


def class_path(checkpoint: dict[str, Any], key: str = MODEL_KEY, override: str | None = None) -> str:
    """The dotted class the checkpoint's ``key`` section was built from, or ``override``."""
    if override:
        return override
    stored = (checkpoint.get(key) or {}).get("_class_path")
    if not stored:
        what = "model" if key == MODEL_KEY else "data module"
        flag = "--model_class" if key == MODEL_KEY else "--config with a `data` section"
        raise ValueError(
            f"the checkpoint does not name its {what} class ({key}['_class_path'] is missing: it was not "
            f"written by fam-train / train.py); pass {flag}, e.g. {EXAMPLE_MODEL_CLASS}"
        )
    return stored


def load_model(
    ckpt_path: str | Path,
    model_class: str | None = None,
    device: str | torch.device = "cpu",
    hparams: dict[str, Any] | None = None,
) -> SimilarityModel:
    """A protocol model from a Lightning checkpoint, in eval mode on ``device``.

    Args:
        ckpt_path: checkpoint file.
        model_class: dotted LightningModule class; None reads it from the checkpoint.
        device: where the model goes.
        hparams: ``__init__`` arguments overriding the stored hyper-parameters (``--config`` / ``--model.*``).

    Raises:
        FileNotFoundError: no such file. ValueError: unreadable, no class
        information and no ``model_class``, or weights that do not fit the class.
    """
    checkpoint = read_checkpoint(ckpt_path)
    dotted = class_path(checkpoint, MODEL_KEY, model_class)
    cls = import_class(dotted)
    stored = (checkpoint.get(MODEL_KEY) or {}).get("_class_path")
    # an override that is not the stored class must not go through the CLI's instantiator (it builds _class_path)
    extra = {"_instantiator": None} if model_class and stored and import_class(stored) is not cls else {}
    try:
        model = cls.load_from_checkpoint(
            str(ckpt_path), map_location=torch.device(device), **{**(hparams or {}), **extra}
        )
    except Exception as err:  # missing / unexpected keys, shape mismatches, bad hyper-parameters
        raise ValueError(f"cannot load checkpoint {ckpt_path} as {dotted}: {err}") from err
    return check_similarity_model(model.to(device).eval())


def datamodule_arguments(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The ``__init__`` arguments the checkpoint's data module was built with (no ``_`` keys)."""
    stored = checkpoint.get(DATAMODULE_KEY) or {}
    return {key: value for key, value in dict(stored).items() if not key.startswith("_")}


def build_datamodule(
    checkpoint: dict[str, Any], datamodule_class: str | None = None, overrides: dict[str, Any] | None = None
) -> Any:
    """The data module of the run that wrote ``checkpoint``, with ``overrides`` applied to its arguments.

    With ``datamodule_class`` given and different from the stored one, only
    ``overrides`` are used (the stored arguments belong to another class).
    """
    stored_path = (checkpoint.get(DATAMODULE_KEY) or {}).get("_class_path")
    dotted = class_path(checkpoint, DATAMODULE_KEY, datamodule_class)
    cls = import_class(dotted)
    same = stored_path is not None and import_class(stored_path) is cls
    arguments = {**(datamodule_arguments(checkpoint) if same else {}), **(overrides or {})}
    try:
        return cls(**arguments)
    except TypeError as err:
        raise ValueError(f"cannot build data module {dotted} from {sorted(arguments)}: {err}") from err
