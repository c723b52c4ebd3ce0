"""LightningModules, one per model family, each implementing the SimilarityModel protocol."""

from fam_lightning.models.fewshot import FewShotClassifier, UncertaintyWeighting
from fam_lightning.models.memory_bank import MemoryBankModel
from fam_lightning.models.retrieval import RetrievalModel

__all__ = ["FewShotClassifier", "MemoryBankModel", "RetrievalModel", "UncertaintyWeighting"]
