"""The house rules of the import graph (CONTRIBUTING.md), checked by reading the source with ``ast``.

Every module of the installed package (``fam_lightning/``, ``datamodules/`` as ``fam_lightning.datamodules``,
``callbacks/`` as ``fam_lightning.callbacks``) is parsed, never imported; every ``import`` counts, at module
level, inside functions and under ``if TYPE_CHECKING:`` alike (a guard or a local import that hides a
circle is still a circle).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"fam_lightning": ROOT / "fam_lightning", "fam_lightning.datamodules": ROOT / "datamodules",
           "fam_lightning.callbacks": ROOT / "callbacks"}
LIGHTNING = ("lightning", "pytorch_lightning")
MAX_LINES = 350
# entry-point shims: run as scripts, imported by nothing (python -m fam_lightning.importers)
ENTRY_POINTS = {"fam_lightning.importers.__main__"}


@cache
def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package."""
    found: dict[str, Path] = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            if package == "fam_lightning" and path.relative_to(folder).parts[0] in ("datamodules", "callbacks"):
                continue  # an installed layout's copies; the checkout has none
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _imported_names(name: str, path: Path) -> Iterator[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            submodules = [f"{module}.{alias.name}" for alias in node.names]
            yield from submodules  # `from pkg import submodule` imports the submodule ...
            if not all(sub in modules() for sub in submodules):
                yield module  # ... and `from pkg import name` the package (an import of a submodule alone
                # also runs its parents' __init__, but that is how every submodule is reached: not an edge)


@cache
def graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (plus the external top-level names, prefixed 'ext:')."""
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        targets: set[str] = set()
        for imported in _imported_names(name, path):
            if imported in known:
                targets.add(imported)
            elif imported.split(".")[0] != "fam_lightning":
                targets.add("ext:" + imported.split(".")[0])
        targets.discard(name)
        edges[name] = targets
    return edges


def _reaches(start: str, wanted: callable) -> list[str] | None:
    """The import chain from ``start`` to the first module ``wanted`` accepts, or None."""
    edges, seen, stack = graph(), {start}, [(start, [start])]
    while stack:
        node, chain = stack.pop()
        for target in sorted(edges.get(node, ())):
            if wanted(target):
                return [*chain, target]
            if target in edges and target not in seen:
                seen.add(target)
                stack.append((target, [*chain, target]))
    return None


def test_the_graph_sees_every_part_of_the_package() -> None:
    names = modules()
    for expected in ("fam_lightning.fam", "fam_lightning.models.memory_bank", "fam_lightning.importers.npid",
                     "fam_lightning.datamodules.fewshot", "fam_lightning.callbacks.fam"):
        assert expected in names
    assert "fam_lightning.importers" in graph()["fam_lightning.models.published"]


def test_no_import_circle() -> None:
    edges = {name: {t for t in targets if not t.startswith("ext:")} for name, targets in graph().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for name in sorted(edges):
        if name not in index:
            visit(name)
    assert not circles, "modules that import each other (directly or around a circle): " + "; ".join(
        " <-> ".join(c) for c in circles)


@pytest.mark.parametrize("layer", ["formats", "sampling", "synthetic"])
def test_data_readers_samplers_and_writers_never_reach_lightning(layer: str) -> None:
    prefix = f"fam_lightning.datamodules.{layer}"
    members = [name for name in modules() if name == prefix or name.startswith(prefix + ".")]
    assert members, f"no modules under {prefix}"
    for name in members:
        chain = _reaches(name, lambda target: target in {f"ext:{n}" for n in LIGHTNING})
        assert chain is None, f"{name} imports Lightning: {' -> '.join(chain)}"


def test_readers_of_published_files_never_import_a_model() -> None:
    for name in modules():
        if name.startswith("fam_lightning.importers") and name not in ENTRY_POINTS:
            chain = _reaches(name, lambda target: target.startswith("fam_lightning.models"))
            assert chain is None, f"{name} reaches a model: {' -> '.join(chain)}"


@pytest.mark.parametrize("lower, higher", [
    ("fam_lightning.fam", "fam_lightning.models"),
    ("fam_lightning.explainers", "fam_lightning.models"),
    ("fam_lightning.metrics", "fam_lightning.models"),
    ("fam_lightning.datamodules", "fam_lightning.models"),
    ("fam_lightning.models", "fam_lightning.callbacks"),
    ("fam_lightning.models", "fam_lightning.tools"),
    ("fam_lightning.callbacks", "fam_lightning.tools"),
    ("fam_lightning.callbacks", "fam_lightning.cli"),
])
def test_imports_only_go_down(lower: str, higher: str) -> None:
    for name in modules():
        if name == lower or name.startswith(lower + "."):
            chain = _reaches(name, lambda target: target == higher or target.startswith(higher + "."))
            assert chain is None, f"{lower} must not import {higher}: {' -> '.join(chain)}"


def test_the_math_never_imports_lightning() -> None:
    for part in ("fam_lightning.fam", "fam_lightning.similarity", "fam_lightning.explainers", "fam_lightning.losses",
                 "fam_lightning.knn", "fam_lightning.seeding", "fam_lightning.io"):
        for name in modules():
            if name == part or name.startswith(part + "."):
                chain = _reaches(name, lambda target: target in {f"ext:{n}" for n in LIGHTNING})
                assert chain is None, f"{name} imports Lightning: {' -> '.join(chain)}"


def test_package_code_never_uses_the_checkout_only_names() -> None:
    for name, targets in graph().items():
        wrong = sorted(t for t in targets if t in {"ext:datamodules", "ext:callbacks", "ext:tests", "ext:benchmarks"})
        assert not wrong, f"{name} imports {wrong}: use fam_lightning.datamodules / fam_lightning.callbacks"


def test_no_file_is_over_the_size_limit() -> None:
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines (split them by role): {long}"
