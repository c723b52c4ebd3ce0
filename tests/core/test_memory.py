"""MemoryBank and FeatureQueue: known-answer updates, duplicates, wrap-around, checkpoints, DDP gather."""

from __future__ import annotations

import io
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fam_lightning.memory import FeatureQueue, MemoryBank, gather_from_all_ranks
from tests.helpers.distributed import free_port

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def unit_norm(rows: torch.Tensor) -> bool:
    return torch.allclose(rows.norm(dim=1), torch.ones(rows.shape[0], device=rows.device), atol=1e-6)


def test_bank_init_is_unit_norm_unlabelled_and_seeded() -> None:
    bank = MemoryBank(50, 8)
    assert bank.bank.shape == (50, 8) and unit_norm(bank.bank)
    assert bank.labels.dtype == torch.long and (bank.labels == -1).all()
    assert torch.equal(bank.bank, MemoryBank(50, 8).bank)  # identical on every DDP rank
    assert not torch.equal(bank.bank, MemoryBank(50, 8, seed=1).bank)


@pytest.mark.parametrize("device", DEVICES)
def test_bank_update_known_answer(device: str) -> None:
    bank = MemoryBank(4, 2).to(device)
    bank.bank.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]]))
    bank.update(torch.tensor([2, 3], device=device), torch.tensor([[0.0, 1.0], [0.6, 0.8]], device=device))
    # 0.5 [1, 0] + 0.5 [0, 1] = [0.5, 0.5] -> [1, 1] / sqrt(2); the same vector stays itself
    expected = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1 / math.sqrt(2), 1 / math.sqrt(2)], [0.6, 0.8]])
    torch.testing.assert_close(bank.bank.cpu(), expected)


def test_bank_momentum_is_respected() -> None:
    bank = MemoryBank(3, 2, momentum=0.75)
    bank.bank.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]))
    bank.update(torch.tensor([1]), torch.tensor([[0.0, 1.0]]))
    torch.testing.assert_close(bank.bank[1], torch.tensor([3.0, 1.0]) / math.sqrt(10))  # 0.75 e1 + 0.25 e2
    replace = MemoryBank(3, 2, momentum=0.0)
    replace.update(torch.tensor([0]), torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(replace.bank[0], torch.tensor([0.6, 0.8]))


def test_bank_rows_stay_unit_norm_and_others_untouched() -> None:
    bank = MemoryBank(100, 16)
    before = bank.bank.clone()
    g = torch.Generator().manual_seed(0)
    touched = torch.zeros(100, dtype=torch.bool)
    for _ in range(5):
        idx = torch.randint(0, 100, (12,), generator=g)
        bank.update(idx, 3 * torch.randn(12, 16, generator=g))
        touched[idx] = True
    assert unit_norm(bank.bank)
    assert torch.equal(bank.bank[~touched], before[~touched])
    assert not torch.isclose(bank.bank[touched], before[touched]).all(1).any()


@pytest.mark.parametrize("device", DEVICES)
def test_bank_duplicate_indices_average_their_embeddings(device: str) -> None:
    bank = MemoryBank(3, 2).to(device)
    bank.bank.copy_(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    indices = torch.tensor([1, 2, 1], device=device)
    z = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 3.0]], device=device)
    bank.update(indices, z, labels=torch.tensor([4, 5, 4], device=device))
    # mean of [0, 1] and [0, 3] is [0, 2]: 0.5 [1, 0] + 0.5 [0, 2] = [0.5, 1] -> [1, 2] / sqrt(5)
    # (last write wins would give [1, 3] / sqrt(10), the first [1, 1] / sqrt(2))
    torch.testing.assert_close(bank.bank[1].cpu(), torch.tensor([1.0, 2.0]) / math.sqrt(5))
    torch.testing.assert_close(bank.bank[2].cpu(), torch.tensor([0.0, 1.0]))
    assert bank.labels.tolist() == [-1, 4, 5]


def test_bank_labels_and_errors() -> None:
    bank = MemoryBank(5, 3)
    bank.set_labels(torch.arange(5))
    assert bank.labels.tolist() == [0, 1, 2, 3, 4]
    bank.set_labels(torch.tensor([9, 8]), indices=torch.tensor([0, 4]))
    assert bank.labels.tolist() == [9, 1, 2, 3, 8]
    with pytest.raises(ValueError, match=r"\[0, 5\) for a memory bank of 5 entries, got values in \[0, 5\]"):
        bank.update(torch.tensor([0, 5]), torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"got values in \[-1, 2\]"):
        bank.update(torch.tensor([-1, 2]), torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"\(B, D\) = \(2, 3\)"):
        bank.update(torch.tensor([0, 1]), torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"integer \(5,\)"):
        bank.set_labels(torch.arange(4))
    with pytest.raises(ValueError, match="momentum"):
        MemoryBank(5, 3, momentum=1.5)
    with pytest.raises(ValueError, match="size must be a positive int"):
        MemoryBank(0, 3)
    MemoryBank(1000, 4).check_dataset_size(1000)
    with pytest.raises(ValueError, match="memory bank has 1000 entries but the training set has 1200 images"):
        MemoryBank(1000, 4).check_dataset_size(1200)


