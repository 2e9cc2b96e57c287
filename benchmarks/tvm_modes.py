"""Is the tvm backend's one-token forward the same from one process to the next?

Starts ``--processes`` fresh Python processes, one after another. Each loads the model
(``edgespec.load``, ``--backend``, ``--weights`` as given, ``--threads``), fills ``--context``
tokens, and then ``--rounds`` times, ``--pause`` seconds apart: times ``--reps`` one-token
forwards (median) and, as a probe of the same process's other work, NumPy's 256 x 256
float32 matmul (OpenBLAS; median of 50). Prints one Markdown row per process and round, and
the spread over processes. Rows that split into two groups are modes that one run of
another benchmark lands in by chance (on the host where this was written, the host's, lasting
seconds to minutes): compare numbers only within one process.

    .venv/bin/python benchmarks/tvm_modes.py --model qwen2.5-coder-1.5b --processes 8
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time


def child(a: argparse.Namespace) -> None:
    """One process's rounds, as JSON lines on stdout."""
    import numpy as np

    import edgespec

    rt = edgespec.load(
        a.model,
        backend=a.backend,
        n_ctx=a.context + a.reps + 8,
        progress=False,
        n_threads=a.threads,
        weights=a.weights,
    )
    model = rt.target
    m = np.random.default_rng(0).random((256, 256), dtype=np.float32)
    for r in range(a.rounds):
        model.truncate(0)
        model.forward(list(range(10, 10 + a.context)))
        times = []
        for i in range(a.reps):
            t0 = time.perf_counter()
            model.forward([100 + i], all_logits=False)
            times.append(time.perf_counter() - t0)
        probe = []
        for _ in range(50):
            t0 = time.perf_counter()
            m @ m
            probe.append(time.perf_counter() - t0)
        row = {"round": r, "ms": statistics.median(times) * 1e3}
        row["matmul_us"] = statistics.median(probe) * 1e6
        print(json.dumps(row), flush=True)
        time.sleep(a.pause)
    rt.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-1.5b")
    p.add_argument("--backend", default="tvm")
    p.add_argument("--weights", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--pause", type=float, default=2.0)
    p.add_argument("--processes", type=int, default=6)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a)
        return 0
    argv = [a for a in sys.argv[1:] if a != "--child"]
    print(f"`benchmarks/tvm_modes.py {shlex.join(argv)}`")
    print(
        f"({a.model}, --backend {a.backend}, --weights {a.weights}, {a.threads} thread(s), "
        f"context {a.context}, medians of {a.reps}; 1-minute load average "
        f"{os.getloadavg()[0]:.1f} at the start)\n"
    )
    print("| process | round | one-token forward ms | NumPy 256x256 matmul us |\n|---|---|---|---|")
    firsts = []
    for proc in range(a.processes):
        out = subprocess.run(
            [sys.executable, __file__, *argv, "--child"],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            print(f"process {proc} failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return 1
        for line in out.stdout.splitlines():
            row = json.loads(line)
            if row["round"] == 0:
                firsts.append(row["ms"])
            print(f"| {proc} | {row['round']} | {row['ms']:.1f} | {row['matmul_us']:.0f} |")
    print(
        f"\nfirst rounds over {len(firsts)} processes: min {min(firsts):.1f} ms, median "
        f"{statistics.median(firsts):.1f}, max {max(firsts):.1f} (max / min "
        f"{max(firsts) / min(firsts):.2f}); load average {os.getloadavg()[0]:.1f} at the end"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
