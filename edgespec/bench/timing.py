"""Timing helpers for the micro-benchmarks in ``benchmarks/`` (kernels, FFNs, attention)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time (ms) of each callable over ``repeats`` calls, the calls of the
    different callables interleaved (so load on a shared machine hits them alike)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}
