"""Every benchmark and table script imports (a moved module breaks them first, and nothing else runs them)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for folder in ("benchmarks", "scripts") for p in (ROOT / folder).glob("*.py"))


def test_there_are_scripts_to_check() -> None:
    assert any(p.name == "scaling.py" for p in SCRIPTS) and any(p.name == "families_table.py" for p in SCRIPTS)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_imports(path: Path) -> None:
    if path.parent.name == "benchmarks":  # a package: its scripts import benchmarks.common
        module = importlib.import_module(f"benchmarks.{path.stem}")
    else:
        spec = importlib.util.spec_from_file_location(f"_script_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    if path.stem not in ("__init__", "common", "scaling_data", "scaling_knn"):
        assert callable(getattr(module, "main", None)), f"{path} has no main()"
