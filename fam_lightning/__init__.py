"""fam-lightning: train similarity-based (FC-free) image classifiers and explain them with FAM."""

from pathlib import Path as _Path

# In a source checkout, datamodules/ and callbacks/ sit beside this folder (the project's requested layout);
# installed, they live inside it as fam_lightning.datamodules / fam_lightning.callbacks (pyproject.toml). Let
# the checkout resolve the same names, so code and configs import one module under one name either way.
_checkout = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).parent / "datamodules").is_dir() and (_checkout / "datamodules" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821  (a package's __path__)

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
__version__ = "0.1.0"
