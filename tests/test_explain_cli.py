"""explain.py and sanity_check.py as a user runs them, on a fresh (untrained) checkpoint."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from PIL import Image

import explain
import sanity_check
from fam_lightning.models import FewShotClassifier
from tests.conftest import REPO


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smallest file ``load_from_checkpoint`` accepts: state dict, hyper-parameters, version."""
    torch.manual_seed(0)
    model = FewShotClassifier(num_classes=4)
    path = tmp_path_factory.mktemp("ckpt") / "fresh.ckpt"
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
         "pytorch-lightning_version": lightning.__version__},
        path,
    )
    return path


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = [folder / "bird.jpg", folder / "query.png", folder / "ref.jpg"]
    for path, (w, h) in zip(paths, [(70, 50), (40, 40), (64, 48)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return paths


def run_script(script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, str(REPO / script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_explain_writes_one_overlay_per_image_and_explainer(tmp_path: Path, checkpoint: Path, image_files) -> None:
    bird, query, ref = image_files
    out = tmp_path / "maps"
    proc = run_script(
        "explain.py",
        ["--ckpt_path", str(checkpoint), "--images", str(bird), str(query), "--references", str(ref),
         "--explainers", "fam", "gradcam", "score_fam", "--out", str(out), "--image_size", "48", "--device", "cpu"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{s}_{e}.png" for s in ("bird", "query") for e in ("fam", "gradcam", "score_fam"))
    for name in written:
        with Image.open(out / name) as image:
            assert image.size == (48, 48) and image.mode == "RGB"


def test_missing_image_is_named(tmp_path: Path, checkpoint: Path, image_files, capsys) -> None:
    missing = tmp_path / "no_such_bird.jpg"
    with pytest.raises(SystemExit):
        explain.main(["--ckpt_path", str(checkpoint), "--images", str(image_files[0]), str(missing),
                      "--references", str(image_files[2]), "--out", str(tmp_path)])
    assert "no_such_bird.jpg" in capsys.readouterr().err


def test_unreadable_image_and_missing_checkpoint_are_named(
    tmp_path: Path, checkpoint: Path, image_files, capsys
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(SystemExit):
        explain.main(["--ckpt_path", str(checkpoint), "--images", str(broken), "--explainers", "eigencam",
                      "--out", str(tmp_path), "--device", "cpu"])
    assert "broken.jpg" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        explain.main(["--ckpt_path", str(tmp_path / "gone.ckpt"), "--images", str(image_files[0]),
                      "--explainers", "eigencam"])
    assert "gone.ckpt" in capsys.readouterr().err


def test_without_references_only_reference_free_explainers_run(
    tmp_path: Path, checkpoint: Path, image_files, capsys
) -> None:
    with pytest.raises(SystemExit):
        explain.main(["--ckpt_path", str(checkpoint), "--images", str(image_files[0]), "--explainers", "gradcam"])
    assert "--references" in capsys.readouterr().err
    explain.main(["--ckpt_path", str(checkpoint), "--images", str(image_files[0]), "--explainers", "grad_fam",
                  "eigencam", "--out", str(tmp_path), "--image_size", "40", "--device", "cpu"])
    assert (tmp_path / "bird_grad_fam.png").is_file() and (tmp_path / "bird_eigencam.png").is_file()
    assert not list(tmp_path.glob(".*.png"))  # atomic writes leave no temporary files


def test_spearman_matches_scipy_with_ties() -> None:
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (3, 30), generator=g).float()  # many ties
    b = a + torch.randint(0, 3, (3, 30), generator=g).float()
    ours = sanity_check.spearman(a, b)
    for i in range(3):
        assert ours[i].item() == pytest.approx(spearmanr(a[i].numpy(), b[i].numpy()).statistic, abs=1e-12)
    assert sanity_check.spearman(torch.zeros(1, 5), torch.rand(1, 5)).isnan().all()  # constant map


@pytest.mark.slow
def test_sanity_check_reports_rank_correlation_per_layer(tmp_path: Path, checkpoint: Path, data_dir: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "data:\n  class_path: datamodules.FewShotDataModule\n  init_args:\n"
        "    synthetic_classes: 24\n    synthetic_images_per_class: 20\n    image_size: 32\n"
        "    eval_ways: 5\n    eval_shots: 1\n    eval_queries: 3\n"
    )
    out = tmp_path / "sanity.csv"
    proc = run_script(
        "sanity_check.py",
        ["--ckpt_path", str(checkpoint), "--config", str(config), "--data_dir", str(data_dir),
         "--episodes", "1", "--explainers", "fam", "gradcam", "--out", str(out), "--device", "cpu"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| randomised down to | fam | gradcam |" in proc.stdout
    rows = list(csv.DictReader(out.open()))
    layers = [r["layer"] for r in rows if r["explainer"] == "fam"]
    assert layers[0] == "backbone.features.3.1" and layers[-1] == "backbone.features.0.0" and len(layers) == 8
    for row in rows:
        rho = float(row["spearman_mean"])
        assert -1.0 <= rho <= 1.0 and int(row["num_maps"]) + int(row["num_constant"]) == 15
