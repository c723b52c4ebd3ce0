"""End-to-end: the quickstart config through the LightningCLI, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.cli import REPO, TINY_DATA_ARGS, run_cli
from tests.helpers.events import read_events

FAM_SCALARS = (
    "val/fam_energy_pointing_game",
    "val/fam_iou",
    "val/fam_average_drop",
    "val/fam_increase_in_confidence",
)


@pytest.mark.slow
def test_quickstart_fit_logs_fam_images_and_metrics_then_test_evaluates(tmp_path: Path, data_dir: Path) -> None:
    config = REPO / "configs" / "quickstart.yaml"
    proc = run_cli(
        ["fit", "--config", str(config), *TINY_DATA_ARGS, "--data.data_dir", str(data_dir),
         "--trainer.max_epochs", "2"],
        cwd=tmp_path,
    )
    assert "TensorBoard logs:" in proc.stdout + proc.stderr
    log_dir = tmp_path / "logs" / "quickstart" / "version_0"
    scalars, images = read_events(log_dir)
    # the same probe grid at step 0 and one step per validation: the slider shows the maps evolving
    assert len(set(images["val/fam_probe"])) >= 3
    for tag in ("val/acc", "val/acc_ci95", "train/loss", "train/loss_episode", "train/loss_global", *FAM_SCALARS):
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
    for tag in FAM_SCALARS:
        assert all(torch.isfinite(torch.tensor(v)) for _, v in scalars[tag])
    energy = [v for _, v in scalars["val/fam_energy_pointing_game"]]
    assert all(0.0 <= v <= 100.0 for v in energy)

    checkpoints = sorted((log_dir / "checkpoints").glob("*.ckpt"))
    assert any(p.name == "last.ckpt" for p in checkpoints)
    assert not list((log_dir / "checkpoints").glob("*.tmp"))  # atomic saves leave nothing behind

    test = run_cli(
        ["test", "--config", str(config), *TINY_DATA_ARGS, "--data.data_dir", str(data_dir),
         "--ckpt_path", str(log_dir / "checkpoints" / "last.ckpt"),
         "--trainer.logger.init_args.name", "evaluation"],
        cwd=tmp_path,
    )
    out = test.stdout + test.stderr
    for name in ("test/acc", "test/acc_ci95", "test/fam_energy_pointing_game", "test/fam_iou",
                 "test/fam_average_drop", "test/fam_increase_in_confidence"):
        assert name in out, f"{name} not reported by `train.py test`"

    # evaluate.py: the same evaluation as a row of a paper-style table
    env = dict(os.environ, PYTHONPATH=str(REPO))
    table = tmp_path / "results" / "fewshot"
    proc = subprocess.run(
        [sys.executable, str(REPO / "evaluate.py"), "--config", str(config), *TINY_DATA_ARGS,
         "--data.data_dir", str(data_dir), "--ckpt_path", str(log_dir / "checkpoints" / "last.ckpt"),
         "--name", "Conv4", "--table", str(table), "--note", "synthetic data",
         "--trainer.logger.init_args.name", "table"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = (table.with_suffix(".md")).read_text().splitlines()
    assert rows[0].startswith("| Model | Accuracy (%)") and rows[2].startswith("| Conv4 |")
    assert "synthetic data" in rows[2]


def test_config_typo_is_named(tmp_path: Path) -> None:
    config = REPO / "configs" / "quickstart.yaml"
    with pytest.raises(AssertionError, match="lrr"):
        run_cli(["fit", "--config", str(config), "--model.init_args.lrr", "0.1"], cwd=tmp_path)


def test_missing_cub_folder_is_named(tmp_path: Path) -> None:
    config = REPO / "configs" / "quickstart.yaml"
    missing = tmp_path / "no_such_CUB_200_2011"
    with pytest.raises(AssertionError, match="no_such_CUB_200_2011"):
        run_cli(["fit", "--config", str(config), "--data.root", str(missing)], cwd=tmp_path)
