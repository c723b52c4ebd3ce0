"""Class-balanced batches for metric learning: M classes x K images each.

Pair losses (Multi-Similarity, Margin) need positives in every batch, which
random batches of a many-class data set rarely hold. Each batch of
:class:`ClassBalancedBatchSampler` draws ``M`` distinct classes, then ``K``
images of each, class-major::

    [c_0 x K, c_1 x K, ..., c_{M-1} x K]     (M * K data set indices)

Use it as a DataLoader's ``batch_sampler`` (no ``batch_size``, ``shuffle``
or ``sampler`` then)::

    sampler = ClassBalancedBatchSampler(dataset.labels, classes_per_batch=8,
                                        samples_per_class=4, num_batches=100)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=4)

Epochs. Like ``DistributedSampler``, the draws are a fixed function of
``(seed, epoch, rank)``: call ``sampler.set_epoch(epoch)`` before each epoch
for fresh batches. Lightning does this by itself: its fit loop calls
``set_epoch`` on ``dataloader.batch_sampler.sampler``, which this class
exposes as itself.

Distributed training. Lightning cannot inject a ``DistributedSampler`` into
a batch sampler that is not a ``BatchSampler``, so this sampler splits work
across ranks itself: every rank yields ``num_batches`` batches (equal counts,
so DDP never hangs on a missing step) from its own random stream, hence
different batches. ``num_replicas`` / ``rank`` default to the initialised
``torch.distributed`` process group, read when iteration starts (so the
sampler may be built before the group exists). Under DDP with Lightning,
pass ``Trainer(use_distributed_sampler=False)``: otherwise Lightning tries
to rebuild this sampler around a ``DistributedSampler`` and raises a
``TypeError`` saying so. On one device no Trainer flag is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DistributedSampler, Sampler

from fam_lightning.seeding import mix_seed

__all__ = ["ClassBalancedBatchSampler", "EpochSeededSampler", "ShardSampler", "fit_progress", "process_group"]


def process_group() -> tuple[int, int]:
    """``(world size, rank)`` of the initialised process group, ``(1, 0)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Batches of ``classes_per_batch`` distinct classes x ``samples_per_class`` images.

    A class with at least ``K`` images gives ``K`` distinct images; a smaller
    class gives ``K`` draws with replacement (some images repeat). Classes
    are drawn uniformly among the labels present, images uniformly within a
    class, independently for every batch. See the module docstring for
    epochs, DataLoader use and DDP.

    Args:
        labels: ``(N,)`` integer class label of every data set item.
        classes_per_batch: ``M``, distinct classes per batch.
        samples_per_class: ``K``, images per class per batch (>= 2 for pair losses).
        num_batches: Batches per epoch, per rank (``len(sampler)``).
        seed: Base seed of the draws.
        num_replicas: Number of DDP ranks; None reads ``torch.distributed``
            (1 when it is not initialised).
        rank: This process's rank; None reads ``torch.distributed`` (0 when
            it is not initialised).
        progress: Returns ``(epoch, batches of it to skip)`` when iteration
            starts (see :func:`fit_progress`): a resumed fit draws the batches
            of the right epoch, not epoch 0's (Lightning builds the first
            iterator before it calls ``set_epoch``). None uses ``set_epoch``.
        item_seeds: Yield ``(index, item_seed)`` pairs instead of indices, so a
            data set can draw per-item randomness (flips) from ``(seed, epoch, rank, position)``.

    Raises:
        ValueError: If ``labels`` is not a non-empty 1-D integer tensor, a
            count is not positive, ``classes_per_batch`` exceeds the number
            of classes, or ``rank`` is not in ``[0, num_replicas)``.
    """

    def __init__(
        self,
        labels: Tensor,
        classes_per_batch: int,
        samples_per_class: int,
        num_batches: int,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        progress: Callable[[], tuple[int, int]] | None = None,
        item_seeds: bool = False,
    ) -> None:
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or labels.numel() == 0 or labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"labels must be a non-empty integer tensor of shape (N,), got {labels.dtype} {tuple(labels.shape)}")
        for name, value in (
            ("classes_per_batch", classes_per_batch),
            ("samples_per_class", samples_per_class),
            ("num_batches", num_batches),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if num_replicas is not None and num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if rank is not None and not 0 <= rank < (num_replicas if num_replicas is not None else rank + 1):
            raise ValueError(f"rank must lie in [0, num_replicas) = [0, {num_replicas}), got {rank}")
        self.classes, self._class_rows, self._class_sizes = _rows_by_class(labels.long().cpu())
        if classes_per_batch > len(self.classes):
            raise ValueError(
                f"classes_per_batch={classes_per_batch} exceeds the {len(self.classes)} classes in labels "
                f"({labels.numel()} items); lower classes_per_batch to at most {len(self.classes)}"
            )
        self.classes_per_batch = classes_per_batch
        self.samples_per_class = samples_per_class
        self.num_batches = num_batches
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.progress = progress
        self.item_seeds = item_seeds
        self.epoch = 0

    @property
    def batch_size(self) -> int:
        """Items per batch, ``M * K``."""
        return self.classes_per_batch * self.samples_per_class

    @property
    def sampler(self) -> ClassBalancedBatchSampler:
        # Lightning's fit loop calls set_epoch on `dataloader.batch_sampler.sampler`, never on the batch sampler.
        return self

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]] | Iterator[list[tuple[int, int]]]:
        num_replicas, rank = self._replicas_and_rank()
        epoch, skip = self.progress() if self.progress is not None else (self.epoch, 0)
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, rank, num_replicas))
        for batch in range(self.num_batches):
            indices = self._draw_batch(generator).tolist()
            if batch < skip:
                continue
            if self.item_seeds:
                yield [(i, mix_seed(self.seed, epoch, rank, batch, k)) for k, i in enumerate(indices)]
            else:
                yield indices

    def _replicas_and_rank(self) -> tuple[int, int]:
        world, group_rank = process_group()
        num_replicas = self.num_replicas if self.num_replicas is not None else world
        rank = self.rank if self.rank is not None else group_rank
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must lie in [0, num_replicas) = [0, {num_replicas}), got {rank}")
        return num_replicas, rank

    def _draw_batch(self, generator: torch.Generator) -> Tensor:
        """One batch of data set indices, ``(M * K,)``, class-major."""
        m, k = self.classes_per_batch, self.samples_per_class
        picked = torch.randperm(len(self.classes), generator=generator)[:m]  # (M,)
        sizes = self._class_sizes[picked]  # (M,)
        # Without replacement: the K smallest of random keys, padding keys pushed past every real one.
        width = self._class_rows.shape[1]
        keys = torch.rand(m, width, generator=generator)
        keys = keys.masked_fill(torch.arange(width) >= sizes.unsqueeze(1), 2.0)  # (M, width)
        distinct = keys.topk(min(k, width), dim=1, largest=False).indices  # (M, min(K, width))
        # With replacement, for classes smaller than K.
        repeated = (torch.rand(m, k, generator=generator) * sizes.unsqueeze(1)).long().clamp_max(sizes.unsqueeze(1) - 1)
        columns = torch.where((sizes >= k).unsqueeze(1), distinct, repeated) if k <= width else repeated  # (M, K)
        return self._class_rows[picked.unsqueeze(1), columns].flatten()


def _rows_by_class(labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sorted classes (C,), a padded table of each class's item rows (C, max size), and sizes (C,)."""
    classes, inverse, sizes = torch.unique(labels, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)  # rows grouped by class, in data set order
    starts = torch.cumsum(sizes, 0) - sizes  # (C,)
    column = torch.arange(labels.numel()) - starts[inverse[order]]  # position of each row within its class
    table = torch.full((len(classes), int(sizes.max())), -1, dtype=torch.long)
    table[inverse[order], column] = order
    return classes, table, sizes


