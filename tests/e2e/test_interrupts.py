"""Interrupts at any point resume exactly; last.ckpt is always the latest epoch; validation is never lost."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fam_lightning.callbacks import ModelCheckpoint
from fam_lightning.callbacks.guards import INTERRUPTED_NAME, InterruptCheckpoint
from tests.helpers.tiny import Recorder, assert_same_run, tiny_fewshot

pytestmark = pytest.mark.slow
EPOCHS = 3


class _Interrupt(L.Callback):
    """Sends the run a stop request at one point, as the signal handlers do.

    ``where``: ("train", epoch, batch) before that training batch, ("val", epoch, batch) during that
    validation batch, or ("start",) before the first training step (where the FAM step-0 pass runs).
    ``how``: "sigint" goes through InterruptCheckpoint's Ctrl+C handler; "sigterm" sets Lightning's flag.
    """

    def __init__(self, guard: InterruptCheckpoint, where: tuple, how: str) -> None:
        self.guard, self.where, self.how, self.fired = guard, where, how, False

    def _fire(self, trainer: L.Trainer) -> None:
        if self.fired:
            return
        self.fired = True
        if self.how == "sigint":
            self.guard._on_sigint(signal.SIGINT, None)
        else:
            trainer._signal_connector.received_sigterm = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.where == ("start",):
            self._fire(trainer)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        if self.where == ("train", trainer.current_epoch, idx):
            self._fire(trainer)

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                                  idx: int, dataloader_idx: int = 0) -> None:
        if self.where == ("val", trainer.current_epoch, idx):
            self._fire(trainer)


def _trainer(root: Path, *extra: L.Callback, guard: InterruptCheckpoint | None = None) -> tuple[L.Trainer, Recorder]:
    recorder = Recorder()
    checkpoints = ModelCheckpoint(dirpath=root / "checkpoints", monitor="val/acc", mode="max", save_last=True,
                                  filename="best-{epoch}")
    callbacks = [checkpoints, guard or InterruptCheckpoint(), recorder, *extra]
    return L.Trainer(
        max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=1, default_root_dir=root, callbacks=callbacks,
    ), recorder


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[L.Trainer, Recorder]:
    run = _trainer(tmp_path_factory.mktemp("straight"))
    run[0].fit(*tiny_fewshot(data_dir))
    return run


@pytest.mark.parametrize(
    ("where", "how"),
    [(("train", 0, 1), "sigint"), (("train", 1, 2), "sigint"), (("train", 2, 0), "sigterm"),
     (("val", 0, 0), "sigterm"), (("val", 1, 1), "sigint"), (("start",), "sigint")],
    ids=["ctrl-c-epoch0-batch1", "ctrl-c-epoch1-last-batch", "sigterm-epoch2-batch0", "sigterm-in-validation",
         "ctrl-c-in-validation", "ctrl-c-before-the-first-step"],
)
def test_an_interrupt_anywhere_resumes_to_the_straight_run_bit_for_bit(
    tmp_path: Path, data_dir: Path, straight: tuple[L.Trainer, Recorder], where: tuple, how: str
) -> None:
    guard = InterruptCheckpoint()
    stopped = _trainer(tmp_path / "stopped", _Interrupt(guard, where, how), guard=guard)
    with pytest.raises(SIGTERMException):
        stopped[0].fit(*tiny_fewshot(data_dir))
    saved = tmp_path / "stopped" / "checkpoints" / INTERRUPTED_NAME
    assert guard.saved_path == saved and saved.is_file()
    assert guard.signal_number == (signal.SIGINT if how == "sigint" else signal.SIGTERM)
    checkpoint = torch.load(saved, map_location="cpu", weights_only=True)
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    steps_per_epoch = straight[0].num_training_batches
    assert progress["completed"] == progress["processed"]  # no half-counted batch to skip or replay
    assert checkpoint["global_step"] % steps_per_epoch == progress["completed"] % steps_per_epoch

    if where[0] == "val":  # the validation that was running finished: its metrics and checkpoints exist
        epoch = where[1]
        assert (epoch, "val/acc") in stopped[1].metrics
        assert stopped[1].metrics[(epoch, "val/acc")] == straight[1].metrics[(epoch, "val/acc")]
        last = torch.load(tmp_path / "stopped" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert last["epoch"] == epoch

    resumed = _trainer(tmp_path / "resumed")
    resumed[0].fit(*tiny_fewshot(data_dir), ckpt_path=str(saved))
    stop_step = checkpoint["global_step"]
    # compare what the resumed run did: the batches after the stop and every validation after it;
    # epoch means of train/* restart at a mid-epoch resume, so they are compared from the next epoch on
    first_epoch = stop_step // steps_per_epoch
    straight_batches = [b for i, b in enumerate(straight[1].batches) if i >= stop_step]
    expected = (straight[0], Recorder())
    expected[1].batches = straight_batches
    expected[1].metrics = {k: v for k, v in straight[1].metrics.items()
                           if (k[0] > first_epoch or k[1].startswith("val/")) and k[0] >= first_epoch}
    got = resumed[1]
    got.metrics = {k: v for k, v in got.metrics.items() if k[0] > first_epoch or k[1].startswith("val/")}
    assert_same_run(expected, resumed, first_epoch=first_epoch)


class _FallingMetric(L.Callback):
    """Logs ``val/falling`` = 10 - epoch at every validation: its best epoch is always epoch 0."""

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.log("val/falling", 10.0 - trainer.current_epoch)


def test_last_ckpt_is_the_latest_epoch_when_the_monitored_metric_falls(tmp_path: Path, data_dir: Path) -> None:
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="val/falling", mode="max",
                                  save_last=True, filename="best-{epoch}")
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[checkpoints, _FallingMetric()], default_root_dir=tmp_path)
    trainer.fit(*tiny_fewshot(data_dir))
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == EPOCHS - 1 and last["global_step"] == trainer.global_step
    assert [p.name for p in (tmp_path / "checkpoints").glob("best-*.ckpt")] == ["best-epoch=0.ckpt"]
