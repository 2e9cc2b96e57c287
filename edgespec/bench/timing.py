"""Timing helpers for the micro-benchmarks in ``benchmarks/`` (kernels, FFNs, attention)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


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


def decode_ms(model: Any, context: int, reps: int) -> float:
    """Median wall time (ms) of ``reps`` one-token forwards of ``model`` (a
    :class:`~edgespec.model.Model`) after the first ``context`` tokens of its cache: the
    cache is cut back to them first, and each forward appends one token (ids 100, 101, ...).
    """
    model.truncate(context)
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        model.forward([100 + i], all_logits=False)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def emit(text: str, out: Path | None) -> int:
    """A benchmark script's result: ``text`` on stdout and, when ``out`` is given, written
    there (never half-written); returns the exit status 0."""
    from edgespec.fileutil import write_text

    print(text)
    if out is not None:
        write_text(out, text)
    return 0