class ShardSampler(torch.utils.data.Sampler[int]):
    """Every ``num_replicas``-th index from ``rank``: each item on exactly one rank, no padding.

    Evaluation over a gallery must not see padded duplicates (Lightning's
    DistributedSampler pads), so retrieval and kNN eval loaders use this.
    Ranks may get one item more or less than each other.
    """

    def __init__(self, length: int, num_replicas: int | None = None, rank: int | None = None) -> None:
        self.length = length
        self.num_replicas = num_replicas
        self.rank = rank

    def _topology(self) -> tuple[int, int]:
        if self.num_replicas is not None and self.rank is not None:
            return self.num_replicas, self.rank
        return process_group()

    def __iter__(self):
        replicas, rank = self._topology()
        return iter(range(rank, self.length, replicas))

    def __len__(self) -> int:
        replicas, rank = self._topology()
        return len(range(rank, self.length, replicas))


def fit_progress(trainer: Any, items_per_batch: int = 1, all_ranks: bool = True) -> tuple[int, int]:
    """``(epoch, sampler items of it already consumed, all ranks together)`` as Lightning's fit loop counts them.

    Read when a training iterator starts. Lightning builds the first iterator of
    a (resumed) fit before it calls ``set_epoch``, so samplers read the epoch
    here instead. Restarted from a mid-epoch checkpoint (the epoch was started
    but not processed), the second value is what to skip: batches run x items
    per batch (x world size with ``all_ranks``, for samplers whose keys cover
    all ranks, as :class:`EpochSeededSampler`'s); otherwise 0. ``(0, 0)`` without a trainer.
    """
    if trainer is None:
        return 0, 0
    loop = trainer.fit_loop
    epochs = loop.epoch_progress.current
    epoch = int(epochs.processed)
    if epochs.started <= epochs.processed:
        return epoch, 0
    done = int(loop.epoch_loop.batch_progress.current.completed)
    return epoch, done * items_per_batch * (max(1, int(trainer.world_size)) if all_ranks else 1)


