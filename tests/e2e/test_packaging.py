"""Packaging: the wheel holds every package under fam_lightning.*, no generic top-level names, and the
entry points; installed, it imports and runs from any folder."""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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
    for installed, folder in (("fam_lightning.datamodules", "datamodules"), ("fam_lightning.callbacks", "callbacks")):
        for sub in (ROOT / folder).rglob("*.py"):
            in_tree.add(".".join([installed, *sub.parent.relative_to(ROOT / folder).parts]))
    in_tree |= {"fam_lightning"}
    assert in_tree <= listed, f"packages missing from pyproject.toml: {sorted(in_tree - listed)}"
    missing_init = sorted(p for p in in_tree if not _folder(p).joinpath("__init__.py").is_file())
    assert not missing_init, f"package folders without __init__.py: {missing_init}"


def _folder(package: str) -> Path:
    parts = package.split(".")
    if parts[1:2] in (["datamodules"], ["callbacks"]):
        return ROOT.joinpath(*parts[1:])
    return ROOT.joinpath(*parts)


def test_version_is_the_one_pyproject_declares() -> None:
    import fam_lightning

    assert fam_lightning.__version__ == _pyproject()["project"]["version"]


CHECKOUT_ONLY = ("fam_lightning.train", "fam_lightning.benchmarks", "fam_lightning.tests", "fam_lightning.configs",
                 "datamodules", "callbacks")


def _importable(python: str, names: tuple[str, ...], cwd: Path, env: dict[str, str] | None = None) -> dict[str, bool]:
    code = (
        "import importlib, json, sys\n"
        "found = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "        found[name] = True\n"
        "    except ModuleNotFoundError:\n"
        "        found[name] = False\n"
        "print(json.dumps(found))\n"
    )
    result = subprocess.run([python, "-c", code, *names], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.slow
def test_the_editable_install_has_one_name_per_module(tmp_path: Path) -> None:
    """This venv's install (``-e .``): package names resolve from any folder, checkout-only names do not."""
    found = _importable(sys.executable, ("fam_lightning.datamodules.fewshot", "fam_lightning.callbacks.fam",
                                         *CHECKOUT_ONLY), cwd=tmp_path, env={"PATH": "/usr/bin:/bin"})
    assert found["fam_lightning.datamodules.fewshot"] and found["fam_lightning.callbacks.fam"]
    assert not any(found[name] for name in CHECKOUT_ONLY), found


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
    found = _importable(sys.executable, CHECKOUT_ONLY, cwd=elsewhere, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert not any(found.values()), f"an installed copy must not provide {[n for n, ok in found.items() if ok]}"


@pytest.mark.slow
def test_every_folder_of_datamodules_and_callbacks_is_in_the_wheel(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("datamodules", "callbacks"):
        for source in (ROOT / folder).rglob("*.py"):
            installed = f"fam_lightning/{folder}/{source.relative_to(ROOT / folder).as_posix()}"
            assert installed in names, f"{installed} is missing from the wheel"
