"""The non-finite-loss guard without a host sync per step (deferred), checked against the immediate one."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
import torch

from fam_lightning.reliability import FiniteLossGuard, NonFiniteLossError
from tests.helpers.tiny import tiny_fewshot

NAN, INF = float("nan"), float("inf")


def test_deferred_guard_names_the_first_bad_step_and_its_terms() -> None:
    guard = FiniteLossGuard("deferred")
    for step, (loss, term) in enumerate([(1.0, 0.5), (2.0, 0.25), (NAN, INF), (INF, 3.0), (1.0, 1.0)]):
        guard.check(step, torch.tensor(loss), {"episode": torch.tensor(term), "scale": torch.tensor([1.0, step]),
                                               "unused": None})
    with pytest.raises(NonFiniteLossError, match=re.escape(
            "global step 2: loss=nan (episode=inf, scale=[1, 2]) (detected at global step 5, the next host sync)")):
        guard.flush(detected=5)


def test_deferred_guard_is_silent_while_finite_and_modes_are_checked() -> None:
    guard = FiniteLossGuard("deferred")
    guard.flush(detected=0)  # nothing checked yet
    for step in range(3):
        guard.check(step, torch.tensor(float(step)), {"a": torch.tensor(1.0)})
    guard.flush(detected=3)
    assert FiniteLossGuard("auto").deferred(torch.tensor(1.0)) is False  # CPU: immediate
    with pytest.raises(NonFiniteLossError, match="global step 4: loss=inf"):
        FiniteLossGuard("auto").check(4, torch.tensor(INF), {})
    with pytest.raises(ValueError, match="nonfinite_check must be one of"):
        FiniteLossGuard("sometimes")


class _Steps(L.Callback):
    """Records (epoch, global step) of every finished training batch and of the exception."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []
        self.failed_in_epoch: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        self.batches.append((trainer.current_epoch, trainer.global_step))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.failed_in_epoch = trainer.current_epoch


TRAIN_BATCHES = 8


def _diverge(mode: str, data_dir: Path, root: Path, every_step: bool) -> tuple[int, _Steps, str]:
    from lightning.pytorch.callbacks import ModelCheckpoint

    model, data = tiny_fewshot(data_dir)
    data.train_episodes = TRAIN_BATCHES
    model.hparams.lr = 1e6
    model.nonfinite_check = mode
    steps = _Steps()
    # every_step: a checkpoint after every step, the guard must refuse the first one of a diverged model;
    # otherwise the deferred check is read at the epoch's end, before validation
    checkpoints = ModelCheckpoint(dirpath=root, every_n_train_steps=1 if every_step else None, save_top_k=-1,
                                  save_last=True)
    trainer = L.Trainer(max_epochs=12, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[checkpoints, steps],
                        default_root_dir=root)
    with pytest.raises(NonFiniteLossError) as error:
        trainer.fit(model, data)
    message = str(error.value)
    match = re.search(r"non-finite training loss at global step (\d+): loss=", message)
    assert match, message
    return int(match.group(1)), steps, message


@pytest.mark.slow
@pytest.mark.parametrize("every_step", [True, False])
def test_deferred_check_stops_in_the_first_bad_steps_epoch_naming_it_and_saves_no_diverged_model(
    every_step: bool, tmp_path: Path, data_dir: Path
) -> None:
    bad_step, immediate, _ = _diverge("immediate", data_dir, tmp_path / "immediate", every_step)
    deferred_step, deferred, message = _diverge("deferred", data_dir, tmp_path / "deferred", every_step)
    assert deferred_step == bad_step  # the same first bad step is named
    assert "loss_episode=" in message and "logit_scale=" in message
    epoch_of_bad_step = bad_step // TRAIN_BATCHES
    assert deferred.failed_in_epoch == epoch_of_bad_step == immediate.failed_in_epoch
    assert deferred.batches[-1][0] == epoch_of_bad_step
    if every_step:  # read before the checkpoint of the step after the bad one
        assert deferred.batches[-1][1] == bad_step + 1
    else:  # read where the epoch ends (no host sync before; log_every_n_steps is 50)
        assert deferred.batches[-1][1] == (epoch_of_bad_step + 1) * TRAIN_BATCHES > bad_step + 1
    for path in (tmp_path / "deferred").glob("*.ckpt"):
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        assert checkpoint["global_step"] <= bad_step, path  # saved before the diverged update
        for name, value in checkpoint["state_dict"].items():
            if value.is_floating_point():
                assert torch.isfinite(value).all(), (path, name)
