"""The step-0 pass's isolation: the model's validation run once more, before training, without side effects.

:class:`fam_lightning.callbacks.FAMCallback` explains the untrained model's decisions at global step 0 by running
the model's own ``on_validation_epoch_start`` and ``validation_step`` over the validation loaders
(:func:`validation_outputs`: the trainer's loaders, batch limits, device moves and precision context), inside
:func:`isolated_pass`: eval mode (each module's mode restored after), inference mode, the model's ``self.log``
muted (its step-0 values are not its own), and the model's torchmetrics swapped for clones (so its own metrics
are left exactly as they were). The random state is isolated by the caller (``isolate_rng``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import Metric


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module.eval()`` inside; every submodule's own training flag restored after."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


@contextmanager
def muted_logging(pl_module: L.LightningModule) -> Iterator[None]:
    """The model's ``self.log`` / ``self.log_dict`` do nothing inside."""

    def ignore(*args: Any, **kwargs: Any) -> None:
        return None

    pl_module.__dict__["log"] = pl_module.__dict__["log_dict"] = ignore  # instance attributes shadow the methods
    try:
        yield
    finally:
        del pl_module.__dict__["log"], pl_module.__dict__["log_dict"]


@contextmanager
def swapped_metrics(module: nn.Module) -> Iterator[None]:
    """Every torchmetrics ``Metric`` in ``module`` replaced by a clone inside, the originals put back after.

    The originals are never touched, so their states, update counts and cached values stay exactly as they were.
    A metric held under two names gets one clone; a metric inside another (a wrapper) travels with its holder.
    """
    paths = [name for name, m in module.named_modules(remove_duplicate=False) if isinstance(m, Metric) and name]
    outermost = [p for p in paths if not any(p.startswith(f"{q}.") for q in paths)]
    clones: dict[int, Metric] = {}
    swapped = []
    for path in outermost:
        parent_path, _, leaf = path.rpartition(".")
        parent = module.get_submodule(parent_path)
        original = parent.get_submodule(leaf)
        clone = clones.setdefault(id(original), original.clone())
        setattr(parent, leaf, clone)
        swapped.append((parent, leaf, original))
    try:
        yield
    finally:
        for parent, leaf, original in reversed(swapped):
            setattr(parent, leaf, original)


@contextmanager
def isolated_pass(pl_module: L.LightningModule) -> Iterator[None]:
    """Eval mode, the model's metrics swapped for clones, inference mode, the model's logging muted."""
    with eval_mode(pl_module), swapped_metrics(pl_module), torch.inference_mode(), muted_logging(pl_module):
        yield


def validation_loaders(trainer: L.Trainer) -> list[Any] | None:
    """The trainer's validation loaders as a list (None when it has none)."""
    loaders = trainer.val_dataloaders
    if loaders is None:
        return None
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]


def request_validation_loaders(trainer: L.Trainer) -> list[Any] | None:
    """:func:`validation_loaders`, first asking the fit loop for them if it has none yet.

    Lightning builds the validation loaders at the first validation; with
    ``check_val_every_n_epoch > 1`` that is after epoch 0, too late for step 0.
    The loaders built here are the ones that validation then uses.
    """
    if trainer.val_dataloaders is None and trainer.limit_val_batches != 0:
        trainer.fit_loop.epoch_loop.val_loop.setup_data()
    return validation_loaders(trainer)


def validation_outputs(trainer: L.Trainer, pl_module: L.LightningModule) -> Iterator[tuple[Any, int]]:
    """``(outputs, batch_idx)`` of the model's validation steps over the trainer's loaders, as Lightning runs them.

    The model's ``on_validation_epoch_start`` first (its eval preparation: kNN index, gallery); each loader up to
    the trainer's batch limit; batches moved by the strategy; steps inside the precision plugin's context.
    Call inside :func:`isolated_pass`.
    """
    loaders = validation_loaders(trainer) or []
    limits = trainer.num_val_batches
    pl_module.on_validation_epoch_start()
    for loader_idx, (loader, limit) in enumerate(zip(loaders, limits)):
        for batch_idx, batch in enumerate(loader):
            if batch_idx >= limit:
                break
            batch = trainer.strategy.batch_to_device(batch, dataloader_idx=loader_idx)
            args = (batch, batch_idx, loader_idx) if len(loaders) > 1 else (batch, batch_idx)
            with trainer.precision_plugin.val_step_context():
                outputs = pl_module.validation_step(*args)
            yield outputs, batch_idx
