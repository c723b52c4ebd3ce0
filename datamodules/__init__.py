"""Data: CUB-200-2011 reader, synthetic CUB-layout writer, episodic sampling, LightningDataModules."""

from .formats.cub import CUBDataset
from .formats.cub_metadata import CUBMetadata, read_cub_metadata
from .formats.images import IMAGENET_MEAN, IMAGENET_STD
from .splits import fewshot_class_split, retrieval_class_split
from .sampling.episodes import EpisodeDataset
from .fewshot import FewShotDataModule
from .retrieval import RetrievalDataModule
from .synthetic.cub_layout import default_synthetic_root, write_synthetic_cub

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
from .augmentation import TwoViewTransform, contrastive_augmentation
from .contrastive import ContrastiveDataModule
from .formats.imagenet import ImageNetDataset, collate_with_boxes
from .formats.imagenet_index import ImageNetIndex, read_imagenet_split
from .formats.voc import parse_voc_xml
from .synthetic.imagenet_layout import default_synthetic_imagenet_root, write_synthetic_imagenet

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
