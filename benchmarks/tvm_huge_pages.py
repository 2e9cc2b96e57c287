"""The tvm backend's weights and KV cache on huge pages against TVM's own allocations.

Loads one tvm build of a GGUF (``--weights``, ``--threads``; its weights and caches are
placed in :class:`~edgespec.kernels.compiled.HugeArena` maps, on transparent huge pages where
the kernel gives them), forks it with every weight copied into a tensor TVM allocates itself
and caches TVM allocates (ordinary 4 KiB pages under Linux's default ``madvise`` setting;
``--context 4000`` makes the cache's share count), checks that both give the same
logits bit for bit, and times, interleaved for ``--reps`` rounds: plain decoding
(``--decode`` one-token forwards after ``--context`` cached tokens) and one 9-token forward
after them, rolled back (``benchmarks/tvm_backend.py``'s ``decode_seconds`` and
``forward_seconds``). Prints the medians, the ratio (4 KiB / huge), the process's
``AnonHugePages`` and, with two CPUs or more, the core-to-core round trip before and after
(``benchmarks/core_latency.py``: where the host put the vCPUs; docs/benchmarks.md section 21).

    .venv/bin/python benchmarks/tvm_huge_pages.py --model qwen2.5-coder-1.5b --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Any

import numpy as np


def anon_huge_kb() -> int | None:
    """This process's anonymous memory on transparent huge pages, in kB (None off Linux)."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--weights", default="gguf-q8act")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--decode", type=int, default=16)
    p.add_argument("--reps", type=int, default=7)
    a = p.parse_args()

    import tvm

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from tvm_backend import decode_seconds, forward_seconds  # the same timings as there

    from edgespec import zoo
    from edgespec.runtimes import BACKENDS
    from edgespec.runtimes.base import LoadOptions, ModelSource

    path = zoo.pull(a.model, progress=False)
    opts = LoadOptions(n_ctx=a.context + a.decode + 16, n_threads=a.threads, progress=False,
                       weights=a.weights)  # fmt: skip
    huge: Any = BACKENDS.get("tvm").load(ModelSource("gguf", path, a.model), opts)
    held = anon_huge_kb()
    small = huge.fork()
    small.weights = [tvm.runtime.tensor(w.numpy(), huge.device) for w in huge.weights]
    small.k_cache, small.v_cache = (
        tvm.runtime.empty(c.shape, c.dtype, huge.device) for c in (huge.k_cache, huge.v_cache)
    )
    context = [1 + (i * 7919) % 20000 for i in range(a.context)]
    huge.reset()
    small.reset()
    same = bool(np.array_equal(huge.forward(context), small.forward(context)))
    probe: list[float] = []
    if len(os.sched_getaffinity(0)) >= 2:
        from core_latency import round_trip_ns

        probe.append(round_trip_ns())
    times: dict[str, list[float]] = {k: [] for k in ("huge c1", "4k c1", "huge c9", "4k c9")}
    for _ in range(a.reps):
        for key, model in (("huge", huge), ("4k", small)):
            times[f"{key} c1"].append(decode_seconds(model, context, a.decode) * 1e3)
            times[f"{key} c9"].append(forward_seconds(model, 9) * 1e3)
    if probe:
        probe.append(round_trip_ns())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"`benchmarks/tvm_huge_pages.py {' '.join(sys.argv[1:])}`")
    print(
        f"({a.model}, --weights {a.weights}, {a.threads} thread(s), context {a.context}, "
        f"medians of {a.reps} interleaved rounds; AnonHugePages after loading "
        f"{'-' if held is None else f'{held / 1024:.0f} MB'}; logits bit for bit equal: {same}"
        + (f"; core round trip {probe[0]:.0f} ns before, {probe[1]:.0f} after" if probe else "")
        + ")\n"
    )
    print("| forward | huge pages ms | 4 KiB pages ms | 4 KiB / huge |")
    print("|---|---|---|---|")
    for k, label in (("c1", "one token (decoding)"), ("c9", "9 tokens")):
        h, s = med[f"huge {k}"], med[f"4k {k}"]
        print(f"| {label} | {h:.2f} | {s:.2f} | {s / h:.3f} |")
    huge.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
