"""Cost curves: the measured cost of a target forward of n tokens on this machine.

Stored as JSON under ``$EDGESPEC_HOME/cost_curves/<device fingerprint>.json``, keyed by
backend, model and thread count, so the controller starts from real numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from edgespec.fileutil import atomic_path
from edgespec.home import edgespec_home
from edgespec.model import Model


def device_description() -> str:
    """A human-readable description: CPU model, core count, machine, OS."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [cpu or "unknown cpu", f"{os.cpu_count()} cpus", platform.machine(), platform.system()]
    return " | ".join(parts)


def device_fingerprint() -> str:
    """A short stable id of this device (hash of :func:`device_description`)."""
    return hashlib.sha256(device_description().encode()).hexdigest()[:16]


def curve_key(backend: str, model: str, threads: int | None, variant: str = "") -> str:
    """The key of a stored cost curve. ``variant`` tells apart what one backend can make of
    one file (the onnx backend's graph and weights, e.g. ``shared-gguf-exact``)."""
    label = f"{backend}:{variant}" if variant else backend
    return f"{label}|{Path(model).name}|threads={threads or 'default'}"


def _curves_path() -> Path:
    return edgespec_home() / "cost_curves" / f"{device_fingerprint()}.json"


def load_curves() -> dict[str, Any]:
    """Every stored cost curve of this device: {key: {"verify": {n: seconds}, ...}}."""
    path = _curves_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data.get("profiles", {}) if isinstance(data, dict) else {}


def load_verify_curve(key: str) -> dict[int, float] | None:
    entry = load_curves().get(key)
    if not entry:
        return None
    return {int(n): float(s) for n, s in entry["verify"].items()}


def fastest_backend(
    model: str,
    candidates: Sequence[str],
    threads: int | None,
    weights: str = "auto",
    spin: bool = True,
) -> tuple[str, float] | None:
    """The backend whose stored cost curve of ``model`` has the cheapest one-token forward.

    Only profiles of this device, with the same thread setting, the same ``weights``
    choice (entries without one count as "auto") and the same ``spin`` setting (default
    True), are compared. Plain decoding runs one
    token per forward, and every strategy falls back to it, so that cost decides.

    Returns:
        ``(backend, seconds per one-token forward)``, or None when fewer than two of the
        ``candidates`` have such a profile (then nothing has been compared).
    """
    suffix = f"|{Path(model).name}|threads={threads or 'default'}"
    best: dict[str, float] = {}
    for key, entry in load_curves().items():
        same = (entry.get("weights", "auto"), entry.get("spin", True)) == (weights, spin)
        if not key.endswith(suffix) or not same:
            continue
        backend = str(entry.get("backend") or key.split("|")[0].split(":")[0])
        one = entry.get("verify", {}).get("1")
        if backend in candidates and one:
            best[backend] = min(best.get(backend, float("inf")), float(one))
    if len(best) < 2:
        return None
    return min(best.items(), key=lambda kv: kv[1])


def save_curve(key: str, entry: dict[str, Any]) -> Path:
    """Store ``entry`` (``{"verify": {n: s}, ...}``) under ``key``, atomically."""
    profiles = load_curves()
    profiles[key] = entry
    path = _curves_path()
    with atomic_path(path) as tmp:
        tmp.write_text(
            json.dumps(
                {
                    "device": device_description(),
                    "fingerprint": device_fingerprint(),
                    "profiles": profiles,
                },
                indent=1,
            )
        )
    return path


def measure_verify_curve(
    model: Model,
    sizes: Iterable[int],
    *,
    context: int = 64,
    reps: int = 5,
    vocab: int = 1000,
) -> dict[int, float]:
    """Median seconds of ``model.forward`` over n tokens after a ``context``-token prefix,
    timed the way speculation runs them: each n-token forward follows a one-token forward.

    Some backends pay for changing batch shape (llama.cpp rebuilds its graph and switches
    between its single-token and batch thread counts), so an n-token forward measured in a
    run of identical forwards would look cheaper than it is in a speculative loop. ``1`` is
    timed in a run of one-token forwards (plain decoding). The cache is rolled back after
    every timed call, so each measures the same position.

    Returns:
        {n: seconds}; also ``{0: seconds}``, the extra time a one-token forward takes right
        after a forward of another size (the switch penalty, >= 0).
    """
    model.reset()
    prefix = [(17 * i + 11) % vocab for i in range(context)]
    model.forward(prefix, all_logits=False)
    sizes = sorted(set(sizes) | {1})
    model.forward([5] * max(sizes))  # warm-up
    model.truncate(context)

    def timed(toks: list[int]) -> float:
        t = time.perf_counter()
        model.forward(toks, all_logits=len(toks) > 1)
        dt = time.perf_counter() - t
        model.truncate(context)
        return dt

    plain = [timed([(31 * r + 7) % vocab]) for r in range(reps + 1)][1:]
    out: dict[int, float] = {1: statistics.median(plain)}
    after_switch: list[float] = []
    for n in sizes:
        if n == 1:
            continue
        times = []
        for r in range(reps):
            timed([(29 * r + 3) % vocab])
            times.append(timed([(31 * (i + r) + 7) % vocab for i in range(n)]))
            after_switch.append(timed([(37 * r + 5) % vocab]))
        out[n] = statistics.median(times)
    if after_switch:
        out[0] = max(0.0, statistics.median(after_switch) - out[1])
    model.reset()
    return out


def measure_tree_overhead(model: Model, n: int, *, context: int = 64, reps: int = 3) -> float:
    """Median time of a bushy n-node tree forward (plus commit) / a chain forward of n tokens.

    Some backends verify trees at nearly the cost of a chain (the NumPy reference); others
    pay for extra bookkeeping (llama.cpp's per-leaf sequences). Returns the ratio.
    """
    model.reset()
    model.forward([(13 * i + 5) % 97 for i in range(context)], all_logits=False)
    parents = [-1] + [(i - 1) // 2 for i in range(1, n)]  # a binary tree
    tokens = [(7 * i + 3) % 97 for i in range(n)]
    chain, tree = [], []
    for _ in range(reps):
        t = time.perf_counter()
        model.forward(tokens, all_logits=True)
        chain.append(time.perf_counter() - t)
        model.truncate(context)
        t = time.perf_counter()
        model.forward_tree(tokens, parents)
        model.commit_tree_path(context, [0])
        tree.append(time.perf_counter() - t)
        model.truncate(context)
    model.reset()
    return statistics.median(tree) / statistics.median(chain)
