"""Shared fixtures. Plain helpers live in :mod:`tests.helpers` (import them from there, never from here)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import REPO, isolated, run_cli
from tests.helpers.tiny import FITS


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic data folder shared by every CLI test of the session."""
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
