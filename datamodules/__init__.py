"""Data: CUB-200-2011 reader, synthetic CUB-layout writer, episodic sampling, LightningDataModules."""

from datamodules.cub import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CUBDataset,
    CUBMetadata,
    fewshot_class_split,
    read_cub_metadata,
    retrieval_class_split,
)
from datamodules.episodes import EpisodeDataset
from datamodules.fewshot import FewShotDataModule
from datamodules.retrieval import RetrievalDataModule
from datamodules.synthetic import default_synthetic_root, write_synthetic_cub

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CUBDataset",
    "CUBMetadata",
    "EpisodeDataset",
    "FewShotDataModule",
    "RetrievalDataModule",
    "default_synthetic_root",
    "fewshot_class_split",
    "read_cub_metadata",
    "retrieval_class_split",
    "write_synthetic_cub",
]
