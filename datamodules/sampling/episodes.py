"""Episodic few-shot sampling: one dataset item is one whole, collated episode.

An ``N``-way ``K``-shot ``Q``-query episode (learn2learn's vocabulary: ways,
shots, queries) draws ``N`` classes, then ``K + Q`` distinct images of each.
Each episode comes out as a dict of tensors, class-major::

    "support":        (N*K, 3, H, W)  rows j*K ... j*K+K-1 are way j
    "query":          (N*Q, 3, H, W)  rows j*Q ... j*Q+Q-1 are way j
    "support_target": (N*K,) long     episode-local labels in [0, N): way j -> j
    "query_target":   (N*Q,) long
    "support_class":  (N*K,) long     the split-level class label of each row
    "query_class":    (N*Q,) long
    "support_box":    (N*K, 4) float  (x0, y0, x1, y1), when items have a "box"
    "query_box":      (N*Q, 4) float
    "support_index":  (N*K,) long     row of the image in the underlying data set
    "query_index":    (N*Q,) long
    "ways", "shots", "queries": python ints

So ``support.view(N, K, 3, H, W)`` groups the support set by way, and
``support_target == arange(N).repeat_interleave(K)``.

Because each item is already a batch, the DataLoader runs with
``batch_size=None``, and Lightning's DistributedSampler splits episode
indices across DDP ranks like any map-style data set.

Several episodes per step (LibFewShot's ``episode_size``): a DataLoader with
``batch_size=E`` and ``collate_fn=collate_episodes`` stacks ``E`` episodes of
the same shape, so every tensor gains a leading episode axis
(``"support"``: (E, N*K, 3, H, W), ``"query_target"``: (E, N*Q), ...), while
``"ways"``, ``"shots"``, ``"queries"`` stay python ints.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Protocol

import torch
from torch.utils.data import Dataset, get_worker_info

from fam_lightning.seeding import mix_seed

from ..formats.checks import DataCheckWarning
from .samplers import process_group

__all__ = ["EpisodeDataset", "LabelledDataset", "collate_episodes", "mix_seed"]


class LabelledDataset(Protocol):
    """What episodes need of a data set: per-item labels up front, and item dicts."""

    labels: torch.Tensor

    def __getitem__(self, index: int) -> dict[str, Any]: ...

    def __len__(self) -> int: ...


class EpisodeDataset(Dataset):
    """Map-style data set of few-shot episodes drawn from a labelled data set.

    Args:
        dataset: Has ``labels`` (LongTensor (N,)) and returns item dicts with
            "image", "label" and optionally "box".
        ways: Classes per episode.
        shots: Support images per class.
        queries: Query images per class.
        num_episodes: Length of the data set (episodes per epoch).
        seed: If given, episode ``i`` is a fixed function of ``(seed, i)``:
            every epoch sees the same episodes (validation, test). If None,
            episodes are drawn fresh from a per-process generator seeded by
            ``torch.initial_seed()`` and the distributed rank, so DataLoader
            workers and DDP ranks differ, and runs repeat under
            ``lightning.seed_everything(..., workers=True)`` (training).
        empty_classes_error: A class of the split (``dataset.num_classes``) with no
            image at all is an error naming it (training: the model has an output
            for it); otherwise it is warned about with the other classes that can
            never appear in an episode.

    A class with fewer than ``shots + queries`` images can never appear in an
    episode: a warning names them (``DataCheckWarning``).

    Raises:
        ValueError: If a count is not positive, fewer than ``ways`` classes
            have ``shots + queries`` images, or (``empty_classes_error``) a class has no image.
    """

    def __init__(
        self,
        dataset: LabelledDataset,
        ways: int,
        shots: int,
        queries: int,
        num_episodes: int,
        seed: int | None = None,
        empty_classes_error: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("ways", ways), ("shots", shots), ("queries", queries), ("num_episodes", num_episodes)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.dataset = dataset
        self.ways, self.shots, self.queries = ways, shots, queries
        self.num_episodes = num_episodes
        self.seed = seed
        self.empty_classes_error = empty_classes_error
        self._class_labels, self._class_rows = self._eligible_classes(torch.as_tensor(dataset.labels, dtype=torch.long))
        self._generator: torch.Generator | None = None
        self._generator_owner: tuple[int, int] | None = None

    def _eligible_classes(self, labels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Labels (C,) of the classes with at least shots + queries images, and each one's rows."""
        need = self.shots + self.queries
        classes, counts = torch.unique(labels, return_counts=True)
        keep = classes[counts >= need]
        eligible = [torch.nonzero(labels == c).flatten() for c in keep]
        split = getattr(self.dataset, "split", None)
        where = f" of split {split!r}" if split is not None else ""
        short = self._unusable_classes(labels, need, where)
        if len(eligible) < self.ways:
            smallest = int(counts.min()) if len(counts) else 0
            raise ValueError(
                f"episode asks for {self.ways}-way {self.shots}-shot {self.queries}-query "
                f"({need} images per class) but only {len(eligible)} classes{where} have >= {need} images "
                f"({len(classes)} classes in all, smallest class has {smallest})"
            )
        if short:
            warnings.warn(short, DataCheckWarning, stacklevel=3)
        return keep, eligible

    def _unusable_classes(self, labels: torch.Tensor, need: int, where: str) -> str:
        """The warning naming the classes that can never appear in an episode ("" if none).

        Raises:
            ValueError: naming the classes without any image, with ``empty_classes_error``.
        """
        num_classes = int(getattr(self.dataset, "num_classes", 0) or 0)
        counts = torch.bincount(labels, minlength=max(num_classes, int(labels.max()) + 1 if len(labels) else 0))
        names = list(getattr(self.dataset, "classes", None) or [])
        ids = list(getattr(self.dataset, "class_ids", None) or [])  # e.g. CUB's class ids (label i is ids[i])

        def name(label: int) -> str:
            shown = f"id {ids[label]}" if label < len(ids) else f"label {label}"
            return f"{shown} ({names[label]!r})" if label < len(names) else shown

        empty = [c for c in range(len(counts)) if counts[c] == 0]
        if empty and self.empty_classes_error:
            shown = ", ".join(name(c) for c in empty[:10]) + (f", ... ({len(empty)} in all)" if len(empty) > 10 else "")
            raise ValueError(
                f"class{'es' if len(empty) > 1 else ''} {shown}{where} {'have' if len(empty) > 1 else 'has'} no "
                "images: every class of the split must have images (check the class labels of the image list)"
            )
        short = [c for c in range(len(counts)) if counts[c] < need]
        if not short:
            return ""
        listed = [f"{name(c)}: {int(counts[c])} image{'s' if counts[c] != 1 else ''}" for c in short]
        shown = "; ".join(listed[:10]) + (f"; ... ({len(short)} in all)" if len(short) > 10 else "")
        return (
            f"{len(short)} class{'es' if len(short) > 1 else ''}{where} can never appear in a "
            f"{self.ways}-way {self.shots}-shot {self.queries}-query episode ({need} images per class "
            f"needed) and {'are' if len(short) > 1 else 'is'} left out: {shown}"
        )

    @property
    def num_eligible_classes(self) -> int:
        """Classes with enough images to appear in an episode."""
        return len(self._class_rows)

    def __len__(self) -> int:
        return self.num_episodes

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """Episode ``key``: an index, or ``(index, episode_seed)`` from an ``EpochSeededSampler``.

        With an ``episode_seed`` the episode is a fixed function of it (resumable training
        episodes); otherwise see ``seed`` in the class docstring.
        """
        index, episode_seed = key if isinstance(key, tuple) else (key, None)
        if not 0 <= index < self.num_episodes:
            raise IndexError(f"episode index {index} out of range for {self.num_episodes} episodes")
        classes, support_rows, query_rows = self.sample_indices(index, episode_seed)
        return self._collate(classes, support_rows, query_rows)

    def sample_indices(
        self, index: int, episode_seed: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw one episode's rows without loading any image.

        Args:
            index: Episode index (used only when ``seed`` is set).
            episode_seed: If given, the episode is drawn from a generator
                seeded with it (it overrides ``seed`` and the per-process stream).

        Returns:
            ``(classes, support_rows, query_rows)``: the split-level class
            label of each way (W,), and data set rows (W*S,), (W*Q,), class-major.
        """
        if episode_seed is not None:
            generator = torch.Generator().manual_seed(episode_seed)
        else:
            generator = self._episode_generator(index)
        pick = torch.randperm(len(self._class_rows), generator=generator)[: self.ways]
        support, query = [], []
        for c in pick.tolist():
            rows = self._class_rows[c]
            chosen = rows[torch.randperm(len(rows), generator=generator)[: self.shots + self.queries]]
            support.append(chosen[: self.shots])
            query.append(chosen[self.shots :])
        return self._class_labels[pick], torch.cat(support), torch.cat(query)

    def _episode_generator(self, index: int) -> torch.Generator:
        if self.seed is not None:
            return torch.Generator().manual_seed(mix_seed(self.seed, index))
        # Re-seed when first used in a new process or worker, so copies never share a stream.
        worker = get_worker_info()
        owner = (os.getpid(), worker.id if worker is not None else -1)
        if self._generator is None or self._generator_owner != owner:
            self._generator = torch.Generator().manual_seed(mix_seed(torch.initial_seed(), process_group()[1]))
            self._generator_owner = owner
        return self._generator

    def _collate(self, classes: torch.Tensor, support_rows: torch.Tensor, query_rows: torch.Tensor) -> dict[str, Any]:
        """Load the episode's items and stack them into the class-major episode dict."""
        episode: dict[str, Any] = {}
        for role, rows, per_way in (("support", support_rows, self.shots), ("query", query_rows, self.queries)):
            items = [self.dataset[int(r)] for r in rows]
            episode[role] = torch.stack([item["image"] for item in items])
            episode[f"{role}_target"] = torch.arange(self.ways).repeat_interleave(per_way)
            episode[f"{role}_class"] = classes.repeat_interleave(per_way)
            if all("box" in item for item in items):
                boxes = [torch.as_tensor(item["box"], dtype=torch.float32) for item in items]
                episode[f"{role}_box"] = torch.stack(boxes)
            episode[f"{role}_index"] = rows.clone()
        episode.update(ways=self.ways, shots=self.shots, queries=self.queries)
        return episode

    def __getstate__(self) -> dict[str, Any]:
        # A generator copied into a worker would repeat the parent's stream: drop it, it is re-created lazily.
        state = self.__dict__.copy()
        state["_generator"] = None
        state["_generator_owner"] = None
        return state



def collate_episodes(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack ``E`` episode dicts into one batch: tensors (E, ...), ``ways`` / ``shots`` / ``queries`` ints.

    Raises:
        ValueError: If the list is empty, or the episodes differ in shape or keys.
    """
    if not episodes:
        raise ValueError("collate_episodes needs at least one episode")
    first = episodes[0]
    shape = {name: first[name] for name in ("ways", "shots", "queries")}
    for episode in episodes[1:]:
        other = {name: episode[name] for name in shape}
        if other != shape or episode.keys() != first.keys():
            raise ValueError(
                f"episodes of one batch must share ways / shots / queries and keys: {shape} with keys "
                f"{sorted(first)} vs {other} with keys {sorted(episode)}"
            )
    batch: dict[str, Any] = {key: torch.stack([episode[key] for episode in episodes]) for key in first if key not in shape}
    batch.update(shape)
    return batch