class EpochSeededSampler(DistributedSampler):
    """Yields ``(index, item_seed)`` keys, a fixed function of ``(seed, epoch)``: the resumable training order.

    Data sets that accept such keys draw every random choice of the item
    (an episode, an augmentation) from ``item_seed``, so epoch ``e`` is the same
    whether the run got there straight or resumed from a checkpoint, with any
    number of DataLoader workers, and no epoch replays another.

    Args:
        length: Items per epoch.
        seed: Base seed (mixed with the epoch and the item's position).
        shuffle: Visit the indices in a seeded random order per epoch (else 0..length-1).
        progress: Returns ``(epoch, items to skip)`` when iteration starts, e.g.
            from :func:`fit_progress`; None uses ``set_epoch`` and skips nothing.

    Under DDP it splits the keys of the epoch across ranks itself, as
    ``DistributedSampler`` without shuffling does (padded to a multiple of the
    world size by repeating the first keys; rank ``r`` takes every
    ``world``-th key from ``r``), reading the process group when iteration
    starts. It is a ``DistributedSampler`` so that Lightning does not wrap it:
    Lightning's ``DistributedSamplerWrapper`` shuffles with its own epoch
    counter, which a resumed fit sets only after it has built the first
    iterator, so the first resumed epoch gave each rank other keys than the
    uninterrupted run (``tests/e2e/test_multinode.py``).
    """

    def __init__(  # noqa: D107 (DistributedSampler.__init__ is not called: it needs a data set and a group)
        self,
        length: int,
        seed: int = 0,
        shuffle: bool = False,
        progress: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.progress = progress
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        world, _ = process_group()
        return -(-self.length // world)  # keys of this rank

    def keys(self, epoch: int) -> list[tuple[int, int]]:
        """All ``(index, item_seed)`` keys of ``epoch``, in order."""
        if self.shuffle:
            order = torch.randperm(self.length, generator=torch.Generator().manual_seed(mix_seed(self.seed, epoch)))
            indices = order.tolist()
        else:
            indices = list(range(self.length))
        return [(index, mix_seed(self.seed, epoch, position)) for position, index in enumerate(indices)]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self.progress() if self.progress is not None else (self.epoch, 0)
        keys = self.keys(epoch)
        world, rank = process_group()
        if world == 1:
            return iter(keys[skip:])
        total = len(self) * world
        padded = (keys * (-(-total // len(keys))))[:total]  # DistributedSampler's padding
        return iter(padded[skip + rank :: world])  # skip counts the keys of all ranks
