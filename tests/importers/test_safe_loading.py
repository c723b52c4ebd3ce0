"""Published checkpoints are unpickled with exactly lemniscate's classes (as stand-ins) and torch's
weights-only set resolvable: any other global is refused, naming the file and the global, before it runs."""

from __future__ import annotations

import argparse
import builtins
import logging
import os
import pathlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fam_lightning.importers import PublishedCheckpointError, read_published_checkpoint
from fam_lightning.tools.convert import main as convert_main
from fam_lightning.importers.safe_load import (
    ALLOWED_DESCRIPTION, LEMNISCATE_CLASSES, NAMESPACE_CLASS, THNN_BACKEND, PickledStandIn, allowed_globals,
    load_published_file,
)
from tests.importers.published_files import (
    DIM, source_resnet18, write_lemniscate_checkpoint, write_moco_checkpoint,
)


class SystemPayload:
    """Unpickling this runs ``touch <marker>`` (``os.system``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


class EvalPayload(SystemPayload):
    """Unpickling this writes the marker through ``builtins.eval``."""

    def __reduce__(self) -> tuple:
        return builtins.eval, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def _payload(kind: str, marker: Path) -> dict:
    """Entries of a file whose first disallowed global is ``kind``'s; each would write ``marker``."""
    if kind == "pathlib.PosixPath":  # "lib" is in "pathlib": the old reader unpickled such files fully
        return {"data": pathlib.PosixPath("/data/imagenet"), "hook": SystemPayload(marker)}
    return {"hook": SystemPayload(marker) if kind == "os.system" else EvalPayload(marker)}


GLOBALS = {"pathlib.PosixPath": "pathlib.PosixPath", "os.system": f"{os.system.__module__}.system",
           "builtins.eval": "builtins.eval"}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("kind", list(GLOBALS))
def test_a_file_naming_another_global_is_refused_and_its_payload_never_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, legacy: bool
) -> None:
    marker = tmp_path / "payload_ran"
    path = tmp_path / "lemniscate.pth.tar"
    write_lemniscate_checkpoint(path, source_resnet18("linear", seed=0), torch.randn(8, DIM), monkeypatch,
                                legacy=legacy, extra=_payload(kind, marker))
    with pytest.raises(PublishedCheckpointError) as error:
        read_published_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and f"global {GLOBALS[kind]}," in message
    assert not marker.exists()
    # the converter: the same sentence, exit status 2, nothing written
    assert convert_main([str(path), str(tmp_path / "out.ckpt")]) == 2
    assert not marker.exists() and not (tmp_path / "out.ckpt").exists()


def test_only_the_named_globals_are_resolvable() -> None:
    extra = set(allowed_globals()) - set(torch._weights_only_unpickler._get_allowed_globals())
    assert extra == {*LEMNISCATE_CLASSES, NAMESPACE_CLASS, THNN_BACKEND}
    for name in (*LEMNISCATE_CLASSES, NAMESPACE_CLASS):  # stand-ins named like the class, not the class
        cls = allowed_globals()[name]
        assert issubclass(cls, PickledStandIn) and f"{cls.__module__}.{cls.__qualname__}" == name
    assert allowed_globals()[THNN_BACKEND]() is None


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("kind", ["nce", "linear"])
def test_lemniscate_files_are_read_and_the_warning_names_what_is_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, kind: str, legacy: bool
) -> None:
    memory = F.normalize(torch.randn(10, DIM), dim=1)
    path = tmp_path / "lemniscate.pth.tar"
    write_lemniscate_checkpoint(path, source_resnet18("linear", seed=0), memory, monkeypatch, kind=kind,
                                legacy=legacy)
    with caplog.at_level(logging.WARNING):
        imported = read_published_checkpoint(path)
    assert imported.source == "npid" and torch.equal(imported.bank, memory)
    assert imported.extras.get("nce_z") == (123.0 if kind == "nce" else None)
    assert ALLOWED_DESCRIPTION in caplog.text and str(path) in caplog.text
    assert "weights_only=False" not in caplog.text


def test_a_moco_file_with_the_scripts_args_namespace_is_read_and_its_arguments_ignored(tmp_path: Path) -> None:
    path = tmp_path / "moco.pth.tar"
    args = argparse.Namespace(arch="resnet18", lr=0.03, moco_k=65536, schedule=[120, 160], mlp=True)
    write_moco_checkpoint(path, source_resnet18("mlp", seed=0), None, "module.", extra={"args": args})
    loaded = load_published_file(path)
    assert type(loaded["args"]).__name__ == "Namespace" and loaded["args"].moco_k == 65536  # plain values kept
    assert read_published_checkpoint(path).source == "moco_v2"


def test_a_namespace_holding_another_global_gets_one_clear_sentence(tmp_path: Path) -> None:
    path = tmp_path / "moco.pth.tar"
    args = argparse.Namespace(arch="resnet18", data=pathlib.PosixPath("/data/imagenet"))
    write_moco_checkpoint(path, source_resnet18("linear", seed=0), None, "module.", extra={"args": args})
    with pytest.raises(PublishedCheckpointError) as error:
        read_published_checkpoint(path)
    message = str(error.value)
    assert "\x1b" not in message and "\n" not in message  # no ANSI escapes, one line
    assert message.startswith(f"{path} was not read: it names the global pathlib.PosixPath,")


def test_unreadable_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text("version https://git-lfs.github.com/spec/v1\n")
    for name in ("empty.pth", "text.pth"):
        with pytest.raises(PublishedCheckpointError, match=f"{tmp_path / name} is not a readable torch checkpoint"):
            read_published_checkpoint(tmp_path / name)
    with pytest.raises(PublishedCheckpointError, match="missing.pth"):
        read_published_checkpoint(tmp_path / "missing.pth")
