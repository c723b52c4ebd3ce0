"""Exact k-nearest-neighbour search and NPID's weighted kNN vote, one interface, two backends.

``KNNIndex`` holds a bank of N embeddings (and optionally their labels) and
answers, for Q queries, the k most similar entries and a class vote:

- ``backend="torch"`` (:mod:`fam_lightning.knn_torch`): chunked matmul +
  ``topk`` on the bank's device (CPU, CUDA, any device torch runs on), no
  host copies; one block of at most ``min(chunk_size, max_chunk_bytes / (N x
  element size))`` queries' similarities, allocated once per search and
  reused: a block never exceeds ``max_chunk_bytes`` (1 GiB by default)
  whatever the bank size (1.28 M x 128 on CPU: peak memory the bank + ~1 GiB,
  ``benchmarks/scaling.py``). Exact.
- ``backend="faiss"`` (:mod:`fam_lightning.knn_faiss`): ``faiss.IndexFlatIP``
  (cosine on L2-normalised rows, dot) or ``faiss.IndexFlatL2`` (euclidean),
  also exact; faiss-gpu (``GpuIndexFlat*``) when ``faiss.StandardGpuResources``
  exists and the bank is on CUDA, otherwise faiss-cpu (on a host copy).
- ``backend="auto"``: faiss-gpu for a CUDA bank when faiss has GPU support
  (``requirements-gpu.txt``: ``faiss-gpu-cu13-cuvs``), torch otherwise: on 2
  CPU cores faiss-cpu's flat search took ~4x the torch search
  (``benchmarks/knn.py``), so "auto" never picks faiss-cpu.

Both backends return the same neighbours (similarities agree to float32
rounding) while a query's similarities are distinct; **ties** are ordered
arbitrarily by both (either of two entries tied at the k-th place may be
kept), so with ties only the similarity values are guaranteed to agree.

The kNN classifier is NPID's (Wu et al. 2018): each of the k neighbours votes
for its label with weight ``exp(s / T)`` (K = 200, T = 0.07 in the paper), and
the prediction is the arg max of the summed votes.

Under DDP the index is rank-local: build it from a bank that is identical on
every rank (e.g. ``fam_lightning.memory.MemoryBank``, updated with gathered
embeddings), classify each rank's own queries, and reduce the accuracies.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fam_lightning import knn_torch
from fam_lightning.knn_faiss import FAISS_GPU_MAX_K, FaissFlatIndex, _faiss, faiss_available, faiss_gpu_available
from fam_lightning.shapes import shape_of

__all__ = [  # FAISS_GPU_MAX_K and _faiss too: benchmarks/knn.py and older code import them from here
    "BACKENDS", "METRICS", "KNNIndex", "faiss_available", "faiss_gpu_available", "topk_accuracy",
    "FAISS_GPU_MAX_K", "_faiss"]

BACKENDS = ("auto", "torch", "faiss")
METRICS = ("cosine", "dot", "euclidean")


class KNNIndex:
    """Exact kNN search and weighted kNN classification over a bank of embeddings.

    ``add`` **appends** (like a faiss index); ``reset`` empties the index. To
    replace the bank, ``reset()`` then ``add(...)``. Rows are stored on the
    device of the first ``add`` (later adds are moved there); for ``"cosine"``
    they are stored L2-normalised. The faiss backend keeps its own float32 copy
    of the rows beside the tensor (``embeddings``), so it holds the bank twice.

    Args:
        backend: "auto", "torch" or "faiss" (see the module docstring). "auto"
            is resolved at the first ``add`` from the bank's device.
        metric: "cosine", "dot" or "euclidean" (similarity ``-|q - x|^2``).
        chunk_size: most queries per matmul block of the torch backend.
        max_chunk_bytes: most bytes of one block of similarities (``queries x N``)
            of the torch backend; fewer queries go into a block when the bank is
            large. A block that would not fit in the device's available memory
            raises a ``MemoryError`` naming the sizes and these two options.

    Example:
        >>> index = KNNIndex(metric="cosine")
        >>> index.add(bank, labels)                     # (N, D), (N,)
        >>> scores, nbr, w = index.classify(queries)    # K = 200, T = 0.07
        >>> predictions = scores.argmax(1)
    """

    def __init__(
        self, backend: str = "auto", metric: str = "cosine", chunk_size: int = 4096, max_chunk_bytes: int = 2**30
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        for name, value in (("chunk_size", chunk_size), ("max_chunk_bytes", max_chunk_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.max_chunk_bytes = max_chunk_bytes
        if backend == "faiss" and not faiss_available():
            raise ImportError('backend="faiss" needs faiss: pip install faiss-cpu (or use backend="torch")')
        self.requested_backend = backend
        self.metric = metric
        self.chunk_size = chunk_size
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Empty the index (the backend of ``"auto"`` is chosen again at the next ``add``)."""
        self.backend: str | None = None if self.requested_backend == "auto" else self.requested_backend
        self._rows: Tensor | None = None  # (N, D) consolidated bank
        self._labels: Tensor | None = None  # (N,) long
        self._sq_norms: Tensor | None = None  # (N,) |x|^2, euclidean only
        self._pending_rows: list[Tensor] = []
        self._pending_labels: list[Tensor] = []
        self._faiss_index: FaissFlatIndex | None = None
        self._faiss_count = 0  # rows already inside the faiss index
        self._size = 0
        self._dim: int | None = None
        self._device: torch.device | None = None
        self._has_labels: bool | None = None
        self._max_label = -1

    def __len__(self) -> int:
        return self._size

    @property
    def dim(self) -> int | None:
        """Embedding dimension D (None while empty)."""
        return self._dim

    @property
    def device(self) -> torch.device | None:
        """Device the bank tensor lives on (None while empty)."""
        return self._device

    @property
    def embeddings(self) -> Tensor:
        """(N, D) stored rows (L2-normalised for cosine), e.g. FAM references."""
        self._consolidate()
        if self._rows is None:
            raise ValueError("the index is empty; call add() first")
        return self._rows

    @property
    def labels(self) -> Tensor | None:
        """(N,) long labels, or None when the index was built without labels."""
        self._consolidate()
        return self._labels

    @property
    def num_classes(self) -> int:
        """Largest added label + 1 (0 without labels)."""
        return self._max_label + 1

    def add(self, embeddings: Tensor, labels: Tensor | None = None) -> None:
        """Append ``embeddings`` (and their labels) to the index.

        Args:
            embeddings: (N, D) floating tensor; D must match earlier adds.
            labels: (N,) integer labels, or None. Either every ``add`` since the
                last ``reset`` passes labels or none does. Negative labels
                (e.g. an unwritten memory-bank entry, -1) cast no vote.
        """
        if not isinstance(embeddings, Tensor) or embeddings.dim() != 2 or not embeddings.is_floating_point():
            raise ValueError(f"embeddings must be a floating (N, D) tensor, got {shape_of(embeddings)}")
        if self._dim is not None and embeddings.shape[1] != self._dim:
            raise ValueError(f"embeddings have D={embeddings.shape[1]} but the index holds D={self._dim}")
        has_labels = labels is not None
        if self._has_labels is not None and has_labels != self._has_labels:
            raise ValueError(
                "labels must be passed to every add() or to none since the last reset(); "
                f"the index was built {'with' if self._has_labels else 'without'} labels"
            )
        if labels is not None:
            if not isinstance(labels, Tensor) or labels.shape != embeddings.shape[:1] or labels.is_floating_point():
                raise ValueError(
                    f"labels must be an integer (N,) tensor with N={embeddings.shape[0]}, got {shape_of(labels)}"
                    + (f" of {labels.dtype}" if isinstance(labels, Tensor) else "")
                )
        if self._device is None:
            self._device = embeddings.device
            self._dim = embeddings.shape[1]
            self._has_labels = has_labels
            if self.backend is None:
                self.backend = self._auto_backend(embeddings.device)
        rows = embeddings.detach().to(self._device)
        if self.metric == "cosine":
            rows = F.normalize(rows, dim=1)
        self._pending_rows.append(rows)
        if labels is not None:
            labels = labels.detach().to(self._device, torch.long)
            self._pending_labels.append(labels)
            if labels.numel():
                self._max_label = max(self._max_label, int(labels.max()))  # one sync per add
        self._size += rows.shape[0]

    @staticmethod
    def _auto_backend(device: torch.device) -> str:
        # faiss only pays off on the GPU; on CPU torch's matmul + topk is faster.
        return "faiss" if device.type == "cuda" and faiss_gpu_available() else "torch"

    def _consolidate(self) -> None:
        """Concatenate pending adds into the bank (and the faiss index): O(N) once per batch of adds."""
        if not self._pending_rows:
            return
        parts = ([] if self._rows is None else [self._rows]) + self._pending_rows
        self._rows = torch.cat(parts) if len(parts) > 1 else parts[0]
        if self._has_labels:
            parts = ([] if self._labels is None else [self._labels]) + self._pending_labels
            self._labels = torch.cat(parts) if len(parts) > 1 else parts[0]
        if self.metric == "euclidean":
            self._sq_norms = self._rows.square().sum(1)
        self._pending_rows, self._pending_labels = [], []
        if self.backend == "faiss":
            self._faiss_add(self._rows[self._faiss_count :])

    # ---------------------------------------------------------------- faiss

    def _uses_faiss_gpu(self) -> bool:
        return self._device is not None and self._device.type == "cuda" and faiss_gpu_available()

    def _faiss_add(self, rows: Tensor) -> None:
        if self._faiss_index is None:
            self._faiss_index = FaissFlatIndex(self.metric, self._dim, self._device, self._uses_faiss_gpu())
        self._faiss_index.add(rows)
        self._faiss_count = self._faiss_index.count

    # ---------------------------------------------------------------- torch

    def _search_torch(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        rows = self._rows
        q = queries.detach().to(rows.device, rows.dtype)
        if self.metric == "cosine":
            q = F.normalize(q, dim=1)
        if q.shape[0] == 0:
            return rows.new_empty(0, k), torch.empty(0, k, dtype=torch.long, device=rows.device)
        sq_norms = self._sq_norms if self.metric == "euclidean" else None
        return knn_torch.search_blocks(rows, q, k, self.block_queries(q.shape[0]), sq_norms)

    def block_queries(self, num_queries: int | None = None) -> int:
        """Queries per matmul block of the torch backend for the current bank (a ``MemoryError`` naming the
        sizes and options when a block cannot fit): :func:`fam_lightning.knn_torch.block_queries`."""
        self._consolidate()
        if self._rows is None:
            raise ValueError("the index is empty; call add() first")
        return knn_torch.block_queries(self._rows, self.chunk_size, self.max_chunk_bytes, num_queries)

    # --------------------------------------------------------------- public

    def _search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Search on the backend's device (no move back to the queries' device)."""
        self._consolidate()
        if self._rows is None or self._size == 0:
            raise ValueError("the index is empty; call add() first")
        if not isinstance(queries, Tensor) or queries.dim() != 2 or queries.shape[1] != self._dim:
            raise ValueError(f"queries must be (Q, D) with D={self._dim}, got {shape_of(queries)}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if k > self._size:
            raise ValueError(f"k={k} is larger than the number of indexed entries ({self._size})")
        use_faiss = self.backend == "faiss" and not (self._uses_faiss_gpu() and k > FAISS_GPU_MAX_K)
        return self._faiss_index.search(queries, k) if use_faiss else self._search_torch(queries, k)

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The k most similar indexed entries of each query.

        Args:
            queries: (Q, D) embeddings (normalised here for cosine).
            k: neighbours per query, ``1 <= k <= len(self)``.

        Returns:
            ``(similarities, indices)``, both (Q, k) on the queries' device,
            sorted by descending similarity (euclidean: ``-|q - x|^2``);
            indices count entries in the order they were added.
        """
        similarities, indices = self._search(queries, k)
        return similarities.to(queries.device), indices.to(queries.device)

    def classify(
        self, queries: Tensor, k: int = 200, temperature: float = 0.07, num_classes: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """NPID's weighted kNN vote.

        ``score_c(q) = sum_{j in kNN(q)} 1[y_j = c] exp(s_j / T)``. For "cosine"
        (bounded similarities) the weights are exactly ``exp(s / T)``; for "dot"
        and "euclidean" each query's weights are ``exp((s - s_max) / T)``, the
        same up to a per-query factor (same predictions and normalised weights)
        but free of overflow and of all-zero underflow.

        Args:
            queries: (Q, D) embeddings.
            k: neighbours that vote.
            temperature: ``T > 0``.
            num_classes: columns of ``scores``; default: largest label + 1.

        Returns:
            ``(scores, neighbour_indices, neighbour_weights)``: (Q, C) summed
            votes (predictions = ``scores.argmax(1)``), the (Q, k) neighbours
            sorted by descending similarity and their (Q, k) vote weights
            (0 for entries with a negative label), all on the queries' device.
        """
        if not self._has_labels:
            raise ValueError("classify needs labels: build the index with add(embeddings, labels)")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if num_classes is None:
            num_classes = self.num_classes
        elif num_classes < self.num_classes:
            raise ValueError(
                f"num_classes={num_classes} but the index holds label {self._max_label} "
                f"(needs num_classes >= {self.num_classes})"
            )
        similarities, indices = self._search(queries, k)
        neighbour_labels = self._labels[indices.to(self._labels.device)].to(similarities.device)  # (Q, k)
        s = similarities.to(torch.promote_types(similarities.dtype, torch.float32))
        if self.metric != "cosine":
            s = s - s[:, :1]  # sorted descending: column 0 is the maximum
        weights = torch.exp(s / temperature) * (neighbour_labels >= 0)
        scores = weights.new_zeros(weights.shape[0], num_classes)
        scores.scatter_add_(1, neighbour_labels.clamp_min(0), weights)
        device = queries.device
        return scores.to(device), indices.to(device), weights.to(device)


def topk_accuracy(scores: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, Tensor]:
    """Top-k accuracies, fractions in ``[0, 1]``.

    ``acc_k = (1/Q) sum_q 1[target_q in topk(scores_q, k)]``; a target tied
    with others at the k-th place counts if ``torch.topk`` keeps it.

    Args:
        scores: (Q, C) class scores (e.g. from ``KNNIndex.classify``).
        targets: (Q,) integer labels.
        ks: the k values, each ``1 <= k <= C``.

    Returns:
        ``{k: scalar tensor}`` on the scores' device.
    """
    if not isinstance(scores, Tensor) or scores.dim() != 2:
        raise ValueError(f"scores must be (Q, C), got {shape_of(scores)}")
    if not isinstance(targets, Tensor) or targets.shape != scores.shape[:1] or targets.is_floating_point():
        raise ValueError(f"targets must be an integer (Q,) tensor with Q={scores.shape[0]}, got {shape_of(targets)}")
    num_classes = scores.shape[1]
    for k in ks:
        if not 1 <= k <= num_classes:
            raise ValueError(f"top-k accuracy needs 1 <= k <= C={num_classes} classes, got k={k}")
    if not ks:
        return {}
    top = scores.topk(max(ks), dim=1).indices  # (Q, max k), best first
    hits = top == targets.to(top.device).unsqueeze(1)  # (Q, max k)
    dtype = scores.dtype if scores.is_floating_point() else torch.float32
    return {k: hits[:, :k].any(1).to(dtype).mean() for k in ks}