@pytest.mark.parametrize("device", DEVICES)
def test_queue_replaces_oldest_first_and_wraps(device: str) -> None:
    queue = FeatureQueue(4, 2).to(device)
    assert unit_norm(queue.queue) and queue.ptr.item() == 0 and (queue.labels == -1).all()
    keys = torch.arange(12, dtype=torch.float32, device=device).view(6, 2)  # k0 .. k5
    queue.enqueue(keys[0:2], labels=torch.tensor([10, 11], device=device))
    assert queue.ptr.item() == 2
    queue.enqueue(keys[2:4], labels=torch.tensor([12, 13], device=device))
    assert queue.ptr.item() == 0
    queue.enqueue(keys[4:6])  # wraps: k4, k5 replace the oldest, k0, k1
    assert queue.ptr.item() == 2
    assert torch.equal(queue.queue, keys[[4, 5, 2, 3]])
    assert queue.labels.tolist() == [-1, -1, 12, 13]  # unlabelled keys do not keep stale labels
    negatives = queue.negatives()
    queue.enqueue(keys[0:2])
    assert torch.equal(negatives, keys[[4, 5, 2, 3]])  # a copy, untouched by the next enqueue


def test_queue_divisibility_and_shape_errors() -> None:
    FeatureQueue(4096, 8).check_batch(64)
    with pytest.raises(ValueError, match="queue size 4096 is not divisible by the global batch 48"):
        FeatureQueue(4096, 8).check_batch(48)
    queue = FeatureQueue(4, 2)
    with pytest.raises(ValueError, match="queue size 4 is not divisible by the global batch 3"):
        queue.enqueue(torch.randn(3, 2))
    with pytest.raises(ValueError, match="queue size 4 is not divisible by the global batch 8"):
        queue.enqueue(torch.randn(8, 2))
    with pytest.raises(ValueError, match="D=2"):
        queue.enqueue(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"integer \(2,\)"):
        queue.enqueue(torch.randn(2, 2), labels=torch.tensor([1]))
    assert queue.ptr.item() == 0  # failed calls leave the queue as it was


def test_state_dict_round_trip_restores_exactly() -> None:
    bank, queue = MemoryBank(20, 4), FeatureQueue(8, 4)
    bank.update(torch.tensor([3, 7]), torch.randn(2, 4), labels=torch.tensor([1, 2]))
    queue.enqueue(torch.randn(2, 4), labels=torch.tensor([5, 6]))
    buffer = io.BytesIO()
    torch.save({"bank": bank.state_dict(), "queue": queue.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer)
    assert set(state["bank"]) == {"bank", "labels"} and set(state["queue"]) == {"queue", "ptr", "labels"}
    bank2, queue2 = MemoryBank(20, 4, seed=9), FeatureQueue(8, 4, seed=9)
    bank2.load_state_dict(state["bank"])
    queue2.load_state_dict(state["queue"])
    for a, b in ((bank, bank2), (queue, queue2)):
        for (name, x), (_, y) in zip(a.named_buffers(), b.named_buffers()):
            assert torch.equal(x, y), name
    assert queue2.ptr.item() == 2
    queue.enqueue(torch.ones(2, 4))
    queue2.enqueue(torch.ones(2, 4))
    assert torch.equal(queue.queue, queue2.queue)  # the restored pointer writes where the original would


def test_gather_is_identity_without_distributed() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    assert not dist.is_initialized()
    assert gather_from_all_ranks(x) is x


def _ddp_worker(rank: int, world: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        bank, queue = MemoryBank(8, 3), FeatureQueue(4, 3)
        indices = torch.tensor([rank, rank + 4])  # each rank sees its own images
        z = torch.full((2, 3), float(rank + 1))
        all_indices, all_z = gather_from_all_ranks(indices), gather_from_all_ranks(z)
        bank.update(all_indices, all_z)
        queue.enqueue(all_z, labels=gather_from_all_ranks(torch.tensor([rank, rank])))
        results[rank] = (all_indices, bank.bank.clone(), queue.queue.clone(), queue.labels.clone())
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_rank_gather_keeps_banks_identical() -> None:
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(2, free_port(), results), nprocs=2, join=True)
        (i0, b0, q0, l0), (i1, b1, q1, l1) = results[0], results[1]
    assert i0.tolist() == i1.tolist() == [0, 4, 1, 5]  # rank order
    assert torch.equal(b0, b1) and torch.equal(q0, q1) and torch.equal(l0, l1)
    assert l0.tolist() == [0, 0, 1, 1]
    reference = MemoryBank(8, 3)
    reference.update(torch.tensor([0, 4, 1, 5]), torch.tensor([[1.0] * 3, [1.0] * 3, [2.0] * 3, [2.0] * 3]))
    assert torch.equal(b0, reference.bank)
