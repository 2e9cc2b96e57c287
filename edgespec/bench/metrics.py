"""Per-run measurements (peak RSS, greedy agreement) and summaries (median, min-max)."""

from __future__ import annotations

import resource
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from edgespec.quality import exact_prefix


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: ``5`` into /proc/self/clear_refs).

    Returns False where that is not possible; the peak is then the process's lifetime peak.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (VmHWM, else getrusage)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def agreement(tokens: Sequence[int], reference: Sequence[int]) -> float:
    """Greedy agreement: length of the common prefix / the longer length (1.0 = identical)."""
    return exact_prefix(tokens, reference) / max(len(reference), len(tokens), 1)


def spread(values: Iterable[float | None]) -> dict[str, float | None]:
    """``{"median", "min", "max", "n"}`` over the values that are not None."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def merge_hist(hists: Iterable[dict[str, int]]) -> dict[str, int]:
    """Sum acceptance histograms ``{accepted: steps}`` (keys as strings, sorted numerically)."""
    total: dict[int, int] = {}
    for h in hists:
        for k, v in h.items():
            total[int(k)] = total.get(int(k), 0) + int(v)
    return {str(k): total[k] for k in sorted(total)}


def safe_div(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt(v: Any, spec: str = ".2f", none: str = "-") -> str:
    """Format a number, or ``none`` for None."""
    return none if v is None else format(v, spec)
