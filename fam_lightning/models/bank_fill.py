"""The kNN bank of a model that has none yet (an imported MoCo): embed every training image once."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from fam_lightning.memory import gather_from_all_ranks


class TrainingImages(Dataset):
    """Un-augmented training images by data set index (the bank's rows), from ``datamodule.train_images``."""

    def __init__(self, datamodule: Any, rows: Tensor) -> None:
        self.datamodule, self.rows = datamodule, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int) -> tuple[Tensor, Tensor]:
        row = self.rows[position]
        return self.datamodule.train_images(row.reshape(1))[0], row


@torch.no_grad()
def fill_bank(model: Any) -> None:
    """Write ``normalize(model(image))`` of every training image into ``model.bank`` (a MemoryBankModel's).

    The images come from ``model.bank_datamodule()`` (the Trainer's datamodule, or
    one given to ``attach_datamodule``). Under DDP each rank embeds a contiguous
    share and the shares are gathered, so every rank ends with the same full bank.
    """
    datamodule = model.bank_datamodule()
    if datamodule is None or not hasattr(datamodule, "train_images"):
        raise ValueError(
            "MemoryBankModel: the imported checkpoint has no bank, and computing one needs a datamodule "
            "with train_images(indices) (e.g. fam_lightning.datamodules.ContrastiveDataModule)"
        )
    trainer = model._trainer  # None outside a Trainer (MemoryBankModel.attach_datamodule): one process
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    size = model.bank.size
    share = math.ceil(size / world)
    # equal shares for all_gather: the last rank repeats the final row (the same value written twice)
    rows = torch.arange(rank * share, (rank + 1) * share).clamp(max=size - 1)
    loader = DataLoader(
        TrainingImages(datamodule, rows), batch_size=getattr(datamodule, "batch_size", 64),
        num_workers=getattr(datamodule, "num_workers", 0),
    )
    was_training = model.training
    model.eval()
    embeddings, indices = [], []
    try:
        for images, index in tqdm(loader, desc=f"kNN bank: embedding {size} training images",
                                  disable=rank != 0, leave=False):
            embeddings.append(F.normalize(model(images.to(model.device)).float(), dim=1))
            indices.append(index.to(model.device))
    finally:
        model.train(was_training)
    embedding = gather_from_all_ranks(torch.cat(embeddings))
    index = gather_from_all_ranks(torch.cat(indices))
    model.bank.bank[index.to(model.bank.bank.device)] = embedding.to(model.bank.bank)
