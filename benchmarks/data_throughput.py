"""Training throughput with real data loading against the compute ceiling on the same device.

Two loops over the same FewShotDataModule episodes (synthetic CUB layout by
default, read by the real CUB reader), the same model and optimizer, in one run:

- ceiling: the episodes are loaded first and held on the device as tensors; a
  plain PyTorch loop (``train_step.plain_loop``) only computes;
- real: ``Trainer.fit(model, datamodule)``, so every episode is read, decoded,
  augmented and collated by the DataModule's loader while training runs.

Both time the steps after ``--warmup`` steps, data fetches included for the
real loop. Prints episodes/s of each and the ratio real / ceiling (1.0: data
loading and Lightning cost nothing).

    python benchmarks/data_throughput.py [--backbone conv4] [--steps 20] [--device cuda] [--num-workers 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import sync  # noqa: E402
from benchmarks.train_step import build_model, plain_loop  # noqa: E402
from fam_lightning.datamodules import FewShotDataModule  # noqa: E402


class EpisodeTimer(L.Callback):
    """From the end of batch ``warmup - 1`` to the end of batch ``last``: steps and the fetches between them."""

    def __init__(self, warmup: int, last: int) -> None:
        self.warmup, self.last, self.start, self.end = warmup, last, 0.0, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx in (self.warmup - 1, self.last):
            sync(pl_module.device)
            if batch_idx == self.last:
                self.end = time.perf_counter()
            else:
                self.start = time.perf_counter()


def preload(datamodule: FewShotDataModule, count: int, device: torch.device) -> list[dict]:
    """The first ``count`` training episodes of the loader, as tensors on ``device``."""
    episodes = []
    for batch in datamodule.train_dataloader():
        episodes.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        if len(episodes) == count:
            return episodes
    raise ValueError(f"the DataModule gave {len(episodes)} training episodes, expected at least {count}")


def real_loop(args: argparse.Namespace, datamodule: FewShotDataModule, device: torch.device) -> float:
    model = build_model(args, device)
    timer = EpisodeTimer(args.warmup, args.steps - 1)
    trainer = L.Trainer(
        accelerator=device.type, devices=1, max_epochs=1, limit_train_batches=args.steps, precision=args.precision,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer],
    )
    trainer.fit(model, datamodule=datamodule)
    return (timer.end - timer.start) / (args.steps - args.warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="conv4")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--precision", default="32-true", help="32-true | bf16-mixed")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="loader workers (default: 4 on CUDA, 0 on CPU, where workers compete with compute)")
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps <= args.warmup:
        parser.error(f"need 1 <= --warmup < --steps, got warmup={args.warmup}, steps={args.steps}")
    device = torch.device(args.device)
    workers = args.num_workers if args.num_workers is not None else (4 if device.type == "cuda" else 0)
    datamodule = FewShotDataModule(data_dir=args.data_dir, train_episodes=args.steps, num_workers=workers,
                                   pin_memory=device.type == "cuda")
    datamodule.prepare_data()
    datamodule.setup("fit")
    args.classes = datamodule.num_base_classes

    ceiling = plain_loop(args, preload(datamodule, args.steps, device), device)
    real = real_loop(args, datamodule, device)
    print(f"\n{args.backbone} 5-way {datamodule.train_shots}-shot {datamodule.train_queries}-query training, "
          f"{device.type}, {workers} loader workers, {args.steps - args.warmup} timed steps")
    print(f"  ceiling: plain loop on pre-loaded tensors  {1 / ceiling:7.2f} episodes/s")
    print(f"  real: DataModule + Lightning fit            {1 / real:7.2f} episodes/s")
    print(f"  ratio real / ceiling (episodes/s): {ceiling / real:.3f}")


if __name__ == "__main__":
    main()
