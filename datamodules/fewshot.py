"""Few-shot LightningDataModule over a CUB-layout folder (the synthetic one by default).

Splits follow Chen et al. 2019: train = base classes, val = val classes,
test = novel classes. Every dataloader yields whole episodes
(see :mod:`fam_lightning.datamodules.sampling.episodes` for the layout): one per batch
by default, or ``episodes_per_batch`` of them stacked along a leading axis.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from fam_lightning.seeding import global_seed, mix_seed

from .base import CUBSource
from .formats.cub import CUBDataset
from .sampling.episodes import EpisodeDataset, collate_episodes
from .sampling.samplers import EpochSeededSampler, fit_progress
from .splits import fewshot_class_split
from .synthetic.drawing import DEFAULT_DISTRACTORS

# Stage name -> few-shot class split.
_SPLITS = {"train": "base", "val": "val", "test": "novel"}


class FewShotDataModule(CUBSource, L.LightningDataModule):
    """Episodic train / val / test data from a CUB-layout folder.

    With ``root=None`` a synthetic CUB-layout data set is written once under
    ``data_dir`` (named by its parameters) and reused afterwards; writing is
    atomic, so DDP processes that race to write it are safe.

    Args:
        root: CUB-200-2011 root folder, or None for the synthetic default.
        data_dir: Where the synthetic default lives.
        image_size: Side of the square images fed to the model.
        train_ways: Classes per training episode.
        train_shots: Support images per class in training episodes.
        train_queries: Query images per class in training episodes.
        eval_ways: Classes per validation / test episode.
        eval_shots: Support images per class in validation / test episodes.
        eval_queries: Query images per class in validation / test episodes.
        train_episodes: Training episodes per epoch (fresh every epoch: episode
            ``i`` of epoch ``e`` is a fixed function of ``(seed_everything,
            seed, e, i)``, so a resumed run draws exactly the episodes of the
            uninterrupted one and never replays an earlier epoch).
        val_episodes: Validation episodes (the same ones every epoch).
        test_episodes: Test episodes (fixed by ``seed``).
        num_workers: DataLoader worker processes.
        pin_memory: Pin episode tensors for faster host-to-GPU copies.
        cache_images: Keep decoded, resized images in memory (per process).
        seed: Seed of the fixed validation (seed + 1) and test (seed + 2) episodes.
        synthetic_classes: Classes of the synthetic default.
        synthetic_images_per_class: Images per class of the synthetic default.
        synthetic_image_size: Stored image side of the synthetic default.
        synthetic_seed: Drawing seed of the synthetic default (kept apart from
            ``seed`` so runs with different seeds share one data set).
        synthetic_distractors: Distractor objects per image of the synthetic
            default (never boxed; see :mod:`fam_lightning.datamodules.synthetic.drawing`).
        verify_images: Decode every image once at setup and report all broken
            ones together (slow on large sets; by default setup only checks
            that every file exists and every box lies inside its image).
        episodes_per_batch: Episodes per batch, ``E`` (LibFewShot's ``episode_size``),
            in every loader. 1 yields single episode dicts; ``E > 1`` stacks ``E``
            consecutive episodes (:func:`~fam_lightning.datamodules.sampling.episodes.collate_episodes`),
            the same episodes in the same order as with 1, so an epoch has
            ``ceil(episodes / E)`` batches (the last may hold fewer). Training then
            takes one optimizer step per ``E`` episodes and BatchNorm sees all their images.
        shuffle_labels: Train on a fixed random permutation of the training labels
            (class sizes kept, images of a "class" a random set): the shuffled-label
            model of the data-randomisation sanity check (``fam-sanity --mode data``).
            Validation and test keep the true labels.

    Raises:
        ValueError: If ``episodes_per_batch < 1``.
    """

    def __init__(
        self,
        root: str | None = None,
        data_dir: str = "data",
        image_size: int = 84,
        train_ways: int = 5,
        train_shots: int = 1,
        train_queries: int = 6,
        eval_ways: int = 5,
        eval_shots: int = 1,
        eval_queries: int = 15,
        train_episodes: int = 100,
        val_episodes: int = 50,
        test_episodes: int = 2000,
        num_workers: int = 0,
        pin_memory: bool = False,
        cache_images: bool = True,
        seed: int = 0,
        synthetic_classes: int = 64,
        synthetic_images_per_class: int = 30,
        synthetic_image_size: int = 96,
        synthetic_seed: int = 0,
        synthetic_distractors: int = DEFAULT_DISTRACTORS,
        verify_images: bool = False,
        episodes_per_batch: int = 1,
        shuffle_labels: bool = False,
    ) -> None:
        super().__init__()
        if episodes_per_batch < 1:
            raise ValueError(
                f"episodes_per_batch must be >= 1 (episodes stacked into one training / evaluation step), "
                f"got {episodes_per_batch}"
            )
        self.save_hyperparameters()
        self._init_source()
        self.image_size = image_size
        self.train_ways, self.train_shots, self.train_queries = train_ways, train_shots, train_queries
        self.eval_ways, self.eval_shots, self.eval_queries = eval_ways, eval_shots, eval_queries
        self.train_episodes, self.val_episodes, self.test_episodes = train_episodes, val_episodes, test_episodes
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.cache_images = cache_images
        self.seed = seed
        self.episodes_per_batch = episodes_per_batch
        self.shuffle_labels = shuffle_labels
        self._images: dict[str, CUBDataset] = {}
        self._episodes: dict[str, EpisodeDataset] = {}

    @property
    def num_base_classes(self) -> int:
        """Classes of the base (training) split; readable before ``setup``.

        LightningCLI can link it to the model's ``num_classes`` with
        ``apply_on="instantiate"``.
        """
        return len(fewshot_class_split(self.metadata.sorted_class_ids, "base"))

    def setup(self, stage: str | None = None) -> None:
        """Build the episode data sets of ``stage`` (all of them for None).

        Checks the episode sizes against the splits here, so a too-large
        episode fails before training starts.
        """
        wanted = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for name in wanted.get(stage or "", ("train", "val", "test")):
            self._episode_set(name)

    def _image_set(self, name: str) -> CUBDataset:
        if name not in self._images:
            self._images[name] = CUBDataset(
                self.data_root,
                split=_SPLITS[name],
                protocol="fewshot",
                image_size=self.image_size,
                mean=self.mean,
                std=self.std,
                cache=self.cache_images,
                metadata=self.metadata,
            )
            if name == "train" and self.shuffle_labels:
                # Data randomisation (Adebayo et al. 2018): a fixed permutation of the training labels keeps
                # every class's size but makes its images a random set; validation and test keep true labels.
                dataset = self._images[name]
                permutation = torch.randperm(len(dataset.labels), generator=torch.Generator().manual_seed(
                    mix_seed(self.seed, len(dataset.labels))))
                dataset.labels = dataset.labels[permutation]
        return self._images[name]

    def _episode_set(self, name: str) -> EpisodeDataset:
        if name not in self._episodes:
            images = self._image_set(name)
            if name == "train":
                # Episodes come seeded from the sampler keys (train_dataloader), fresh every epoch.
                episodes = EpisodeDataset(
                    images, self.train_ways, self.train_shots, self.train_queries, self.train_episodes, seed=None,
                    empty_classes_error=True,  # the model has an output for every base class
                )
            else:
                count = self.val_episodes if name == "val" else self.test_episodes
                seed = self.seed + (1 if name == "val" else 2)
                episodes = EpisodeDataset(images, self.eval_ways, self.eval_shots, self.eval_queries, count, seed=seed)
            self._episodes[name] = episodes
        return self._episodes[name]

    def _loader(self, episodes: EpisodeDataset, sampler: EpochSeededSampler | None = None) -> DataLoader:
        # batch_size=None: every item is already a whole collated episode; E > 1 stacks E of them.
        several = self.episodes_per_batch > 1
        return DataLoader(
            episodes,
            batch_size=self.episodes_per_batch if several else None,
            collate_fn=collate_episodes if several else None,
            shuffle=False,
            sampler=sampler,
            # Its own generator: the worker base seed must not come from (and shift) the global RNG.
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Fresh base-class episodes every epoch, each a function of (seeds, epoch, episode index)."""
        episodes = self._episode_set("train")
        sampler = EpochSeededSampler(len(episodes), seed=mix_seed(global_seed(), self.seed), progress=self._progress)
        return self._loader(episodes, sampler)

    def _progress(self) -> tuple[int, int]:
        return fit_progress(self.trainer, items_per_batch=self.episodes_per_batch)

    def val_dataloader(self) -> DataLoader:
        """The same val-class episodes every epoch."""
        return self._loader(self._episode_set("val"))

    def test_dataloader(self) -> DataLoader:
        """Fixed novel-class episodes."""
        return self._loader(self._episode_set("test"))

    def probe_episode(self) -> dict[str, Any]:
        """A fixed validation episode for visualisation callbacks: the same on every call.

        It is the first validation episode (eval ways / shots / queries),
        available with or without ``setup``; one episode whatever ``episodes_per_batch``.
        """
        return self._episode_set("val")[0]
