"""Packaging: the wheel holds every package under fam_lightning.*, no generic top-level names, and the
entry points; installed, it imports and runs from any folder."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "fam-train": "fam_lightning.cli:main",
    "fam-explain": "fam_lightning.tools.explain:main",
    "fam-evaluate": "fam_lightning.tools.evaluate:main",
    "fam-sanity": "fam_lightning.tools.sanity:main",
    "fam-benchmark": "fam_lightning.tools.benchmark:main",
    "fam-convert": "fam_lightning.tools.convert:main",
}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_of_the_tree_is_listed() -> None:
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    in_tree = {
        "fam_lightning." + ".".join(init.parent.relative_to(ROOT / "fam_lightning").parts)
        for init in (ROOT / "fam_lightning").rglob("__init__.py")
        if init.parent != ROOT / "fam_lightning"
    }
    in_tree |= {"fam_lightning", "fam_lightning.datamodules", "fam_lightning.callbacks"}
    assert in_tree <= listed, f"packages missing from pyproject.toml: {sorted(in_tree - listed)}"


def test_entry_points_are_declared() -> None:
    assert _pyproject()["project"]["scripts"] == SCRIPTS


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    source = out / "source"  # a copy, so that the build leaves nothing in the checkout
    tracked = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in tracked:
        if (ROOT / name).is_file() and name.split("/")[0] in {"fam_lightning", "datamodules", "callbacks"}:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        cwd=out,
    )
    (built,) = out.glob("fam_lightning-*.whl")
    return built


@pytest.mark.slow
def test_wheel_installs_under_one_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"fam_lightning"}
    for module in ("fam_lightning/datamodules/fewshot.py", "fam_lightning/callbacks/fam.py", "fam_lightning/cli.py"):
        assert module in names
    (entry_points,) = [name for name in names if name.endswith("entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(zipfile.ZipFile(wheel).read(entry_points).decode())
    assert dict(parser["console_scripts"]) == SCRIPTS


@pytest.mark.slow
def test_installed_package_runs_from_another_folder(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import sys\n"
        "import fam_lightning.callbacks, fam_lightning.datamodules, fam_lightning.models\n"
        "assert fam_lightning.datamodules.__file__.startswith(sys.argv[1]), fam_lightning.datamodules.__file__\n"
        "assert 'datamodules' not in sys.modules and 'callbacks' not in sys.modules\n"
        "from fam_lightning.cli import main\n"
        "sys.argv = ['fam-train', 'fit', '--help']\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(site)],
        cwd=elsewhere,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--data.help" in result.stdout or "--data CONFIG" in result.stdout
