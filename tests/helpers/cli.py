"""Run the command line as a user would: in this process (fast) or in a fresh one (signals, DDP, torchrun).

:func:`run_cli` calls :func:`fam_lightning.cli.main` (``fam-train`` / ``python train.py``) in-process with
``argv``, inside :func:`isolated`, which restores every piece of global state a run leaves behind, so
tests stay independent of their order. :func:`run_process` is the real thing, a ``python train.py ...``
subprocess, for what needs a process of its own.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import signal
import subprocess
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]

# Small enough for 2 CPU cores, large enough for 5-way 1-shot 15-query val episodes.
TINY_DATA_ARGS = [
    "--data.synthetic_classes", "24",
    "--data.synthetic_images_per_class", "20",
    "--data.image_size", "48",
    "--data.train_episodes", "3",
    "--data.val_episodes", "2",
    "--data.test_episodes", "4",
    "--trainer.log_every_n_steps", "1",
]

# For a config fit that only shows it runs end to end: 32 px, 3-way 1-shot episodes with 2 queries.
SMALL_EPISODE_ARGS = ["--data.image_size", "32", "--data.train_ways", "3", "--data.train_queries", "2",
                      "--data.eval_ways", "3", "--data.eval_queries", "2"]

_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR1", None)) if s is not None)
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning")


@contextlib.contextmanager
def isolated(cwd: Path | None = None, argv: list[str] | None = None) -> Iterator[None]:
    """Run the body as if in a fresh process, then put back what it changed.

    Restored: the working directory, ``sys.argv``, environment variables (``PL_GLOBAL_SEED`` ...),
    signal handlers, warnings filters, the levels / handlers / propagation of the loggers that existed
    before (the root logger's level; its handlers belong to pytest), torch's thread count, grad mode, default dtype,
    deterministic-algorithm and matmul-precision settings, and the python, numpy and torch random states.
    """
    old_cwd, old_argv, old_env = os.getcwd(), sys.argv[:], dict(os.environ)
    handlers = {s: signal.getsignal(s) for s in _SIGNALS}
    loggers = {name: (lg.level, lg.propagate, lg.disabled, lg.handlers[:], lg.filters[:])
               for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    root_level = logging.root.level
    torch_state = _torch_state()
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        with warnings.catch_warnings():
            if cwd is not None:
                os.chdir(cwd)
            if argv is not None:
                sys.argv = argv
            yield
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv
        if dict(os.environ) != old_env:
            os.environ.clear()
            os.environ.update(old_env)
        for sig, handler in handlers.items():
            if signal.getsignal(sig) is not handler:
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for name, (level, propagate, disabled, old_handlers, filters) in loggers.items():
            lg = logging.getLogger(name)
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled
            lg.handlers[:], lg.filters[:] = old_handlers, filters
        logging.root.setLevel(root_level)
        if _torch_state() != torch_state:
            threads, grad, dtype, deterministic, precision = torch_state
            torch.set_num_threads(threads)
            torch.set_grad_enabled(grad)
            torch.set_default_dtype(dtype)
            torch.use_deterministic_algorithms(deterministic)
            torch.set_float32_matmul_precision(precision)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])


def _torch_state() -> tuple:
    return (torch.get_num_threads(), torch.is_grad_enabled(), torch.get_default_dtype(),
            torch.are_deterministic_algorithms_enabled(), torch.get_float32_matmul_precision())


def run_main(main: Callable[[list[str]], object], argv: list[str], cwd: Path, program: str = "train.py",
             check: bool = True) -> subprocess.CompletedProcess:
    """Call an entry point's ``main(argv)`` in-process from ``cwd``, as ``program argv...`` would run.

    What it prints (stdout, stderr, warnings, Lightning's log lines, which a process prints on stderr)
    comes back like a subprocess's; a ``SystemExit`` gives the exit status, the return value of ``main``
    otherwise (None: 0), an uncaught exception status 1 with its traceback on stderr.

    Args:
        check: fail with the output unless the status is 0.
    """
    out, err = io.StringIO(), io.StringIO()
    status: int
    with isolated(cwd, [program, *argv]):
        handler = logging.StreamHandler(err)
        for name in _LIGHTNING_LOGGERS:
            logging.getLogger(name).addHandler(handler)

        def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
            err.write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = show
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                returned = main(list(argv))
                status = int(returned or 0)
            except SystemExit as exit_:
                code = exit_.code
                if isinstance(code, str):
                    err.write(code + "\n")
                    code = 1
                status = int(code or 0)
            except Exception:  # noqa: BLE001  (a process would print it and exit 1)
                err.write(traceback.format_exc())
                status = 1
    proc = subprocess.CompletedProcess([program, *argv], status, out.getvalue(), err.getvalue())
    if check and status != 0:
        raise AssertionError(f"{program} {' '.join(argv)} failed ({status}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def run_cli(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``python train.py <args>`` from ``cwd``, in this process; fails with its output unless ``check=False``."""
    from fam_lightning.cli import main

    return run_main(main, args, cwd, program=str(REPO / "train.py"), check=check)


def run_process(args: list[str], cwd: Path, timeout: float = 600, script: str = "train.py",
                check: bool = True) -> subprocess.CompletedProcess:
    """``python <script> <args>`` in a fresh process from ``cwd`` as a user would; fail with its output."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def popen(args: list[str], cwd: Path, script: str = "train.py") -> subprocess.Popen:
    """``python <script> <args>`` started in the background from ``cwd`` (stdout / stderr piped, as text)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(REPO / script), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
