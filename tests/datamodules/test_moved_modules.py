"""Old module paths of the data modules keep importing (0.2 layout): the same objects, with a DeprecationWarning.

Every public name each old module defined is listed with its new home; importing it by the old path
must give the very object of the new home (never a second copy of a class).
"""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest

from fam_lightning._moved import MOVED

P = "fam_lightning.datamodules."

# old module -> {new home module: names the old module defined}
OLD_NAMES: dict[str, dict[str, list[str]]] = {
    P + "checks": {
        P + "formats.checks": [
            "ASPECT_TOLERANCE", "DataCheckWarning", "PROGRESS_MIN_ITEMS", "SHOWN", "check_aspect_ratios",
            "check_boxes", "check_files_exist", "read_image_sizes", "verify_images",
        ],
        P + "formats.geometry": ["Box"],
    },
    P + "cub": {
        P + "formats.cub": ["CLASSIFICATION_SPLITS", "CUBDataset", "PROTOCOLS", "display_class_name"],
        P + "formats.cub_metadata": ["CUBMetadata", "CUB_FILES", "check_cub_data", "read_cub_metadata"],
        P + "formats.images": ["IMAGENET_MEAN", "IMAGENET_STD", "WIDE_GREY_MODES", "decode_rgb", "load_resized_image"],
        P + "formats.geometry": ["scale_box_xywh"],
        P + "splits": ["FEWSHOT_SPLITS", "RETRIEVAL_SPLITS", "fewshot_class_split", "retrieval_class_split"],
    },
    P + "imagenet": {
        P + "formats.imagenet": ["ImageNetDataset", "collate_with_boxes"],
        P + "formats.imagenet_index": [
            "IMAGE_EXTENSIONS", "ImageNetIndex", "SPLITS", "SYNSET_MAPPING_FILE", "check_imagenet_index",
            "read_imagenet_split",
        ],
        P + "formats.voc": ["VOCAnnotation", "parse_voc_xml"],
        P + "formats.images": ["load_center_cropped_image", "load_image"],
        P + "formats.geometry": ["Box", "CROP_RATIO", "PREPROCESSING", "center_crop_boxes", "center_crop_geometry", "scale_boxes"],
    },
    P + "episodes": {
        P + "sampling.episodes": ["EpisodeDataset", "LabelledDataset", "collate_episodes"],
        "fam_lightning.seeding": ["mix_seed"],
    },
    P + "sampler": {
        P + "sampling.samplers": ["ClassBalancedBatchSampler", "EpochSeededSampler", "ShardSampler", "fit_progress"],
    },
    P + "drawing": {
        P + "synthetic.drawing": [
            "DEFAULT_DISTRACTORS", "DRAWING_VERSION", "OBJECT_GAP", "PLACEMENT_TRIES", "PlacedObject", "Scene",
            "check_distractors", "render_clutter", "render_scene", "synthetic_classes",
        ],
        P + "synthetic.objects": [
            "ALL_COMBINATIONS", "COLOURS", "DARK_TONE", "MAX_CLASSES", "MAX_ROTATION_DEG", "OBJECT_SIDE_RANGE", "SHAPES",
            "SUPERSAMPLE", "SyntheticClass", "TEXTURES", "TEXTURE_PERIODS_PER_SIDE", "draw_object",
        ],
    },
    P + "cub_source": {P + "base": ["CUBSource"]},
    P + "synthetic_imagenet": {
        P + "synthetic.imagenet_layout": [
            "FORMAT_VERSION", "TWO_OBJECT_SHARE", "default_synthetic_imagenet_root", "image_rng", "image_stem",
            "render_imagenet_sample", "voc_xml", "wnid", "write_synthetic_imagenet",
        ],
    },
}


# fam_lightning.datamodules.synthetic was the CUB-layout writer; it is now the synthetic/ package, which keeps its names
KEPT_NAMES: dict[str, list[str]] = {
    P + "synthetic.cub_layout": ["FORMAT_VERSION", "default_synthetic_root", "image_rng", "write_synthetic_cub"],
    P + "synthetic.folder": [
        "JPEG_QUALITY", "MARKER_FILE", "STALE_TEMP_AGE_S", "parallel_map", "remove_stale_temporaries", "save_jpeg",
        "write_atomically",
    ],
    P + "synthetic.drawing": ["DEFAULT_DISTRACTORS", "synthetic_classes"],
    P + "synthetic.objects": ["MAX_CLASSES", "SyntheticClass"],
}


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_old_module_is_the_new_module_with_a_deprecation_warning(old: str) -> None:
    new = MOVED[old]
    sys.modules.pop(old, None)  # a fresh import by the old name, as a user's script or a checkpoint makes it
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__spec__.name == module.__name__ == new  # the alias leaves the module's own identity alone


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_every_name_of_the_old_module_is_the_object_of_its_new_home(old: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = importlib.import_module(old)
    for home, names in OLD_NAMES[old].items():
        new_home = importlib.import_module(home)
        for name in names:
            assert getattr(module, name) is getattr(new_home, name), f"{old}.{name} is not {home}.{name}"


def test_the_synthetic_package_keeps_the_names_of_the_old_synthetic_module() -> None:
    package = importlib.import_module(P + "synthetic")
    for home, names in KEPT_NAMES.items():
        new_home = importlib.import_module(home)
        for name in names:
            assert getattr(package, name) is getattr(new_home, name), f"synthetic.{name} is not {home}.{name}"


def test_from_import_by_the_old_path() -> None:
    from fam_lightning.datamodules.cub import CUBDataset
    from fam_lightning.datamodules.formats.cub import CUBDataset as moved

    assert CUBDataset is moved
