"""Shared fixtures. Plain helpers live in :mod:`tests.helpers` (import them from there, never from here)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import REPO, isolated, run_cli
from tests.helpers.tiny import FITS


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread per process (``FAM_TEST_THREADS`` overrides), for this process and those it starts.

    The suite's models are tiny: a second intra-op thread buys little, and on a shared machine OpenMP's
    spinning threads slow a test many times over (measured: a 3-fit resume test 13.8 s with 2 threads, 3.0 s
    with 1, under load).
    """
    import torch

    threads = os.environ.get("FAM_TEST_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", threads)
    torch.set_num_threads(int(threads))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic data folder shared by every CLI test of the session.

    ``FAM_TEST_DATA_DIR=<folder>`` keeps it between sessions (an inner-loop convenience: each synthetic
    set's folder name spells out its parameters and format version, so a kept one is never stale).
    """
    kept = os.environ.get("FAM_TEST_DATA_DIR")
    if kept:
        Path(kept).mkdir(parents=True, exist_ok=True)
        return Path(kept)
    return tmp_path_factory.mktemp("data")


@pytest.fixture(autouse=True)
def _fresh_process_state() -> Iterator[None]:
    """Every test starts from the process state the last one found (cwd, env, signals, seeds, torch, logging ...)."""
    with isolated():
        yield


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Callable[[str], Path]:
    """``trained_checkpoint(family)``: the ``last.ckpt`` of one one-epoch ``train.py fit`` of that family.

    Families are those of :data:`tests.helpers.tiny.FITS`; each is fitted once per session, on first use,
    and shared by every test that explains, evaluates, sanity-checks or benchmarks a trained model.
    """
    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            config, extra = FITS[family]
            cwd = tmp_path_factory.mktemp(family.replace(" ", "_"))
            run_cli(["fit", "--config", str(REPO / "configs" / config), *extra, "--data.data_dir", str(data_dir),
                     "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false"], cwd=cwd)
            (made[family],) = cwd.glob("logs/*/version_0/checkpoints/last.ckpt")
        return made[family]

    return get
