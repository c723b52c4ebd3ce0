"""Checkpoints written atomically: a crash mid-save never leaves a truncated .ckpt.

A write that fails (a full disk, a file-size limit, a read-only folder) removes its temporary file
and raises :class:`CheckpointWriteError`, whose message names the checkpoint, the operating
system's reason and the free space left, instead of torch's zip-writer error
(``unexpected pos ... vs ...``) that hides the real cause.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from fam_lightning.io import atomic_write_stream


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the message says which file, why, and how much space is free."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to a temporary file in the target folder, fsync, then ``os.replace``; mode as the umask allows."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO takes no storage_options, got {storage_options!r}")
        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_stream(target, lambda stream: torch.save(checkpoint, stream), fsync=True)
        except (OSError, RuntimeError) as err:
            raise write_error(target, err) from err


def _os_cause(err: BaseException) -> OSError | None:
    """The OSError behind ``err`` (itself, or in its cause / context chain), if any."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current
        current = current.__cause__ or current.__context__
    return None


def write_error(target: Path, err: BaseException) -> CheckpointWriteError:
    """A :class:`CheckpointWriteError` for a failed write of ``target``, naming the cause and the free space."""
    cause = _os_cause(err)
    code = cause.errno if cause is not None else None
    reason = os.strerror(code) if code is not None else str(err).splitlines()[0]
    if code is None and "unexpected pos" in str(err):  # torch's zip writer after a short write
        reason = "the write was cut short (disk full or a file-size limit?)"
    folder = target.parent if target.parent.exists() else Path(os.path.abspath(os.sep))
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:,.0f} MiB free in {folder}"
    except OSError:
        free = "free space unknown"
    hint = " Free some space or point trainer.logger.save_dir elsewhere." if code in (
        errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", -1)) else ""
    return CheckpointWriteError(code or errno.EIO, f"cannot write checkpoint {target}: {reason} ({free}).{hint}")
