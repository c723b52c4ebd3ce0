"""Stateful pieces of contrastive memory models, as small modules with buffers.

- ``MemoryBank``: NPID's bank (Wu et al. 2018), one L2-normalised embedding per
  training image, updated with momentum 0.5.
- ``FeatureQueue``: MoCo's queue of negative keys (He et al. 2020), the oldest
  keys replaced first.

Every buffer is persistent, so a checkpoint restores the bank, the queue and
its pointer exactly.

DDP: every rank holds a full copy. The caller gathers the batch from all ranks
(``gather_from_all_ranks``, as MoCo's ``concat_all_gather``) and applies the
same update on every rank, so the copies stay identical; the random
initialisation comes from a fixed-seed generator, the same on every rank.
Lightning's DDP broadcasts module buffers from rank 0 at every forward by
default (``broadcast_buffers=True``): with gathered updates that copy is
redundant and, for a large bank, expensive; ``DDPStrategy(broadcast_buffers=False)``
avoids it.

Autograd: the updates write in place. Logits computed from ``bank`` or
``queue`` must use a copy (``queue.clone()``, ``bank[indices]``) when the
update runs before ``backward``, or autograd reports an in-place modification.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from fam_lightning.shapes import shape_of

__all__ = ["FeatureQueue", "MemoryBank", "gather_from_all_ranks"]


@torch.no_grad()
def gather_from_all_ranks(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, in rank order.

    Every rank must pass the same shape (``torch.distributed.all_gather``).
    No gradient flows through the result. Without an initialised process group
    (or with one rank) the tensor is returned unchanged.

    Args:
        tensor: (B, ...) on a device the process group's backend supports
            (CUDA for NCCL, CPU for gloo).

    Returns:
        (world_size * B, ...) tensor.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    tensor = tensor.detach().contiguous()
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor)
    return torch.cat(gathered)


def _random_unit_rows(size: int, dim: int, seed: int, uniform: bool) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    if uniform:  # NPID: U(-stdv, stdv) with stdv = 1 / sqrt(dim / 3), then normalised here
        stdv = 1.0 / math.sqrt(dim / 3)
        rows = torch.rand(size, dim, generator=generator).mul_(2 * stdv).sub_(stdv)
    else:  # MoCo: randn, normalised
        rows = torch.randn(size, dim, generator=generator)
    return F.normalize(rows, dim=1)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


class MemoryBank(nn.Module):
    """NPID's memory bank: one L2-normalised embedding (and label) per training image.

    Update rule for an image ``i`` seen with embedding ``z``::

        bank[i] = normalize(m * bank[i] + (1 - m) * z)

    **Duplicate indices** in one update (DistributedSampler pads the last batch
    by repeating images; two views of an image): their embeddings are averaged
    first, then the rule is applied once, ``z = mean_j z_j``. This is
    deterministic on every device, unlike "last write wins" with ``index_copy_``.

    Args:
        size: entries, the number of training images.
        dim: embedding dimension D.
        momentum: ``m`` in ``[0, 1]`` (0.5 in NPID); 0 replaces, 1 freezes.
        seed: seed of the random initialisation (the same on every DDP rank).

    Buffers:
        bank: (size, D) rows, initialised uniform as in NPID, then L2-normalised.
        labels: (size,) long, -1 until written.
    """

    bank: Tensor
    labels: Tensor

    def __init__(self, size: int, dim: int, momentum: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        _check_positive(size=size, dim=dim)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        self.size, self.dim, self.momentum = size, dim, float(momentum)
        self.register_buffer("bank", _random_unit_rows(size, dim, seed, uniform=True))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, momentum={self.momentum}"

    def check_dataset_size(self, num_images: int) -> None:
        """Raise a ValueError unless the bank has exactly one entry per training image."""
        if num_images != self.size:
            raise ValueError(
                f"memory bank has {self.size} entries but the training set has {num_images} images; "
                f"set size={num_images}"
            )

    def _check_indices(self, indices: Tensor, name: str = "indices") -> None:
        if not isinstance(indices, Tensor) or indices.dim() != 1 or indices.is_floating_point():
            raise ValueError(f"{name} must be an integer (B,) tensor, got {shape_of(indices)}")
        if indices.numel() and bool(((indices < 0) | (indices >= self.size)).any()):  # one sync
            low, high = int(indices.min()), int(indices.max())
            raise ValueError(
                f"{name} must lie in [0, {self.size}) for a memory bank of {self.size} entries, "
                f"got values in [{low}, {high}]"
            )

    @torch.no_grad()
    def update(self, indices: Tensor, embeddings: Tensor, labels: Tensor | None = None) -> None:
        """Momentum update of the rows ``indices`` (and optionally their labels).

        Under DDP pass the batch gathered from all ranks (``gather_from_all_ranks``
        on both ``indices`` and ``embeddings``), the same on every rank.

        Args:
            indices: (B,) dataset indices of the images.
            embeddings: (B, D) their embeddings (NPID: L2-normalised ``z``).
            labels: optional (B,) labels to write (``set_labels``).
        """
        self._check_indices(indices)
        if not isinstance(embeddings, Tensor) or embeddings.shape != (indices.shape[0], self.dim):
            raise ValueError(
                f"embeddings must be (B, D) = ({indices.shape[0]}, {self.dim}), got {shape_of(embeddings)}"
            )
        if labels is not None and (
            not isinstance(labels, Tensor) or labels.shape != indices.shape or labels.is_floating_point()
        ):
            raise ValueError(f"labels must be an integer ({indices.shape[0]},) tensor, got {shape_of(labels)}")
        if indices.numel() == 0:
            return
        indices = indices.to(self.bank.device, torch.long)
        z = embeddings.detach().to(self.bank.device, self.bank.dtype)
        unique, inverse = torch.unique(indices, return_inverse=True)  # (U,), (B,)
        mean = z.new_zeros(unique.shape[0], self.dim).index_add_(0, inverse, z)  # (U, D)
        mean /= torch.bincount(inverse, minlength=unique.shape[0]).unsqueeze(1).to(z.dtype)
        mixed = self.momentum * self.bank[unique] + (1.0 - self.momentum) * mean
        self.bank[unique] = F.normalize(mixed, dim=1)
        if labels is not None:
            self._write_labels(labels, indices)

    @torch.no_grad()
    def set_labels(self, labels: Tensor, indices: Tensor | None = None) -> None:
        """Write labels: all ``size`` of them, or those of ``indices``.

        With duplicate indices one of their labels is kept (they should agree).

        Args:
            labels: (size,) labels, or (B,) with ``indices``.
            indices: optional (B,) entries to write.
        """
        if indices is None:
            expected = self.size
        else:
            self._check_indices(indices)
            expected = indices.shape[0]
        if not isinstance(labels, Tensor) or labels.shape != (expected,) or labels.is_floating_point():
            raise ValueError(f"labels must be an integer ({expected},) tensor, got {shape_of(labels)}")
        if indices is None:
            self.labels.copy_(labels)
        else:
            self._write_labels(labels, indices)

    def _write_labels(self, labels: Tensor, indices: Tensor) -> None:
        self.labels[indices.to(self.labels.device, torch.long)] = labels.to(self.labels.device, torch.long)


class FeatureQueue(nn.Module):
    """MoCo's queue of negative keys: a ring buffer whose oldest keys are replaced first.

    As in MoCo, the queue size must be a multiple of the (global) batch that is
    enqueued, so a batch never straddles the wrap-around point twice and every
    key stays exactly ``size / B`` steps.

    Args:
        size: keys held (MoCo: 65536; 4096 for CIFAR-scale runs).
        dim: key dimension D.
        seed: seed of the random initialisation (the same on every DDP rank).

    Buffers:
        queue: (size, D) keys, initialised random normal, L2-normalised.
        ptr: long scalar, the row the next batch is written to.
        labels: (size,) long labels of the keys, -1 when unknown.
    """

    queue: Tensor
    ptr: Tensor
    labels: Tensor

    def __init__(self, size: int, dim: int, seed: int = 0) -> None:
        super().__init__()
        _check_positive(size=size, dim=dim)
        self.size, self.dim = size, dim
        self.register_buffer("queue", _random_unit_rows(size, dim, seed, uniform=False))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"

    def check_batch(self, global_batch: int) -> None:
        """Raise a ValueError unless ``global_batch`` divides the queue size (MoCo's assertion)."""
        if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < 1:
            raise ValueError(f"global_batch must be a positive int, got {global_batch!r}")
        if self.size % global_batch:
            raise ValueError(f"queue size {self.size} is not divisible by the global batch {global_batch}")

    def negatives(self) -> Tensor:
        """(size, D) copy of the queue, safe to use in logits before ``enqueue`` runs."""
        return self.queue.clone()

    @torch.no_grad()
    def enqueue(self, keys: Tensor, labels: Tensor | None = None) -> None:
        """Write ``keys`` over the oldest entries and advance the pointer.

        Under DDP pass the keys gathered from all ranks (``gather_from_all_ranks``).
        Runs without a host sync: the pointer stays on the device.

        Args:
            keys: (B, D) keys (MoCo: L2-normalised momentum-encoder outputs);
                ``B`` must divide the queue size.
            labels: optional (B,) labels; without them the slots get -1.
        """
        if not isinstance(keys, Tensor) or keys.dim() != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"keys must be (B, D) with D={self.dim}, got {shape_of(keys)}")
        batch = keys.shape[0]
        self.check_batch(batch)
        if labels is not None and (
            not isinstance(labels, Tensor) or labels.shape != (batch,) or labels.is_floating_point()
        ):
            raise ValueError(f"labels must be an integer ({batch},) tensor, got {shape_of(labels)}")
        device = self.queue.device
        slots = (self.ptr + torch.arange(batch, device=device)) % self.size  # (B,)
        self.queue.index_copy_(0, slots, keys.detach().to(device, self.queue.dtype))
        new_labels = torch.full((batch,), -1, dtype=torch.long, device=device) if labels is None else labels
        self.labels.index_copy_(0, slots, new_labels.to(device, torch.long))
        self.ptr.copy_((self.ptr + batch) % self.size)
