"""Synthetic data sets drawn on first use: the drawing core (objects.py, drawing.py), the atomic folder
publish (folder.py) and the two layout writers (cub_layout.py, imagenet_layout.py). No Lightning here.

The names below are those the module ``fam_lightning.datamodules.synthetic`` (the CUB-layout writer)
held before the 0.2 layout; they keep importing from here.
"""

from .cub_layout import FORMAT_VERSION, default_synthetic_root, image_rng, write_synthetic_cub
from .drawing import DEFAULT_DISTRACTORS, check_distractors, synthetic_classes
from .folder import (
    JPEG_QUALITY,
    MARKER_FILE,
    STALE_TEMP_AGE_S,
    parallel_map,
    remove_stale_temporaries,
    save_jpeg,
    write_atomically,
)
from .objects import MAX_CLASSES, SyntheticClass

__all__ = [
    "DEFAULT_DISTRACTORS",
    "FORMAT_VERSION",
    "JPEG_QUALITY",
    "MARKER_FILE",
    "MAX_CLASSES",
    "STALE_TEMP_AGE_S",
    "SyntheticClass",
    "check_distractors",
    "default_synthetic_root",
    "image_rng",
    "parallel_map",
    "remove_stale_temporaries",
    "save_jpeg",
    "synthetic_classes",
    "write_atomically",
    "write_synthetic_cub",
]
