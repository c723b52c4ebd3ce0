"""The faiss backend of :class:`fam_lightning.knn.KNNIndex`: exact flat indexes, CPU or GPU.

``faiss.IndexFlatIP`` (cosine on L2-normalised rows, dot) or ``faiss.IndexFlatL2``
(euclidean); ``GpuIndexFlat*`` when faiss has GPU support and the bank is on CUDA
(the index then takes torch CUDA tensors), otherwise faiss-cpu on a host copy.
faiss is imported on first use only.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FAISS_GPU_MAX_K", "FaissFlatIndex", "faiss_available", "faiss_gpu_available"]

# faiss-gpu's flat index answers k <= 2048; larger k falls back to the torch backend.
FAISS_GPU_MAX_K = 2048


@functools.lru_cache(maxsize=1)
def _faiss() -> ModuleType | None:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def faiss_available() -> bool:
    """Whether ``import faiss`` works (faiss-cpu or faiss-gpu)."""
    return _faiss() is not None


def faiss_gpu_available() -> bool:
    """Whether faiss was built with GPU support and sees a GPU."""
    faiss = _faiss()
    return faiss is not None and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class FaissFlatIndex:
    """An exact faiss flat index of ``dim``-dimensional rows (its own float32 copy of them).

    Args:
        metric: "cosine", "dot" (inner product) or "euclidean" (L2; similarities are ``-|q - x|^2``).
        dim: row dimension.
        device: the bank's device (the GPU index is built on it when ``gpu``).
        gpu: build a ``GpuIndexFlat*`` (the caller checked :func:`faiss_gpu_available` and a CUDA bank).
    """

    def __init__(self, metric: str, dim: int, device: torch.device, gpu: bool) -> None:
        faiss = _faiss()
        self.metric, self.device, self.gpu = metric, device, gpu
        self.count = 0  # rows inside the index
        if gpu:
            import faiss.contrib.torch_utils  # noqa: F401  (lets faiss take torch CUDA tensors)

            gpu_flat = faiss.GpuIndexFlatL2 if metric == "euclidean" else faiss.GpuIndexFlatIP
            config = faiss.GpuIndexFlatConfig()
            config.device = device.index if device.index is not None else torch.cuda.current_device()
            self._resources = faiss.StandardGpuResources()
            self.index: Any = gpu_flat(self._resources, dim, config)
        else:
            self.index = (faiss.IndexFlatL2 if metric == "euclidean" else faiss.IndexFlatIP)(dim)

    def add(self, rows: Tensor) -> None:
        """Append ``rows`` (already normalised for cosine)."""
        if rows.shape[0]:
            self.index.add(self._to_faiss(rows))
        self.count += rows.shape[0]

    def _to_faiss(self, x: Tensor) -> Any:
        if self.gpu:
            return x.to(self.device, torch.float32).contiguous()
        return x.to("cpu", torch.float32).contiguous().numpy()

    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(Q, k) similarities (descending) and long indices; on the GPU for a GPU index, else on the CPU."""
        q = queries.detach()
        if self.metric == "cosine":
            q = F.normalize(q.float(), dim=1)
        distances, indices = self.index.search(self._to_faiss(q), k)
        if not isinstance(distances, Tensor):
            distances, indices = torch.from_numpy(distances), torch.from_numpy(indices)
        similarities = -distances if self.metric == "euclidean" else distances
        return similarities, indices.long()
