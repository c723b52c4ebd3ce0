"""The class splits of the protocols: few-shot (base / val / novel) and retrieval (train / test halves).

Pure functions of the sorted class ids (standard library only), so readers, DataModules and tools agree.
"""

from __future__ import annotations

from collections.abc import Sequence

FEWSHOT_SPLITS: dict[str, str] = {"base": "base", "train": "base", "val": "val", "novel": "novel", "test": "novel"}
RETRIEVAL_SPLITS: tuple[str, ...] = ("train", "test")


def fewshot_class_split(class_ids_sorted: Sequence[int], split: str) -> list[int]:
    """Few-shot class split of Chen et al. 2019 ("A Closer Look at Few-shot Classification").

    With ``i`` the 0-based position of a class in the sorted class list: base
    if ``i % 2 == 0``, val if ``i % 4 == 1``, novel if ``i % 4 == 3``
    (on CUB: 100 / 50 / 50 classes).

    Args:
        class_ids_sorted: All class ids; sorted here again, to be safe.
        split: "base" (alias "train"), "val", or "novel" (alias "test").

    Returns:
        The class ids of the split, ascending.

    Raises:
        ValueError: On an unknown split name.
    """
    if split not in FEWSHOT_SPLITS:
        raise ValueError(f"unknown few-shot split {split!r}; expected one of {sorted(FEWSHOT_SPLITS)}")
    keep = {"base": lambda i: i % 2 == 0, "val": lambda i: i % 4 == 1, "novel": lambda i: i % 4 == 3}
    rule = keep[FEWSHOT_SPLITS[split]]
    return [c for i, c in enumerate(sorted(class_ids_sorted)) if rule(i)]


def retrieval_class_split(class_ids_sorted: Sequence[int], split: str) -> list[int]:
    """Metric-learning retrieval split: first half of the classes train, the rest test.

    On CUB this is the usual 100 / 100 split. With an odd count the train
    half gets the extra class.

    Args:
        class_ids_sorted: All class ids; sorted here again, to be safe.
        split: "train" or "test".

    Returns:
        The class ids of the split, ascending.

    Raises:
        ValueError: On an unknown split name.
    """
    if split not in RETRIEVAL_SPLITS:
        raise ValueError(f"unknown retrieval split {split!r}; expected one of {list(RETRIEVAL_SPLITS)}")
    ordered = sorted(class_ids_sorted)
    half = (len(ordered) + 1) // 2
    return ordered[:half] if split == "train" else ordered[half:]
