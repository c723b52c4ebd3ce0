"""Interrupted runs: a checkpoint on SIGTERM / Ctrl+C, RNG states for an exact mid-epoch resume.

:class:`InterruptCheckpoint` is added to every run by the fam-lightning CLI.
On SIGTERM (Lightning sets its flag and raises ``SIGTERMException`` at the
next batch end) or SIGINT (this callback turns the first Ctrl+C into the same
kind of stop at the next training batch end; a second one kills at once), it
writes ``interrupted.ckpt`` beside the other checkpoints through the trainer's
checkpoint IO (atomic with ``AtomicCheckpointIO``). The CLI then exits with
128 + signal number and prints the resume command as its last line.

The checkpoint holds the torch / numpy / python RNG states, which are put
back when a fit restarts mid-epoch, so together with the epoch-seeded
samplers (``fam_lightning.datamodules.sampling.samplers.EpochSeededSampler``, which skip the batches
already run) the resumed run continues the interrupted epoch exactly. What a
mid-epoch resume does not restore: the running epoch-level averages of the
training scalars (``train/*`` epoch means restart from the resumed batch).
"""

from __future__ import annotations

import random
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

RNG_KEY = "fam_rng_states"
INTERRUPTED_NAME = "interrupted.ckpt"


class InterruptCheckpoint(Callback):
    """Save ``interrupted.ckpt`` when a fit is stopped by SIGTERM or SIGINT; restore RNGs on mid-epoch resume.

    Both signals stop the run at the same point, the end of the current training step (after its hooks,
    logging and progress counters), so the checkpoint's step count and batch progress agree and a resume
    continues at the next batch: SIGTERM through Lightning's own flag, Ctrl+C by raising that same flag.
    A signal that arrives during validation is held until the validation has finished (its metrics,
    probe grid and checkpoints are written), then the run stops: a preempted job loses no validation.

    After the run, :attr:`saved_path` is the checkpoint written (None if none), :attr:`signal_number`
    the signal that stopped it and :attr:`stage` the trainer function it stopped (``"fit"``, ``"validate"`` ...).
    """

    def __init__(self) -> None:
        self.saved_path: Path | None = None
        self.signal_number: int | None = None
        self.stage: str | None = None
        self._sigint_seen = False
        self._held_during_validation = False
        self._previous_sigint: Any = None
        self._trainer: L.Trainer | None = None
        self._rng_states: dict[str, Any] | None = None

    # -- signals ------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # installed at setup, before any callback's on_fit_start / on_train_start (the FAM step-0 pass)
        self._trainer = trainer
        self._sigint_seen = False
        if stage != "fit":
            return
        try:
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread: leave Ctrl+C to Lightning
            self._previous_sigint = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_sigint()
        self._trainer = None

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self._sigint_seen = True
        self._restore_sigint()  # a second Ctrl+C stops at once
        rank_zero_info("\nCtrl+C: finishing the current training step (and any validation), then saving a checkpoint "
                       "(Ctrl+C again to kill)")
        if self._trainer is not None:
            self._trainer._signal_connector.received_sigterm = True  # Lightning stops at the step's end

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    # -- a stop requested during validation waits for its end -------------------------------
    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.state.fn == "fit" and trainer.received_sigterm:
            trainer._signal_connector.received_sigterm = False  # Lightning would stop after this batch
            self._held_during_validation = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._held_during_validation:
            self._held_during_validation = False
            trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_sigint()
        if isinstance(exception, SIGTERMException):
            self.signal_number = int(signal.SIGINT if self._sigint_seen else signal.SIGTERM)
        elif isinstance(exception, KeyboardInterrupt):  # a second Ctrl+C, or one outside a fit
            self.signal_number = int(signal.SIGINT)
            self.stage = str(trainer.state.fn.value) if trainer.state.fn else None
            return
        else:
            return
        self.stage = str(trainer.state.fn.value) if trainer.state.fn else None
        if self.stage != "fit" or trainer.global_step == 0:
            return  # validate / test / predict have nothing to resume; a fit before its first step neither
        path = self.checkpoint_dir(trainer) / INTERRUPTED_NAME
        trainer.save_checkpoint(path)
        self.saved_path = path

    @staticmethod
    def checkpoint_dir(trainer: L.Trainer) -> Path:
        """Where ``interrupted.ckpt`` goes: the ModelCheckpoint folder, else ``<log dir>/checkpoints``."""
        dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
        if dirpath:
            return Path(dirpath)
        root = trainer.log_dir or trainer.default_root_dir
        return Path(root) / "checkpoints"

    # -- RNG states for a mid-epoch resume -------------------------------------------------
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_KEY] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._rng_states = checkpoint.get(RNG_KEY)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loop = trainer.fit_loop
        if not trainer.ckpt_path:
            return
        done = loop.epoch_loop.batch_progress.current.completed
        if loop.restarted_mid_epoch:
            if self._rng_states is not None:
                _set_rng_states(self._rng_states)
            rank_zero_info(
                f"Resuming mid-epoch: epoch {trainer.current_epoch} continues at training batch {done} "
                f"(global step {trainer.global_step}); the epoch means of train/* restart from this batch"
            )
        else:
            rank_zero_info(
                f"Resuming after epoch {trainer.current_epoch - 1} (global step {trainer.global_step}): "
                f"epoch {trainer.current_epoch} runs as in an uninterrupted run; steps after this checkpoint were lost"
            )
        self._rng_states = None


def _numpy_state() -> dict[str, Any]:
    # as tensors and plain numbers: Lightning loads checkpoints with weights_only=True, which refuses numpy arrays
    name, keys, *rest = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "rest": [int(rest[0]), int(rest[1]), float(rest[2])]}


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    numpy = states["numpy"]
    np.random.set_state((numpy["name"], numpy["keys"].numpy().astype(np.uint32), *numpy["rest"]))
    random.setstate(states["python"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
