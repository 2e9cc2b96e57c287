"""How long ``TvmBackend.load`` takes and how much memory it peaks at, side by side.

Each load runs in a fresh process (``python -c``, the checkout in ``--src`` first on the
path), timed from before ``load`` to after one one-token forward; its peak resident memory is
the child's own ``VmHWM`` (``edgespec.bench.metrics.peak_rss_mb``; ``ru_maxrss`` would start
from the parent's peak, which Linux carries into a child at exec). Several
``--src`` checkouts (e.g. a ``git worktree`` of an older commit, and ``.``) run interleaved,
``--reps`` rounds, so that load on a shared machine hits them alike; each line says the
1-minute load average when the load started. ``--twice`` loads twice in one process (the
second load's time is printed too). Prints one line per load and a Markdown table of medians.

    git worktree add /tmp/wt-old <commit>
    .venv/bin/python benchmarks/tvm_load.py --model qwen2.5-coder-1.5b \
        --src /tmp/wt-old .:cold . --reps 2

The compiled library is cached per graph code (``$EDGESPEC_HOME/tvm/...``): the first load of
a checkout whose graph code has no library yet compiles it (said on stderr, and by
``compiled`` in the line). ``PATH:cold`` deletes the model's packed-weights cache
(``tvm_backend.packed_cache_dir``) before that checkout's load, so it unpacks the file's
blocks again; a plain ``PATH`` after it then loads from that cache.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CHILD = r"""
import json, sys, time
from edgespec.bench.metrics import peak_rss_mb
from edgespec.runtimes.base import LoadOptions, ModelSource
from edgespec.runtimes.tvm_backend import TvmBackend
from edgespec.zoo import verify
path = verify(sys.argv[1], progress=False)
opts = LoadOptions(n_ctx=64, weights=sys.argv[2], progress=True)
times = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter()
    model = TvmBackend.load(ModelSource("gguf", path, sys.argv[1]), opts)
    model.forward([1])
    times.append(time.perf_counter() - t)
    model.close()
    del model
rss = peak_rss_mb() / 1024  # MiB -> GiB
print("RESULT " + json.dumps({"loads": times, "maxrss_gb": rss}))
"""


def drop_weights_cache(model: str, weights: str) -> int:
    """Delete this model's packed-weights cache for ``weights`` (tvm_backend.packed_cache_dir);
    returns how many folders went."""
    import shutil

    from edgespec.kernels.tuning import records_dir
    from edgespec.zoo import verify

    stem = verify(model, progress=False).stem
    gone = list((records_dir() / "weights").glob(f"{stem}-{weights}-*"))
    for folder in gone:
        shutil.rmtree(folder)
    return len(gone)


def one_load(src: Path, model: str, weights: str, n: int) -> dict[str, Any]:
    """One child process in checkout ``src``: its load times, wall time and peak RSS."""
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, model, weights, str(n)],
        cwd=src,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src)},
    )
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode or line is None:  # e.g. -9: killed for memory; said, not fatal
        print(f"{src}: the load failed (exit {proc.returncode}): {err[-300:]!r}", flush=True)
        return {
            "loads": [float("nan")],
            "wall": wall,
            "load_avg": load,
            "compiled": 0.0,
            "maxrss_gb": float("nan"),
            "failed": proc.returncode,
        }
    res = json.loads(line.removeprefix("RESULT "))
    return {
        "loads": res["loads"],
        "wall": wall,
        "load_avg": load,
        "compiled": float("compiling" in err),
        "maxrss_gb": res["maxrss_gb"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--weights", default="gguf-exact")
    ap.add_argument(
        "--src",
        nargs="+",
        default=["."],
        help="checkouts, in the order each round runs them; PATH:cold deletes the model's "
        "packed-weights cache first (the compiled library stays cached)",
    )
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--twice", action="store_true", help="two loads in each process")
    args = ap.parse_args()
    rows: dict[str, list[dict[str, Any]]] = {s: [] for s in args.src}
    for rep in range(args.reps):
        for src in args.src:
            path, _, mode = src.partition(":")
            if mode == "cold":
                drop_weights_cache(args.model, args.weights)
            r = one_load(Path(path).resolve(), args.model, args.weights, 2 if args.twice else 1)
            rows[src].append(r)
            loads = ", ".join(f"{t:.1f}" for t in r["loads"])
            print(
                f"rep {rep} {src}: load+1 token {loads} s, process {r['wall']:.1f} s, "
                f"peak RSS {r['maxrss_gb']:.2f} GB, load average {r['load_avg']:.1f}"
                + (" (compiled the library)" if r["compiled"] else ""),
                flush=True,
            )
    print("\n| checkout | load s (median) | 2nd load in-process s | peak RSS GB | load avg |")
    print("|---|---|---|---|---|")
    for src, all_rs in rows.items():
        rs = [r for r in all_rs if not r.get("failed")]
        if not rs:
            print(f"| {src} | all {len(all_rs)} loads failed | - | - | - |")
            continue
        if len(rs) < len(all_rs):
            src = f"{src} ({len(all_rs) - len(rs)} of {len(all_rs)} loads failed)"
        first = statistics.median(r["loads"][0] for r in rs)
        second = [r["loads"][1] for r in rs if len(r["loads"]) > 1]
        sec = f"{statistics.median(second):.1f}" if second else "-"
        rss = statistics.median(float(r["maxrss_gb"]) for r in rs)
        avg = ", ".join(f"{float(r['load_avg']):.1f}" for r in rs)
        print(f"| {src} | {first:.1f} | {sec} | {rss:.2f} | {avg} |")


if __name__ == "__main__":
    main()
