"""Reproducible resume, non-finite loss guards and NaN-honest metrics, shared by every model family.

Resume contract (CPU: bit for bit; see DESIGN.md "Resume and failure semantics"):

- The global torch / numpy / python RNGs are reseeded at the start of every
  training epoch from ``(seed, epoch, rank)`` (:func:`seed_epoch`), so dropout,
  DropBlock and NPID's noise samples of epoch ``e`` do not depend on what ran
  before it (an earlier epoch, a sanity check, a resume).
- Data-side draws (episodes, shuffles, augmentation) are functions of
  ``(seed, epoch, item)`` (``fam_lightning.datamodules.sampling.samplers.EpochSeededSampler``).
- The cosine schedule's horizon is fixed by the first run: resuming with a
  different ``trainer.max_epochs`` stops with :class:`ScheduleHorizonError`
  instead of silently keeping (or bending) the old curve.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torchmetrics import SumMetric

from fam_lightning.seeding import global_seed, mix_seed, seed_epoch  # noqa: F401  (re-exported)


class NonFiniteLossError(FloatingPointError):
    """The training loss became inf or NaN: the run stops instead of training on garbage."""


def check_finite_loss(step: int, loss: Tensor, terms: Mapping[str, Tensor | None]) -> None:
    """Raise :class:`NonFiniteLossError` naming the step and every loss term if ``loss`` is not finite.

    One host sync per step (``bool(tensor)``), the price of stopping at the first bad step; free on
    CPU tensors. :class:`FiniteLossGuard` checks accelerator losses without it.
    """
    if bool(torch.isfinite(loss.detach()).all()):
        return
    raise NonFiniteLossError(_nonfinite_message(step, loss, terms))


def _nonfinite_message(step: int, loss: Tensor, terms: Mapping[str, Tensor | None], detected: int | None = None) -> str:
    shown = ", ".join(f"{name}={_describe(value)}" for name, value in terms.items() if value is not None)
    when = "" if detected is None or detected == step else f" (detected at global step {detected}, the next host sync)"
    return (
        f"non-finite training loss at global step {step}: loss={_describe(loss)} ({shown}){when}. "
        "The run stops here and keeps no checkpoint of this model; lower the learning rate "
        "(model.init_args.lr) or check the inputs of this step"
    )


NONFINITE_CHECKS = ("auto", "immediate", "deferred")


class FiniteLossGuard:
    """The non-finite-loss check of every training step, with or without a host sync per step.

    - ``"immediate"``: :func:`check_finite_loss` at every step (one host sync each; on CPU
      tensors that costs nothing).
    - ``"deferred"``: each step only updates device tensors (a "seen a bad loss" flag, the
      global step of the first bad loss and that step's loss and terms); :meth:`flush` reads
      the flag (one host sync) and raises the same :class:`NonFiniteLossError`, naming the
      first bad step. :class:`ReliableTraining` flushes where Lightning syncs anyway (at
      logging steps and at the end of every training epoch), before every validation and
      before every checkpoint is written, so a diverged run still stops in the epoch of its
      first bad step and no checkpoint of it is kept.
    - ``"auto"`` (default): immediate for CPU losses, deferred on accelerators.

    Under DDP :meth:`flush` with ``reduce=True`` (called at points every rank reaches together)
    all-reduces the flag and the first bad step, so every rank stops at the same point.
    """

    def __init__(self, mode: str = "auto") -> None:
        if mode not in NONFINITE_CHECKS:
            raise ValueError(f"nonfinite_check must be one of {NONFINITE_CHECKS}, got {mode!r}")
        self.mode = mode
        self.reset()

    def reset(self) -> None:
        self._bad: Tensor | None = None  # () bool: a non-finite loss was seen
        self._step: Tensor | None = None  # () long: global step of the first one
        self._loss: Tensor | None = None
        self._terms: dict[str, Tensor] = {}

    def deferred(self, loss: Tensor) -> bool:
        return self.mode == "deferred" or (self.mode == "auto" and loss.device.type != "cpu")

    @torch.no_grad()
    def check(self, step: int, loss: Tensor, terms: Mapping[str, Tensor | None]) -> None:
        """Check one step's ``loss`` (and keep its ``terms`` for the message) at global step ``step``."""
        if not self.deferred(loss):
            check_finite_loss(step, loss, terms)
            return
        loss = loss.detach()
        bad = ~torch.isfinite(loss).all()
        if self._bad is None:
            self._bad = torch.zeros((), dtype=torch.bool, device=loss.device)
            self._step = torch.zeros((), dtype=torch.long, device=loss.device)
        first = bad & ~self._bad  # this step is the first bad one
        self._step = torch.where(first, step, self._step)  # a python scalar: no host-to-device copy
        self._loss = torch.where(first, loss, loss if self._loss is None else self._loss)
        for name, value in terms.items():
            if value is not None:
                value = value.detach()
                held = self._terms.get(name)
                self._terms[name] = torch.where(first, value, value if held is None else held)
        self._bad = self._bad | bad

    def flush(self, detected: int, reduce: bool = False) -> None:
        """Raise :class:`NonFiniteLossError` if a deferred check saw a non-finite loss (one host sync).

        Args:
            detected: the current global step (named in the message beside the first bad one).
            reduce: all-reduce over DDP ranks first (every rank must call it at the same point).
        """
        if self._bad is None:
            return
        local_bad = self._bad
        step = self._step
        if reduce and torch.distributed.is_available() and torch.distributed.is_initialized():
            never = torch.iinfo(torch.long).max
            packed = torch.stack([local_bad.long(), torch.where(local_bad, -step, -never)])
            torch.distributed.all_reduce(packed, op=torch.distributed.ReduceOp.MAX)
            any_bad, step = packed[0] > 0, -packed[1]
        else:
            any_bad = local_bad
        if not bool(any_bad):  # the host sync
            return
        first_step = int(step)
        if not bool(local_bad):
            raise NonFiniteLossError(
                f"non-finite training loss at global step {first_step} on another rank (detected at global step "
                f"{detected}). The run stops here and keeps no checkpoint of this model; lower the learning rate "
                "(model.init_args.lr) or check the inputs of that step"
            )
        raise NonFiniteLossError(_nonfinite_message(int(self._step), self._loss, self._terms, detected))


def _describe(value: Tensor) -> str:
    value = value.detach().float()
    if value.numel() == 1:
        return f"{value.item():.6g}"
    return "[" + ", ".join(f"{v:.6g}" for v in value.flatten().tolist()) + "]"


def check_finite_weights(module: torch.nn.Module, step: int) -> None:
    """Raise :class:`NonFiniteLossError` naming the first tensors with inf / NaN (one host sync)."""
    tensors = [(name, t) for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_floating_point()]
    if not tensors or bool(torch.stack([torch.isfinite(t.detach()).all() for _, t in tensors]).all()):
        return
    bad = [name for name, t in tensors if not bool(torch.isfinite(t.detach()).all())]
    raise NonFiniteLossError(
        f"non-finite weights after global step {step} (the last update of the epoch diverged): "
        f"{', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}. The run stops before validating or saving "
        "this model; lower the learning rate (model.init_args.lr)"
    )


class ScheduleHorizonError(ValueError):
    """A resumed run asks for another ``max_epochs`` than the learning-rate schedule was built for."""


def check_schedule_horizon(checkpoint: Mapping[str, Any], max_epochs: int | None) -> None:
    """Refuse to resume a cosine schedule over a different number of epochs.

    The scheduler state in the checkpoint holds ``T_max`` of the first run;
    Lightning would restore it and keep annealing towards the old end. Raising
    here makes the choice explicit: resume with the same ``max_epochs``, or
    start a new run from the weights.
    """
    if max_epochs is None or max_epochs < 1:
        return
    for state in checkpoint.get("lr_schedulers", []) or []:
        t_max = state.get("T_max") if isinstance(state, Mapping) else None
        if t_max is not None and int(t_max) != max(1, max_epochs):
            raise ScheduleHorizonError(
                f"the checkpoint's cosine learning-rate schedule runs over T_max={t_max} epochs, but this run has "
                f"trainer.max_epochs={max_epochs}. Resuming keeps the schedule, so resume with "
                f"--trainer.max_epochs {t_max}; to train longer, start a new run initialised from the checkpoint's "
                "weights instead of --ckpt_path"
            )


class NonFiniteCount(SumMetric):
    """Counts evaluated items with a non-finite score (summed over DDP ranks)."""

    def __init__(self) -> None:
        super().__init__(nan_strategy="error")

    def update(self, scores: Tensor) -> None:  # type: ignore[override]
        """``scores`` (B, ...): counts rows holding any inf or NaN."""
        bad = ~torch.isfinite(scores.detach()).flatten(1).all(1)
        super().update(bad.sum().to(torch.float64))


def nan_if_nonfinite(value: Tensor, nonfinite: Tensor) -> Tensor:
    """``value``, or NaN when any evaluated score was non-finite: argmax of NaN is not an accuracy."""
    value = torch.as_tensor(value, dtype=torch.float32)
    return torch.where(nonfinite.to(value.device) > 0, torch.full_like(value, float("nan")), value)


class ReliableTraining:
    """LightningModule mixin: per-epoch reseeding, the schedule-horizon check on resume, the
    non-finite-loss guard (:meth:`guard_finite_loss`, see :class:`FiniteLossGuard`) and a
    finite-weights check before every validation of a fit (so no checkpoint of a diverged
    model is saved, even when the loss of the last step was still finite).

    ``nonfinite_check`` ("auto" | "immediate" | "deferred", an attribute that may be set on an
    instance) chooses how the loss is checked; "auto" syncs per step only on CPU.

    Put it before ``L.LightningModule`` in the bases; a subclass overriding one of
    these hooks calls ``super()``.
    """

    nonfinite_check: str = "auto"

    def guard_finite_loss(self, loss: Tensor, terms: Mapping[str, Tensor | None]) -> None:
        """Check this training step's ``loss`` (``terms`` are named in the error)."""
        guard = self._finite_loss_guard()
        guard.check(self.global_step, loss, terms)  # type: ignore[attr-defined]

    def _finite_loss_guard(self) -> FiniteLossGuard:
        guard = self.__dict__.get("_finite_guard")
        if guard is None or guard.mode != self.nonfinite_check:
            guard = FiniteLossGuard(self.nonfinite_check)
            self.__dict__["_finite_guard"] = guard
        return guard

    def _flush_finite_loss_guard(self, reduce: bool) -> None:
        guard = self.__dict__.get("_finite_guard")
        if guard is not None:
            guard.flush(self.trainer.global_step, reduce=reduce)  # type: ignore[attr-defined]

    def on_train_epoch_start(self) -> None:
        seed_epoch(self.trainer.current_epoch, self.trainer.global_rank)  # type: ignore[attr-defined]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        trainer = self.trainer  # type: ignore[attr-defined]
        # Lightning reads the logged values on logging steps (a host sync anyway): read the flag there too
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            self._flush_finite_loss_guard(reduce=True)

    def on_train_epoch_end(self) -> None:
        self._flush_finite_loss_guard(reduce=True)

    def on_validation_start(self) -> None:
        trainer = self.trainer  # type: ignore[attr-defined]
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._flush_finite_loss_guard(reduce=True)
            check_finite_weights(self, trainer.global_step)  # type: ignore[arg-type]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if getattr(self, "_trainer", None) is not None:
            self._flush_finite_loss_guard(reduce=False)  # never a checkpoint of a diverged model

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.state.fn == "fit":
            check_schedule_horizon(checkpoint, trainer.max_epochs)
