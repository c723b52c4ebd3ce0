"""Test-only callbacks that configs name by class path (``tests.helpers.callbacks.<Name>``).

- :class:`StepMarker`: announces the first finished training step through a file (room for a signal).
- :class:`DumpBank`: every rank saves its memory bank and queue at the end of fit.
- :class:`RankProbe` (the multi-node tests): what every rank saw, logged and ended with. Each rank writes
  ``<out_dir>/rank<global rank>.pt`` at the end of fit: its ranks and world, a fingerprint (sum of every
  floating tensor, float64) of each training and validation batch, the dataset indices of the validation
  batches that carry them, every ``val/*`` value of ``trainer.callback_metrics`` after each validation (what
  the logger receives, as that rank holds it), the final weights and, for memory-bank models, the bank and queue.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class StepMarker(Callback):
    """Touch ``path`` after the first training batch; then wait ``pause`` seconds per batch (room for a signal)."""

    def __init__(self, path: str, pause: float = 0.5) -> None:
        self.path = Path(path)
        self.pause = pause

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.path.touch()
        time.sleep(self.pause)


def bank_state(pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
    """The memory bank, its labels, NPID's separate memory (with refresh_bank) and MoCo's queue and pointer,
    on the CPU."""
    state = {"bank": pl_module.bank.bank.cpu(), "labels": pl_module.bank.labels.cpu()}
    if getattr(pl_module, "memory", None) is not None:
        state["memory"] = pl_module.memory.bank.cpu()
    if pl_module.queue is not None:
        state["queue"] = pl_module.queue.queue.cpu()
        state["ptr"] = pl_module.queue.ptr.cpu()
    return state


class DumpBank(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(bank_state(pl_module), self.out_dir / f"rank{trainer.global_rank}.pt")


def fingerprint(batch: Any) -> float:
    """Sum of every floating tensor in a (nested) batch, in float64."""
    if isinstance(batch, torch.Tensor):
        return float(batch.double().sum()) if batch.is_floating_point() else 0.0
    if isinstance(batch, dict):
        return sum(fingerprint(v) for v in batch.values())
    if isinstance(batch, (list, tuple)):
        return sum(fingerprint(v) for v in batch)
    return 0.0


class RankProbe(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.train_batches: list[tuple[int, int, float]] = []
        self.val_batches: list[tuple[int, int, int, float]] = []
        self.val_indices: list[int] = []
        self.metrics: dict[int, dict[str, float]] = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.train_batches.append((trainer.current_epoch, batch_idx, fingerprint(batch)))

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking:
            return
        self.val_batches.append((trainer.current_epoch, dataloader_idx, batch_idx, fingerprint(batch)))
        if trainer.current_epoch == 0 and dataloader_idx == 0 and isinstance(batch, dict) and "index" in batch:
            self.val_indices.extend(int(i) for i in batch["index"])

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.metrics[trainer.current_epoch] = {
            name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("val/")
        }

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        env = trainer.strategy.cluster_environment
        record = {
            "global_rank": trainer.global_rank, "local_rank": trainer.local_rank, "node_rank": trainer.node_rank,
            "world_size": trainer.world_size, "num_nodes": trainer.num_nodes,
            "environment": type(env).__name__, "main_address": env.main_address,
            "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
            "train_batches": self.train_batches, "val_batches": self.val_batches, "val_indices": self.val_indices,
            "metrics": self.metrics,
            "weights": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()},
        }
        if getattr(pl_module, "bank", None) is not None:
            record["bank"] = bank_state(pl_module)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(record, self.out_dir / f"rank{trainer.global_rank}.pt")
