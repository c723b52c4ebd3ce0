"""The one atomic file write: a temporary file beside the target, then ``os.replace``.

Every file the project writes for a user (checkpoints, tables, figures, PNGs) goes through
:func:`atomic_write`, so an interrupt, a full disk or a crash never leaves a half-written file under
the final name. Pure standard library: data writers, tools and Lightning plugins all import it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_stream", "umask"]


def umask() -> int:
    """The process umask (read without changing it for longer than the call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_beside(path: Path) -> tuple[int, Path]:
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(name, 0o666 & ~umask())  # mkstemp makes 0600; the file is an ordinary one, as ``open`` makes it
    return handle, Path(name)


def atomic_write_stream(path: str | Path, write: Callable[[BinaryIO], None], fsync: bool = False) -> None:
    """Call ``write(stream)`` on a binary stream of a temporary file beside ``path``, then replace ``path``.

    ``fsync=True`` flushes the data to the disk before the rename (checkpoints: a power cut after the
    rename never finds an empty file). On any error, the temporary file is removed and the error re-raised.
    """
    target = Path(path)
    handle, tmp = _temporary_beside(target)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            if fsync:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` with the path of a temporary file beside ``path``, then replace ``path`` with it.

    For writers that want a file name (``Image.save``, ``Figure.savefig``, ``Path.write_text``). On any
    error, the temporary file is removed and the error re-raised: never a partial file under ``path``.
    """
    target = Path(path)
    handle, tmp = _temporary_beside(target)
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
