"""Timing helper shared by the benchmark targets."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def median_time(function: Callable[[], object], repeats: int) -> float:
    """Return the median wall time (s) of `function` over `repeats` calls, after one warm-up call.

    CUDA work is synchronised before and after each call, so queued kernels count.
    """
    function()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]
