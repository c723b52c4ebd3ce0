"""Modules that moved in the 0.3 restructuring keep importing under their old dotted names.

Checkpoints and configs name classes by dotted path (``fam_lightning.datamodules.cub.CUBDataset``); a
module that moved must still resolve there. :data:`MOVED` maps each old module name to its new one; the
finder below (appended to ``sys.meta_path`` by ``fam_lightning/__init__.py``, so it is only asked for
names no file provides) serves the new module under the old name, with a ``DeprecationWarning``. The old
name and the new one are then the same module object: never two copies of one class.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

# old module -> new module (add a line for every module you move)
MOVED: dict[str, str] = {
    "fam_lightning.plots": "fam_lightning.visualize.plots",
    "fam_lightning.datamodules.checks": "fam_lightning.datamodules.formats.checks",
    "fam_lightning.datamodules.cub": "fam_lightning.datamodules.formats.cub",
    "fam_lightning.datamodules.imagenet": "fam_lightning.datamodules.formats.imagenet",
    "fam_lightning.datamodules.episodes": "fam_lightning.datamodules.sampling.episodes",
    "fam_lightning.datamodules.sampler": "fam_lightning.datamodules.sampling.samplers",
    "fam_lightning.datamodules.drawing": "fam_lightning.datamodules.synthetic.drawing",
    "fam_lightning.datamodules.synthetic_imagenet": "fam_lightning.datamodules.synthetic.imagenet_layout",
    "fam_lightning.datamodules.cub_source": "fam_lightning.datamodules.base",
    "fam_lightning.importers.bank": "fam_lightning.models.bank_fill",
}


class _MovedModuleLoader(importlib.abc.Loader):
    def __init__(self, new_name: str) -> None:
        self.new_name = new_name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"{spec.name} moved to {self.new_name}; the old name is an alias that will be removed",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(self.new_name)
        self._spec = module.__spec__  # the import system stamps the alias's spec on it next: put it back
        return module

    def exec_module(self, module: ModuleType) -> None:  # already executed under its new name
        module.__spec__ = self._spec


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the modules listed in :data:`MOVED` (and only those)."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        new_name = MOVED.get(fullname)
        if new_name is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedModuleLoader(new_name))


def install() -> None:
    """Append the finder to ``sys.meta_path`` once."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
