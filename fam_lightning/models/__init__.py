"""LightningModules, one per model family, each implementing the SimilarityModel protocol."""

from fam_lightning.models.fewshot import FewShotClassifier, UncertaintyWeighting

__all__ = ["FewShotClassifier", "UncertaintyWeighting"]
