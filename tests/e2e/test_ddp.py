"""Two CPU processes: the few-shot fit under Lightning DDP, and metric reduction across ranks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fam_lightning.metrics import (
    AverageDrop,
    EnergyPointingGame,
    EpisodeAccuracy,
    IncreaseInConfidence,
    LocalizationIoU,
)
from tests.helpers.cli import REPO, TINY_DATA_ARGS, run_process
from tests.helpers.events import read_events
from tests.helpers.distributed import free_port


@pytest.mark.slow
def test_two_process_ddp_fit_with_fam_callback(tmp_path: Path, data_dir: Path) -> None:
    run_process(
        ["fit", "--config", str(REPO / "configs" / "quickstart.yaml"), *TINY_DATA_ARGS,
         "--data.data_dir", str(data_dir), "--trainer.max_epochs", "2",
         "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"],
        cwd=tmp_path,
    )
    scalars, images = read_events(tmp_path / "logs" / "quickstart" / "version_0")
    assert len(set(images["val/fam_probe"])) == 3  # rank zero logs one grid at step 0 and one per validation
    assert len(scalars["val/acc"]) == 2
    for tag in ("val/fam_energy_pointing_game", "val/fam_iou", "val/fam_average_drop", "val/fam_energy_untrained"):
        assert len(scalars[tag]) == 3 and scalars[tag][0][0] == 0, tag  # step 0: the untrained model


def _data(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "saliency": torch.rand(8, 16, 16, generator=g),
        "boxes": torch.tensor([[2.0, 3.0, 10.0, 12.0]]).repeat(8, 1),
        "y": torch.rand(8, generator=g) - 0.2,
        "o": torch.rand(8, generator=g),
        "pred": torch.randint(0, 5, (6, 15), generator=g),
        "target": torch.randint(0, 5, (6, 15), generator=g),
    }


def _metrics() -> dict[str, object]:
    return {
        "energy": EnergyPointingGame(), "iou": LocalizationIoU(),
        "ad": AverageDrop(), "ic": IncreaseInConfidence(), "acc": EpisodeAccuracy(),
    }


def _update(metrics: dict, data: dict, rows: slice, episodes: slice) -> None:
    metrics["energy"].update(data["saliency"][rows], data["boxes"][rows])
    metrics["iou"].update(data["saliency"][rows], data["boxes"][rows])
    metrics["ad"].update(data["y"][rows], data["o"][rows])
    metrics["ic"].update(data["y"][rows], data["o"][rows])
    metrics["acc"].update(data["pred"][episodes], data["target"][episodes])


def _flatten(result: dict) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in result.items():
        if isinstance(value, dict):
            out.update({f"{name}.{k}": v for k, v in value.items()})
        else:
            out[name] = value
    return out


def _worker(rank: int, world: int, port: int, queue: mp.SimpleQueue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        metrics = _metrics()
        # rank r sees half the samples and half the episodes
        _update(metrics, _data(), slice(rank * 4, rank * 4 + 4), slice(rank * 3, rank * 3 + 3))
        result = _flatten({name: m.compute() for name, m in metrics.items()})
        queue.put((rank, {k: float(v) for k, v in result.items()}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_metrics_reduce_across_two_processes_like_one() -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(2, free_port(), queue), nprocs=2, start_method="spawn")
    results = dict(queue.get() for _ in range(2))
    single = _metrics()
    _update(single, _data(), slice(0, 8), slice(0, 6))
    expected = {k: float(v) for k, v in _flatten({n: m.compute() for n, m in single.items()}).items()}
    for rank in (0, 1):
        for name, value in expected.items():
            assert results[rank][name] == pytest.approx(value, rel=1e-6, abs=1e-9), (rank, name)
