"""Training-step cost under Lightning against a plain PyTorch loop of the same model and data.

Both loops run the same FewShotClassifier (episodic + global multi-task loss)
on the same pre-built 5-way 1-shot 6-query episodes held on the device, with
the same optimizer, in the same process, so the ratio isolates Lightning's
overhead. Prints ms per step, ms per episode, episodes/s and the ratio Lightning / plain,
with the non-finite-loss check deferred (no host sync per step, the default on
accelerators) and immediate (a sync per step, the CPU default and the old behaviour).
``--episodes-per-batch E`` stacks E episodes per step (one backbone pass over
all their images), as ``FewShotDataModule(episodes_per_batch=E)`` does.

    python benchmarks/train_step.py [--backbone resnet12] [--steps 20] [--precision bf16-mixed] [--channels-last]
                                    [--episodes-per-batch 4]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import sync  # noqa: E402
from fam_lightning.datamodules.sampling.episodes import collate_episodes  # noqa: E402
from fam_lightning.models import FewShotClassifier  # noqa: E402


def make_episodes(count: int, ways: int, shots: int, queries: int, size: int, classes: int, device: torch.device) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    episodes = []
    for _ in range(count):
        way_classes = torch.randperm(classes, generator=g)[:ways]
        episodes.append({
            "support": torch.randn(ways * shots, 3, size, size, generator=g).to(device),
            "query": torch.randn(ways * queries, 3, size, size, generator=g).to(device),
            "support_target": torch.arange(ways).repeat_interleave(shots).to(device),
            "query_target": torch.arange(ways).repeat_interleave(queries).to(device),
            "support_class": way_classes.repeat_interleave(shots).to(device),
            "query_class": way_classes.repeat_interleave(queries).to(device),
            "ways": ways, "shots": shots, "queries": queries,
        })
    return episodes


def stack_episodes(episodes: list[dict], per_batch: int) -> list[dict]:
    """Consecutive groups of ``per_batch`` episodes as stacked batches (the episodes themselves when 1)."""
    if per_batch == 1:
        return episodes
    return [collate_episodes(episodes[i : i + per_batch]) for i in range(0, len(episodes), per_batch)]


class EpisodeList(torch.utils.data.Dataset):
    def __init__(self, episodes: list[dict]) -> None:
        self.episodes = episodes

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, i: int) -> dict:
        return self.episodes[i]


def build_model(args: argparse.Namespace, device: torch.device) -> FewShotClassifier:
    torch.manual_seed(0)
    model = FewShotClassifier(backbone=args.backbone, num_classes=args.classes, optimizer="sgd",
                              lr=0.05, scheduler="none", channels_last=args.channels_last)
    return model.to(device)


def plain_loop(args: argparse.Namespace, episodes: list[dict], device: torch.device) -> float:
    model = build_model(args, device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = model.configure_optimizers()
    dtype = torch.bfloat16 if args.precision.startswith("bf16") else None
    model.log = lambda *a, **k: None  # the plain loop logs nothing
    start = 0.0
    for step, batch in enumerate(episodes):
        if step == args.warmup:
            sync(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            loss = model.training_step(batch, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return (time.perf_counter() - start) / (len(episodes) - args.warmup)


class StepTimer(L.Callback):
    """From the start of batch ``warmup`` to the end of the last batch: steps only, no epoch-end work."""

    def __init__(self, warmup: int, last: int) -> None:
        self.warmup, self.last, self.start, self.end = warmup, last, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            sync(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.last:
            sync(pl_module.device)
            self.end = time.perf_counter()


def lightning_loop(args: argparse.Namespace, episodes: list[dict], device: torch.device, nonfinite_check: str) -> float:
    model = build_model(args, device)
    model.nonfinite_check = nonfinite_check  # "immediate": one host sync per step; "deferred": none
    timer = StepTimer(args.warmup, len(episodes) - 1)
    trainer = L.Trainer(
        accelerator=device.type, devices=1, max_epochs=1, precision=args.precision, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer],
    )
    loader = torch.utils.data.DataLoader(EpisodeList(episodes), batch_size=None, shuffle=False)
    trainer.fit(model, train_dataloaders=loader)
    return (timer.end - timer.start) / (len(episodes) - args.warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet12")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--classes", type=int, default=64)
    parser.add_argument("--precision", default="32-true", help="32-true | bf16-mixed")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--episodes-per-batch", type=int, default=1, help="episodes stacked per training step")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    per_batch = args.episodes_per_batch
    if per_batch < 1:
        parser.error(f"--episodes-per-batch must be >= 1, got {per_batch}")
    count = (args.steps + args.warmup) * per_batch
    episodes = stack_episodes(make_episodes(count, 5, 1, 6, args.size, args.classes, device), per_batch)
    args.steps += args.warmup
    plain = plain_loop(args, episodes, device)
    # the non-finite-loss check: deferred (no host sync per step; the default on accelerators) and
    # immediate (one sync per step; the default on CPU, and what every device did before)
    lightning = lightning_loop(args, episodes, device, "deferred")
    immediate = lightning_loop(args, episodes, device, "immediate")
    plain_again = plain_loop(args, episodes, device)  # bracket Lightning to expose drift
    plain = min(plain, plain_again)
    print(f"\n{args.backbone} 5-way 1-shot 6-query training step, {per_batch} episode(s) per step, "
          f"{args.size}x{args.size}, {device.type}, precision {args.precision}"
          f"{', channels_last' if args.channels_last else ''}")
    rows = (("plain PyTorch loop", plain), ("Lightning", lightning), ("Lightning, sync/step", immediate))
    for name, seconds in rows:
        print(f"  {name:<20} {seconds * 1e3:9.1f} ms/step  {seconds / per_batch * 1e3:9.1f} ms/episode  "
              f"{per_batch / seconds:7.2f} episodes/s")
    print(f"  ratio Lightning / plain: {lightning / plain:.3f}  (loss checked with a host sync per step: "
          f"{immediate / plain:.3f})")


if __name__ == "__main__":
    main()
