"""What the benchmark scripts share (`python benchmarks/<script>.py` puts this folder on the import path)."""

from __future__ import annotations

import statistics
import time

import torch


def once_ms(fn, *, device: torch.device) -> float:
    """Wall time of one call of `fn()` in milliseconds (synchronised on GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000


def median_ms(fn, *, device: torch.device, repeats: int) -> float:
    """Median wall time of `fn()` in milliseconds (synchronised on GPU), after one warm-up call."""
    fn()
    return statistics.median(once_ms(fn, device=device) for _ in range(repeats))
