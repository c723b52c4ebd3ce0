"""The shipped ViT configs fit from the CLI with the FAM callback (tiny budgets; slow)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers.cli import REPO, run_cli
from tests.helpers.events import read_events

# depth 1 and a 48 px input (a 4 x 4 grid with 12 px patches): the config's model, built smaller
SMALL_VIT = ["--model.init_args.backbone_kwargs",
             '{"img_size": 48, "patch_size": 12, "depth": 1, "embed_dim": 48, "num_heads": 2, '
             '"class_token": false, "global_pool": "avg"}']


@pytest.mark.slow
def test_fewshot_vit_config_fits_with_fam(tmp_path: Path, data_dir: Path) -> None:
    run_cli(
        ["fit", "--config", str(REPO / "configs" / "fewshot" / "vit_tiny_synthetic.yaml"), *SMALL_VIT,
         "--data.data_dir", str(data_dir), "--data.synthetic_classes", "24",
         "--data.synthetic_images_per_class", "20", "--data.image_size", "48", "--data.train_ways", "3",
         "--data.train_queries", "2", "--data.eval_ways", "3", "--data.eval_queries", "2",
         "--data.train_episodes", "1", "--data.val_episodes", "1", "--trainer.max_epochs", "1",
         "--trainer.log_every_n_steps", "1"],
        cwd=tmp_path,
    )
    log_dir = tmp_path / "logs" / "vit_tiny_synthetic" / "version_0"
    scalars, images = read_events(log_dir)
    assert images["val/fam_probe"], "no FAM probe grid logged"
    for tag in ("val/acc", "val/fam_energy_pointing_game", "val/fam_iou", "val/fam_average_drop", "train/loss"):
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
    state = torch.load(log_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert state["backbone.model.patch_embed.proj.weight"].shape == (48, 3, 12, 12)
    assert "backbone.model.cls_token" not in state


@pytest.mark.slow
def test_retrieval_vit_config_fits_with_fam(tmp_path: Path, data_dir: Path) -> None:
    run_cli(
        ["fit", "--config", str(REPO / "configs" / "retrieval" / "vit_tiny_synthetic.yaml"),
         "--model.init_args.backbone_kwargs",
         '{"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2, "class_token": false, '
         '"global_pool": "avg"}',
         "--data.data_dir", str(data_dir), "--data.synthetic_classes", "24",
         "--data.synthetic_images_per_class", "20", "--data.image_size", "32",
         "--data.train_batches", "2", "--data.explain_queries", "16",
         "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1"],
        cwd=tmp_path,
    )
    scalars, images = read_events(tmp_path / "logs" / "vit_tiny_retrieval_synthetic" / "version_0")
    assert images["val/fam_probe"], "no FAM probe grid logged"
    for tag in ("val/recall@1", "val/fam_energy_pointing_game", "val/fam_iou", "train/loss"):
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
