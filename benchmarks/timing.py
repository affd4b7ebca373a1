"""What the benchmark scripts share (`python benchmarks/<script>.py` puts this folder on the import path)."""

from __future__ import annotations

import statistics
import time

import torch


def median_ms(fn, *, device: torch.device, repeats: int) -> float:
    """Median wall time of `fn()` in milliseconds (synchronised on GPU), after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)
