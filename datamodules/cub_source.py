"""A CUB-layout folder given by the user, or the synthetic default written on first use."""

from __future__ import annotations

from pathlib import Path

from .formats.cub_metadata import CUBMetadata, check_cub_data, read_cub_metadata
from .formats.images import IMAGENET_MEAN, IMAGENET_STD
from .synthetic import DEFAULT_DISTRACTORS, default_synthetic_root, write_synthetic_cub


class CUBSource:
    """Mixin for the CUB-layout DataModules: ``root`` or the synthetic default under ``data_dir``.

    Writing the synthetic default is atomic, so DDP processes that race to
    write it are safe. Subclasses call :meth:`_init_source` in ``__init__``.
    """

    root: str | None
    data_dir: str

    def _init_source(
        self,
        root: str | None,
        data_dir: str,
        classes: int,
        images_per_class: int,
        image_size: int,
        seed: int,
        distractors: int = DEFAULT_DISTRACTORS,
        verify_images: bool = False,
    ) -> None:
        self.root = root
        self.verify_images = verify_images
        self.data_dir = data_dir
        self.synthetic_params = {
            "num_classes": classes,
            "images_per_class": images_per_class,
            "image_size": image_size,
            "seed": seed,
            "distractors": distractors,
        }
        # The normalisation applied to every image; visualisation code undoes it.
        self.mean: tuple[float, float, float] = IMAGENET_MEAN
        self.std: tuple[float, float, float] = IMAGENET_STD
        self._metadata: CUBMetadata | None = None

    @property
    def data_root(self) -> Path:
        """The CUB-layout folder read: ``root``, or the synthetic default's folder."""
        if self.root is not None:
            return Path(self.root)
        return default_synthetic_root(self.data_dir, **self.synthetic_params)

    def _ensure_data(self) -> Path:
        """Write the synthetic default if it is needed and missing; a no-op for a real root."""
        if self.root is None:
            write_synthetic_cub(self.data_root, **self.synthetic_params)
        return self.data_root

    def prepare_data(self) -> None:
        """Write the synthetic default once (on one process per node)."""
        self._ensure_data()

    @property
    def metadata(self) -> CUBMetadata:
        """Parsed and checked metadata of ``data_root`` (written first for the synthetic default).

        The first access checks the folder (:func:`fam_lightning.datamodules.formats.cub_metadata.check_cub_data`):
        missing images and boxes outside their image are reported before training.
        """
        if self._metadata is None:
            self._metadata = check_cub_data(read_cub_metadata(self._ensure_data()), self.verify_images)
        return self._metadata
