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

# ImageNet (ILSVRC 2012) layout: reader, synthetic writer, contrastive (NPID / MoCo) data.
from datamodules.contrastive import ContrastiveDataModule, TwoViewTransform, contrastive_augmentation
from datamodules.imagenet import (
    ImageNetDataset,
    ImageNetIndex,
    collate_with_boxes,
    parse_voc_xml,
    read_imagenet_split,
)
from datamodules.synthetic_imagenet import default_synthetic_imagenet_root, write_synthetic_imagenet

__all__ += [
    "ContrastiveDataModule",
    "ImageNetDataset",
    "ImageNetIndex",
    "TwoViewTransform",
    "collate_with_boxes",
    "contrastive_augmentation",
    "default_synthetic_imagenet_root",
    "parse_voc_xml",
    "read_imagenet_split",
    "write_synthetic_imagenet",
]
