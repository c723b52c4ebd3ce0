"""fam-lightning: train similarity-based (FC-free) image classifiers and explain them with FAM."""

from fam_lightning import _moved

_moved.install()  # old module names of moved modules keep importing (checkpoints, configs)

from fam_lightning.fam import contribution_weights, embed, feature_activation_map, pool
from fam_lightning.protocol import ExplanationInputs, SimilarityModel, check_similarity_model

__all__ = [
    "ExplanationInputs",
    "SimilarityModel",
    "check_similarity_model",
    "contribution_weights",
    "embed",
    "feature_activation_map",
    "pool",
]
__version__ = "0.3.0"  # tests/e2e/test_packaging.py checks it against pyproject.toml
