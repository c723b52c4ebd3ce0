"""fam-convert as a user runs it, under both of its names (one process each: the entry-point smoke tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("command", [
    [str(Path(sys.executable).parent / "fam-convert")],
    [sys.executable, "-m", "fam_lightning.importers"],  # the 0.2 name
])
def test_a_missing_file_is_named_in_one_line_with_exit_status_2(command: list[str], tmp_path: Path) -> None:
    missing, target = tmp_path / "lemniscate_resnet50.pth.tar", tmp_path / "out.ckpt"
    result = subprocess.run([*command, str(missing), str(target)], cwd=tmp_path, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(missing) in last, last
    assert "Traceback" not in result.stderr
    assert not target.exists()
