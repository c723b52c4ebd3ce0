"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeats: int = 20, warmup: int = 3) -> float:
    """Median seconds per call of ``fn`` (device-synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def time_round_robin(methods: dict[str, Callable[[], object]], device: torch.device, rounds: int) -> dict[str, float]:
    """Median seconds per call of each method, timed in turns.

    Every round times each method once, so load from other processes (and
    thread pools waking each other) falls on all methods alike: ratios between
    methods of one run stay meaningful on a busy machine.
    """
    for fn in methods.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            samples[name].append(time_call(fn, device, repeats=1, warmup=0))
    return {name: statistics.median(values) for name, values in samples.items()}


def devices() -> list[torch.device]:
    found = [torch.device("cpu")]
    if torch.cuda.is_available():
        found.append(torch.device("cuda"))
    return found
