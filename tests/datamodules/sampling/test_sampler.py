"""Class-balanced batch sampler: composition, epochs, ranks, errors."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fam_lightning.datamodules.sampling.samplers import ClassBalancedBatchSampler

# 10 classes with 2..11 images (classes 0-2 are smaller than K = 4), labels interleaved
SIZES = list(range(2, 12))
LABELS = torch.cat([torch.full((n,), c) for c, n in enumerate(SIZES)])[
    torch.randperm(sum(SIZES), generator=torch.Generator().manual_seed(0))
]


def batches(sampler: ClassBalancedBatchSampler, epoch: int = 0) -> list[list[int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_every_batch_is_m_distinct_classes_times_k_images() -> None:
    m, k = 5, 4
    sampler = ClassBalancedBatchSampler(LABELS, classes_per_batch=m, samples_per_class=k, num_batches=50)
    assert len(sampler) == 50 and sampler.batch_size == 20
    seen_classes: set[int] = set()
    for batch in batches(sampler):
        assert len(batch) == m * k and all(isinstance(i, int) for i in batch)
        labels = LABELS[batch].tolist()
        # class-major blocks of K, M distinct classes
        blocks = [labels[j * k : (j + 1) * k] for j in range(m)]
        assert all(len(set(b)) == 1 for b in blocks)
        assert len({b[0] for b in blocks}) == m
        for j, block in enumerate(blocks):
            rows = batch[j * k : (j + 1) * k]
            if SIZES[block[0]] >= k:
                assert len(set(rows)) == k  # without replacement
        seen_classes.update(labels)
    assert seen_classes == set(range(10))


def test_small_classes_are_drawn_with_replacement() -> None:
    labels = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1])
    sampler = ClassBalancedBatchSampler(labels, classes_per_batch=2, samples_per_class=5, num_batches=20)
    for batch in batches(sampler):
        counts = Counter(labels[batch].tolist())
        assert counts == {0: 5, 1: 5}
        assert set(i for i in batch if labels[i] == 0) <= {0, 1}
        assert len(set(i for i in batch if labels[i] == 1)) == 5
    # K larger than every class
    sampler = ClassBalancedBatchSampler(labels, classes_per_batch=2, samples_per_class=9, num_batches=3)
    assert all(Counter(labels[b].tolist()) == {0: 9, 1: 9} for b in batches(sampler))


def test_draws_cover_a_class_uniformly() -> None:
    labels = torch.tensor([0] * 5 + [1] * 5)
    sampler = ClassBalancedBatchSampler(labels, classes_per_batch=2, samples_per_class=2, num_batches=2000)
    counts = Counter(i for b in batches(sampler) for i in b)
    freq = torch.tensor([counts[i] for i in range(10)], dtype=torch.float) / 2000  # each item is in 2 of 5 batches
    assert torch.allclose(freq, torch.full((10,), 0.4), atol=0.04)


def test_epochs_differ_and_repeat() -> None:
    sampler = ClassBalancedBatchSampler(LABELS, classes_per_batch=3, samples_per_class=2, num_batches=10, seed=7)
    assert batches(sampler, 0) == batches(sampler, 0)
    assert batches(sampler, 0) != batches(sampler, 1)
    other_seed = ClassBalancedBatchSampler(LABELS, classes_per_batch=3, samples_per_class=2, num_batches=10, seed=8)
    assert batches(sampler, 0) != batches(other_seed, 0)


def test_ranks_get_different_batches_of_equal_count() -> None:
    kwargs = dict(classes_per_batch=3, samples_per_class=2, num_batches=12, num_replicas=2)
    rank0 = ClassBalancedBatchSampler(LABELS, rank=0, **kwargs)
    rank1 = ClassBalancedBatchSampler(LABELS, rank=1, **kwargs)
    b0, b1 = batches(rank0, 3), batches(rank1, 3)
    assert len(rank0) == len(rank1) == len(b0) == len(b1) == 12
    assert all(len(x) == len(y) == 6 for x, y in zip(b0, b1))
    assert sum(x != y for x, y in zip(b0, b1)) >= 10
    # without a process group, the default is one replica, rank 0
    alone = ClassBalancedBatchSampler(LABELS, classes_per_batch=3, samples_per_class=2, num_batches=12)
    assert batches(alone, 3) != b1


def test_works_as_a_dataloader_batch_sampler_and_lightning_sets_its_epoch() -> None:
    from lightning.fabric.utilities.data import _set_sampler_epoch

    dataset = TensorDataset(torch.arange(len(LABELS)), LABELS)
    sampler = ClassBalancedBatchSampler(LABELS, classes_per_batch=4, samples_per_class=3, num_batches=5)
    loader = DataLoader(dataset, batch_sampler=sampler)
    assert len(loader) == 5
    first = [index.tolist() for index, _ in loader]
    for index, labels in loader:
        assert index.shape == (12,) and torch.equal(labels, LABELS[index])
    _set_sampler_epoch(loader, 1)  # what Lightning's fit loop calls each epoch
    assert sampler.epoch == 1
    assert [index.tolist() for index, _ in loader] != first


def test_errors_name_the_numbers() -> None:
    with pytest.raises(ValueError, match=r"classes_per_batch=11 exceeds the 10 classes"):
        ClassBalancedBatchSampler(LABELS, classes_per_batch=11, samples_per_class=2, num_batches=1)
    for name, kwargs in [
        ("classes_per_batch", dict(classes_per_batch=0, samples_per_class=2, num_batches=1)),
        ("samples_per_class", dict(classes_per_batch=2, samples_per_class=0, num_batches=1)),
        ("num_batches", dict(classes_per_batch=2, samples_per_class=2, num_batches=0)),
    ]:
        with pytest.raises(ValueError, match=name):
            ClassBalancedBatchSampler(LABELS, **kwargs)
    with pytest.raises(ValueError, match=r"rank must lie in \[0, num_replicas\) = \[0, 2\), got 2"):
        ClassBalancedBatchSampler(LABELS, 2, 2, 1, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas"):
        ClassBalancedBatchSampler(LABELS, 2, 2, 1, num_replicas=0, rank=0)
    with pytest.raises(ValueError, match="labels"):
        ClassBalancedBatchSampler(LABELS.float(), 2, 2, 1)
    with pytest.raises(ValueError, match="labels"):
        ClassBalancedBatchSampler(torch.zeros(0, dtype=torch.long), 1, 2, 1)
