"""Every backbone's synthetic config trains through the CLI and gets FAM maps and metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.cli import REPO, SMALL_EPISODE_ARGS, run_cli
from tests.helpers.events import read_events

BACKBONES = ("conv4", "conv64f", "resnet12", "resnet18", "wrn28_10")


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_synthetic_config_fits_with_fam_callback(backbone: str, tmp_path: Path, data_dir: Path) -> None:
    config = REPO / "configs" / "fewshot" / f"{backbone}_synthetic.yaml"
    run_cli(
        ["fit", "--config", str(config), "--data.data_dir", str(data_dir),
         "--data.synthetic_classes", "24", "--data.synthetic_images_per_class", "20",
         *SMALL_EPISODE_ARGS, "--data.train_episodes", "1", "--data.val_episodes", "1",
         "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1"],
        cwd=tmp_path,
    )
    scalars, images = read_events(tmp_path / "logs" / f"{backbone}_synthetic" / "version_0")
    assert images["val/fam_probe"], "no FAM probe grid logged"
    for tag in ("val/acc", "val/fam_energy_pointing_game", "val/fam_iou", "train/loss"):
        assert tag in scalars, f"{tag} missing for {backbone}"


def test_real_cub_configs_name_the_placeholder_root(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="/path/to/CUB_200_2011"):
        run_cli(["fit", "--config", str(REPO / "configs" / "fewshot" / "conv4_cub.yaml")], cwd=tmp_path)


@pytest.mark.slow
def test_four_episodes_per_step_config_takes_one_step_per_four_episodes(tmp_path: Path, data_dir: Path) -> None:
    config = REPO / "configs" / "fewshot" / "conv4_synthetic_4episodes.yaml"
    run_cli(
        ["fit", "--config", str(config), "--data.data_dir", str(data_dir),
         "--data.synthetic_classes", "24", "--data.synthetic_images_per_class", "20",
         *SMALL_EPISODE_ARGS, "--data.train_episodes", "8", "--data.val_episodes", "1",
         "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1"],
        cwd=tmp_path,
    )
    scalars, images = read_events(tmp_path / "logs" / "conv4_synthetic_4episodes" / "version_0")
    assert [step for step, _ in scalars["train/loss"]] == [0, 1]  # 8 episodes, 4 per step
    assert images["val/fam_probe"] and "val/fam_energy_pointing_game" in scalars


@pytest.mark.slow
def test_shuffled_label_config_trains_on_permuted_labels(tmp_path: Path, data_dir: Path) -> None:
    import torch

    config = REPO / "configs" / "quickstart_shuffled_labels.yaml"
    run_cli(
        ["fit", "--config", str(config), "--data.data_dir", str(data_dir),
         "--data.synthetic_classes", "24", "--data.synthetic_images_per_class", "20",
         *SMALL_EPISODE_ARGS, "--data.train_episodes", "1", "--data.val_episodes", "1",
         "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1"],
        cwd=tmp_path,
    )
    checkpoint = tmp_path / "logs" / "quickstart_shuffled" / "version_0" / "checkpoints" / "last.ckpt"
    hparams = torch.load(checkpoint, map_location="cpu", weights_only=False)["datamodule_hyper_parameters"]
    assert hparams["shuffle_labels"] is True
