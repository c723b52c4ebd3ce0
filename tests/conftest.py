"""Shared fixtures: a tiny synthetic CUB-layout data set and CLI helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Small enough for 2 CPU cores, large enough for 5-way 1-shot 15-query val episodes.
TINY_DATA_ARGS = [
    "--data.synthetic_classes", "24",
    "--data.synthetic_images_per_class", "20",
    "--data.image_size", "48",
    "--data.train_episodes", "3",
    "--data.val_episodes", "2",
    "--data.test_episodes", "4",
    "--trainer.log_every_n_steps", "1",
]


def run_cli(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python train.py ...`` from ``cwd`` as a user would; fail with its output."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"train.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def read_events(log_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[int]]]:
    """Scalars {tag: [(step, value)]} and images {tag: [steps]} from TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    images = {t: [e.step for e in acc.Images(t)] for t in acc.Tags()["images"]}
    return scalars, images


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic data folder shared by every CLI test of the session."""
    return tmp_path_factory.mktemp("data")
