"""Test-only callback: every rank saves its memory bank and queue at the end of fit."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


def bank_state(pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
    """The memory bank, its labels and (MoCo) the queue and its pointer, on the CPU."""
    state = {"bank": pl_module.bank.bank.cpu(), "labels": pl_module.bank.labels.cpu()}
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
