"""Metric-learning losses and their miners, as small separate pieces.

- :class:`MultiSimilarityLoss` + :class:`MultiSimilarityMiner` (Wang et al. 2019)
- :class:`MarginLoss` + :class:`DistanceWeightedMiner` (Wu et al. 2017)

Both losses take raw ``(B, D)`` embeddings and ``(B,)`` labels, L2-normalise
inside, and need batches with positive and negative pairs: draw them with
``fam_lightning.datamodules.sampling.samplers.ClassBalancedBatchSampler``.
"""

from fam_lightning.losses.margin import DistanceWeightedMiner, MarginLoss, euclidean_distance_matrix
from fam_lightning.losses.multi_similarity import (
    MultiSimilarityLoss,
    MultiSimilarityMiner,
    cosine_similarity_matrix,
    label_pair_masks,
)

__all__ = [
    "DistanceWeightedMiner",
    "MarginLoss",
    "MultiSimilarityLoss",
    "MultiSimilarityMiner",
    "cosine_similarity_matrix",
    "euclidean_distance_matrix",
    "label_pair_masks",
]
