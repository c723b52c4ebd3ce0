"""Both retrievers train through the CLI on synthetic data and log Recall@K and FAM maps.

Recall@K over the whole gallery when each rank embeds half of it: ``tests/e2e/test_multinode.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.cli import REPO, run_cli
from tests.helpers.events import read_events


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["ms", "margin"])
def test_retrieval_fit_logs_recall_and_fam(loss: str, tmp_path: Path, data_dir: Path) -> None:
    run_cli(
        ["fit", "--config", str(REPO / "configs" / "retrieval" / f"{loss}_synthetic.yaml"),
         "--data.data_dir", str(data_dir), "--data.synthetic_classes", "24",
         "--data.synthetic_images_per_class", "20", "--data.image_size", "32",
         "--data.train_batches", "3", "--data.explain_queries", "16", "--model.init_args.backbone", "conv4",
         "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1"],
        cwd=tmp_path,
    )
    scalars, images = read_events(tmp_path / "logs" / f"{loss}_synthetic" / "version_0")
    assert sorted(set(images["val/fam_probe"]))[0] == 0 and len(set(images["val/fam_probe"])) == 3  # step 0 + 2
    assert scalars["val/fam_energy_untrained"][0][0] == 0
    for tag in ("val/recall@1", "val/recall@8", "val/map@r", "val/fam_energy_pointing_game", "val/fam_iou", "train/loss"):
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
    recall = dict(scalars["val/recall@1"])
    assert all(0 <= v <= 100 for v in recall.values())
    assert all(a <= b for a, b in zip([v for _, v in scalars["val/recall@1"]], [v for _, v in scalars["val/recall@8"]]))
