"""EpochSeededSampler splits the keys of an epoch across DDP ranks itself (Lightning must not wrap it)."""

from __future__ import annotations

import pytest
from torch.utils.data import DistributedSampler

from fam_lightning.datamodules.sampling import samplers as sampler_module
from fam_lightning.datamodules.sampling.samplers import EpochSeededSampler


def _rank_keys(monkeypatch: pytest.MonkeyPatch, sampler: EpochSeededSampler, world: int, rank: int) -> list:
    monkeypatch.setattr(sampler_module, "process_group", lambda: (world, rank))
    return list(sampler), len(sampler)


@pytest.mark.parametrize("length, world", [(4, 2), (5, 2), (7, 3), (2, 4)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_split_the_epoch_like_an_unshuffled_distributed_sampler(
    length: int, world: int, shuffle: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    sampler = EpochSeededSampler(length, seed=3, shuffle=shuffle, progress=lambda: (2, 0))
    assert isinstance(sampler, DistributedSampler)  # so Lightning does not wrap (and reshuffle) it
    keys = sampler.keys(2)
    per_rank = -(-length // world)
    padded = (keys * world)[: per_rank * world]
    for rank in range(world):
        got, size = _rank_keys(monkeypatch, sampler, world, rank)
        assert size == len(got) == per_rank
        assert got == padded[rank::world]
    covered = {key for rank in range(world) for key in _rank_keys(monkeypatch, sampler, world, rank)[0]}
    assert covered == set(keys)  # every key of the epoch runs somewhere


def test_a_mid_epoch_resume_continues_every_rank_where_it_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    world, done = 2, 2  # two batches of one key ran on each rank: 4 keys of all ranks consumed
    straight = EpochSeededSampler(9, seed=1, shuffle=True, progress=lambda: (1, 0))
    resumed = EpochSeededSampler(9, seed=1, shuffle=True, progress=lambda: (1, done * world))
    for rank in range(world):
        full, _ = _rank_keys(monkeypatch, straight, world, rank)
        rest, _ = _rank_keys(monkeypatch, resumed, world, rank)
        assert rest == full[done:]


def test_one_process_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    sampler = EpochSeededSampler(5, seed=0, progress=lambda: (0, 2))
    got, size = _rank_keys(monkeypatch, sampler, 1, 0)
    assert got == sampler.keys(0)[2:] and size == 5
