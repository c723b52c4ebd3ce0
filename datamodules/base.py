"""The data source the three DataModules share: a folder given by the user, or the synthetic default.

``root`` names a real data set (CUB or ImageNet layout); with ``root=None`` a synthetic one is
drawn once under ``data_dir``, in a folder named by its parameters, and reused afterwards. Writing
it is atomic, so DDP processes that race to write it are safe. The synthetic parameters come from
the DataModule's own ``synthetic_*`` arguments (read from its saved hyperparameters), so each
DataModule lists them in its signature (configs and checkpoints store them) and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .formats.cub_metadata import CUBMetadata, check_cub_data, read_cub_metadata
from .formats.imagenet_index import ImageNetIndex, check_imagenet_index, read_imagenet_split
from .formats.images import IMAGENET_MEAN, IMAGENET_STD
from .synthetic.cub_layout import default_synthetic_root, write_synthetic_cub
from .synthetic.imagenet_layout import default_synthetic_imagenet_root, write_synthetic_imagenet


class DataSource:
    """Mixin of a DataModule: ``root``, or the synthetic default under ``data_dir`` (written on first use).

    Subclasses name the synthetic writer's parameters (:attr:`SYNTHETIC_ARGUMENTS`: writer parameter ->
    DataModule argument) and its two functions, and call :meth:`_init_source` in ``__init__`` after
    ``save_hyperparameters()``.
    """

    SYNTHETIC_ARGUMENTS: Mapping[str, str] = {}
    synthetic_root: Callable[..., Path]
    write_synthetic: Callable[..., Path]

    root: str | None
    data_dir: str
    hparams: Any

    def _init_source(self) -> None:
        self.root = self.hparams["root"]
        self.verify_images: bool = self.hparams["verify_images"]
        self.data_dir = self.hparams["data_dir"]
        self.synthetic_params: dict[str, int] = {
            key: self.hparams[argument] for key, argument in self.SYNTHETIC_ARGUMENTS.items()
        }
        # The normalisation applied to every image; visualisation code undoes it.
        self.mean: tuple[float, float, float] = IMAGENET_MEAN
        self.std: tuple[float, float, float] = IMAGENET_STD

    @property
    def data_root(self) -> Path:
        """The folder read: ``root``, or the synthetic default's folder."""
        if self.root is not None:
            return Path(self.root)
        return type(self).synthetic_root(self.data_dir, **self.synthetic_params)

    def _ensure_data(self) -> Path:
        """Write the synthetic default if it is needed and missing; a no-op for a real root."""
        if self.root is None:
            type(self).write_synthetic(self.data_root, **self.synthetic_params)
        return self.data_root

    def prepare_data(self) -> None:
        """Write the synthetic default once (on one process per node)."""
        self._ensure_data()


class CUBSource(DataSource):
    """A CUB-layout folder, or the synthetic CUB-layout default (few-shot and retrieval data)."""

    SYNTHETIC_ARGUMENTS = {
        "num_classes": "synthetic_classes",
        "images_per_class": "synthetic_images_per_class",
        "image_size": "synthetic_image_size",
        "seed": "synthetic_seed",
        "distractors": "synthetic_distractors",
    }
    synthetic_root = staticmethod(default_synthetic_root)
    write_synthetic = staticmethod(write_synthetic_cub)

    def _init_source(self) -> None:
        super()._init_source()
        self._metadata: CUBMetadata | None = None

    @property
    def metadata(self) -> CUBMetadata:
        """Parsed and checked metadata of ``data_root`` (written first for the synthetic default).

        The first access checks the folder (:func:`fam_lightning.datamodules.formats.cub_metadata.check_cub_data`):
        missing images and boxes outside their image are reported before training.
        """
        if self._metadata is None:
            self._metadata = check_cub_data(read_cub_metadata(self._ensure_data()), self.verify_images)
        return self._metadata


class ImageNetSource(DataSource):
    """An ImageNet-layout folder, or the synthetic ImageNet-layout default (contrastive data)."""

    SYNTHETIC_ARGUMENTS = {
        "num_classes": "synthetic_classes",
        "train_per_class": "synthetic_train_per_class",
        "val_per_class": "synthetic_val_per_class",
        "image_size": "synthetic_image_size",
        "seed": "synthetic_seed",
        "distractors": "synthetic_distractors",
    }
    synthetic_root = staticmethod(default_synthetic_imagenet_root)
    write_synthetic = staticmethod(write_synthetic_imagenet)

    def _init_source(self) -> None:
        super()._init_source()
        self.boxes_dir: str | None = self.hparams["boxes_dir"]
        self._indices: dict[str, ImageNetIndex] = {}

    def split_index(self, split: str) -> ImageNetIndex:
        """The checked listing of "train" (no boxes read) or "val" (boxes read, labels in train's order).

        Checked when first listed (:func:`fam_lightning.datamodules.formats.imagenet_index.check_imagenet_index`).
        """
        if split not in self._indices:
            root = self._ensure_data()
            if split == "train":
                index = read_imagenet_split(root, "train", self.boxes_dir, read_boxes=False)
            else:
                wnids = self.split_index("train").wnids
                index = read_imagenet_split(root, split, self.boxes_dir, wnids=wnids)
            self._indices[split] = check_imagenet_index(index, self.verify_images)
        return self._indices[split]
