"""The torch backend of :class:`fam_lightning.knn.KNNIndex`: blocks of queries, matmul + ``topk``.

A block of ``c`` queries takes one ``(c, N)`` matrix of similarities; ``c`` is
bounded so that the matrix stays within ``max_chunk_bytes`` (:func:`block_queries`),
and **one** such matrix is allocated per search and reused by every block
(``torch.matmul(..., out=)``, bit-identical to ``block @ rows.t()``). Before, each
block got a fresh matrix while the previous one was still referenced: the peak
was the bank + two blocks, and every block paid its page faults again (at
1.28 M x 128, 2 k queries: 2.5 M minor faults, against 0.26 M with the reused
buffer; the README's "How costs grow").
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["block_queries", "search_blocks"]

# Blocks of at least this many bytes are checked against the device's available memory first.
_CHECKED_BLOCK_BYTES = 2**28


def _available_bytes(device: torch.device) -> int | None:
    """Memory available for a new allocation on ``device`` (None when unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def block_queries(
    rows: Tensor, chunk_size: int, max_chunk_bytes: int, num_queries: int | None = None
) -> int:
    """Queries per block over the bank ``rows`` (N, D): ``min(chunk_size, max_chunk_bytes // (N x element size))``.

    Raises a ``MemoryError`` naming the sizes and the options when not even one
    query's similarities fit ``max_chunk_bytes``, or when the block would not
    fit in the memory available on the bank's device.
    """
    size, dim = rows.shape
    row_bytes = size * rows.element_size()
    if row_bytes > max_chunk_bytes:
        raise MemoryError(
            f"kNN over a bank of {size} x {dim}: one query's similarities take {row_bytes / 2**20:.1f} MiB, "
            f"more than max_chunk_bytes={max_chunk_bytes}; raise KNNIndex(max_chunk_bytes=...)"
        )
    count = min(chunk_size, max_chunk_bytes // row_bytes)
    if num_queries is not None:
        count = max(1, min(count, num_queries))
    block_bytes = count * row_bytes
    if block_bytes >= _CHECKED_BLOCK_BYTES:
        available = _available_bytes(rows.device)
        if available is not None and block_bytes > available:
            raise MemoryError(
                f"kNN over a bank of {size} x {dim} on {rows.device}: a block of {count} queries needs "
                f"{block_bytes / 2**30:.2f} GiB of similarities but {available / 2**30:.2f} GiB are available; "
                f"lower KNNIndex(chunk_size=...) (now {chunk_size}) or max_chunk_bytes (now "
                f"{max_chunk_bytes}), e.g. max_chunk_bytes={max(row_bytes, available // 4)}"
            )
    return count


def search_blocks(
    rows: Tensor, queries: Tensor, k: int, block: int, sq_norms: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The k largest similarities of each query (descending) and their row indices, block by block.

    Args:
        rows: (N, D) bank (normalised for cosine).
        queries: (Q, D), Q >= 1, on the rows' device and dtype (normalised for cosine).
        k: neighbours per query.
        block: queries per block (:func:`block_queries`).
        sq_norms: (N,) ``|x|^2`` for the euclidean similarity ``-|q - x|^2``; None: dot products.
    """
    buffer = rows.new_empty(min(block, queries.shape[0]), rows.shape[0])  # one block of similarities, reused
    similarities, indices = [], []
    for part in queries.split(block):
        scores = torch.matmul(part, rows.t(), out=buffer[: part.shape[0]])  # (c, N)
        if sq_norms is not None:
            # -|q - x|^2 = 2 q.x - |x|^2 - |q|^2; the last term does not change the ranking.
            values, idx = scores.mul_(2).sub_(sq_norms).topk(k, dim=1)
            values = (values - part.square().sum(1, keepdim=True)).clamp_max_(0)
        else:
            values, idx = scores.topk(k, dim=1)
        similarities.append(values)
        indices.append(idx)
    return torch.cat(similarities), torch.cat(indices)
