"""Failures are loud: a diverged run stops (exit != 0, no best checkpoint), SIGTERM saves and says how to resume."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from fam_lightning.cli import resume_command
from fam_lightning.reliability import NonFiniteLossError, check_finite_loss
from tests.helpers.cli import REPO, TINY_DATA_ARGS, popen, run_cli
from tests.helpers.tiny import Recorder, assert_same_run, tiny_fewshot

QUICKSTART = ["fit", "--config", str(REPO / "configs" / "quickstart.yaml"), *TINY_DATA_ARGS]


def test_check_finite_loss_names_the_step_and_every_term() -> None:
    check_finite_loss(3, torch.tensor(1.5), {"a": torch.tensor(1.0)})  # finite: silent
    with pytest.raises(NonFiniteLossError, match=r"global step 7: loss=nan \(episode=inf, scale=\[1, nan\]\)"):
        check_finite_loss(7, torch.tensor(float("nan")),
                          {"episode": torch.tensor(float("inf")), "scale": torch.tensor([1.0, float("nan")]), "x": None})


@pytest.mark.slow
def test_nan_scores_give_nan_accuracy_and_are_counted(tmp_path: Path, data_dir: Path) -> None:
    model, data = tiny_fewshot(data_dir)
    with torch.no_grad():
        next(model.backbone.parameters()).fill_(float("nan"))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.validate(model, data)
    metrics = trainer.callback_metrics
    assert torch.isnan(metrics["val/acc"]) and torch.isnan(metrics["val/acc_ci95"])
    assert float(metrics["val/nonfinite_scores"]) == 2 * 3 * 3  # 2 episodes x 3 ways x 3 queries


@pytest.mark.slow
def test_diverged_fit_exits_nonzero_names_the_step_and_keeps_no_checkpoint(tmp_path: Path, data_dir: Path) -> None:
    proc = run_cli([*QUICKSTART, "--data.data_dir", str(data_dir), "--trainer.max_epochs", "2",
                    "--data.train_episodes", "30", "--model.init_args.lr", "1e6"], tmp_path, check=False)
    err = proc.stderr
    assert proc.returncode != 0
    match = re.search(r"NonFiniteLossError: non-finite training loss at global step (\d+): loss=", err)
    assert match, err[-3000:]
    assert int(match.group(1)) < 30  # diverges in epoch 0, before any checkpoint
    assert "loss_episode=" in err and "loss_global=" in err
    checkpoints = list((tmp_path / "logs").rglob("*.ckpt"))
    assert checkpoints == [], checkpoints


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_nonzero_and_prints_the_resume_command(tmp_path: Path, data_dir: Path) -> None:
    marker = tmp_path / "first_step_done"
    args = [*QUICKSTART, "--data.data_dir", str(data_dir), "--trainer.max_epochs", "2",
            "--trainer.callbacks+=tests.helpers.callbacks.StepMarker", f"--trainer.callbacks.path={marker}"]
    proc = popen(args, tmp_path)
    deadline = time.monotonic() + 600
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    saved = tmp_path / "logs" / "quickstart" / "version_0" / "checkpoints" / "interrupted.ckpt"
    assert saved.exists()
    assert not list(saved.parent.glob("*.tmp"))
    last = err.strip().splitlines()[-1].strip()
    assert last == resume_command([str(REPO / "train.py"), *args], os.path.relpath(saved, tmp_path))
    checkpoint = torch.load(saved, map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] >= 1 and "state_dict" in checkpoint

    # the printed command resumes and finishes the run (in this process: the signal part is done)
    resumed = run_cli(last.split()[2:-2] + ["--ckpt_path", str(saved)], tmp_path)
    assert "Resuming mid-epoch" in resumed.stderr + resumed.stdout


def test_resume_command_replaces_an_earlier_ckpt_path() -> None:
    assert resume_command(["train.py", "fit", "--ckpt_path", "old.ckpt", "--x", "a b"], "new.ckpt") == (
        "python train.py fit --x 'a b' --ckpt_path new.ckpt"
    )
    assert resume_command(["/bin/fam-train", "fit", "--ckpt_path=old.ckpt"], "n.ckpt") == "fam-train fit --ckpt_path n.ckpt"


class _StopAt(L.Callback):
    """Raises Lightning's SIGTERM flag at (epoch, batch), as the signal handler would: the run stops after that batch."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.at = (epoch, batch)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object, idx: int) -> None:
        if (trainer.current_epoch, idx) == self.at:
            trainer._signal_connector.received_sigterm = True


@pytest.mark.slow
def test_mid_epoch_interrupt_resumes_exactly(tmp_path: Path, data_dir: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from fam_lightning.callbacks.guards import InterruptCheckpoint

    def trainer(root: Path, *extra: L.Callback) -> tuple[L.Trainer, Recorder]:
        recorder = Recorder()
        return L.Trainer(
            max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, log_every_n_steps=1, default_root_dir=root,
            callbacks=[ModelCheckpoint(dirpath=root / "checkpoints"), InterruptCheckpoint(), recorder, *extra],
        ), recorder

    straight = trainer(tmp_path / "a")
    straight[0].fit(*tiny_fewshot(data_dir))

    stopped = trainer(tmp_path / "b", _StopAt(1, 1))
    with pytest.raises(SIGTERMException):
        stopped[0].fit(*tiny_fewshot(data_dir))
    saved = tmp_path / "b" / "checkpoints" / "interrupted.ckpt"
    assert saved.exists()
    resumed = trainer(tmp_path / "c")
    resumed[0].fit(*tiny_fewshot(data_dir), ckpt_path=str(saved))
    # stopped at the end of epoch 1's batch 1: the resumed run starts at batch 2; the epoch-level
    # train means restart, so the logged values compared are validation's and epoch 2's
    straight[1].batches = [b for b in straight[1].batches if (b[0], b[1]) >= (1, 2)]
    straight[1].metrics = {k: v for k, v in straight[1].metrics.items() if k[0] >= 2 or k[1].startswith("val/")}
    resumed[1].metrics = {k: v for k, v in resumed[1].metrics.items() if k[0] >= 2 or k[1].startswith("val/")}
    assert_same_run(straight, resumed, first_epoch=1)


class _PoisonAfterLastStep(L.Callback):
    """Turns a weight into NaN after the last training step of epoch 0, when that step's loss was finite."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if trainer.current_epoch == 0 and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            with torch.no_grad():
                pl_module.logit_scale.fill_(float("nan"))


@pytest.mark.slow
def test_weights_that_diverged_on_the_last_step_are_never_validated_or_saved(tmp_path: Path, data_dir: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    model, data = tiny_fewshot(data_dir)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="val/acc", mode="max", save_last=True)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        num_sanity_val_steps=0, callbacks=[checkpoints, _PoisonAfterLastStep()], default_root_dir=tmp_path)
    with pytest.raises(NonFiniteLossError, match=r"non-finite weights after global step 3 .*: logit_scale"):
        trainer.fit(model, data)
    assert not list(tmp_path.rglob("*.ckpt"))
