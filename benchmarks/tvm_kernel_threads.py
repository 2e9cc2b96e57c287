"""One int8-activation matmul (kernels/qlinear_q8.py) alone: its call time at T rows on 1 and
on 2 threads, each thread count in its own process (TVM's pool is sized once per process by
``TVM_NUM_THREADS``).

What it answers: how a kernel of the graph scales to a second core at T = 1 (plain decoding)
and T = 9 (a verify chunk), with the parallel loop's launch and join included, for the
model's matrix shapes. Weights are random blocks of the file's type (the kernel tests'
``random_blocks``), tiled as the backend
tiles them, and cache-warm (the same matrix call after call): the kernel's compute and the
pool's cost, not streaming from memory. Medians and minimums of ``--calls`` calls after
``--calls // 10`` warm-up calls, per process; the thread counts' processes alternate
``--rounds`` times (this host has speeds that last seconds to minutes, docs/tvm.md "Two
speeds"), and each cell is the median over rounds. Prints a Markdown table.

    .venv/bin/python benchmarks/tvm_kernel_threads.py --shapes Q4_1:576x576 Q4_1:1536x576 \
        Q4_1:576x960 Q4_1:576x3072 --rows 1 9

A shape is ``TYPE:KxN`` (K inputs, N outputs; SmolLM2's are 576x960 qkv, 576x576 o,
576x3072 gate/up, 1536x576 down, all Q4_1, and 576x49152 Q8_0 for the head).
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

import numpy as np


def child(shapes: list[str], rows: list[int], calls: int) -> dict[str, dict[int, list[float]]]:
    """In this process (its pool sized by ``TVM_NUM_THREADS``): ``{shape: {T: [median s,
    min s]}}``."""
    import tvm

    from edgespec.kernels import qlinear, qlinear_q8
    from edgespec.kernels.tuning import host_target

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from kernels.test_qlinear import random_blocks  # type: ignore[import-not-found]

    rng = np.random.default_rng(0)
    dev = tvm.cpu(0)
    out: dict[str, dict[int, list[float]]] = {}
    for shape in shapes:
        fmt, kn = shape.split(":")
        k, n = (int(v) for v in kn.split("x"))
        w = qlinear_q8.convert(qlinear.from_gguf(random_blocks(fmt, n, k, rng), fmt))
        func = qlinear.qlinear_kernel(w.fmt, k, n).with_attr("global_symbol", "main")
        fn = tvm.compile(tvm.IRModule({"main": func}), target=host_target())["main"]
        ops = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in w.operands()]
        out[shape] = {}
        for t in rows:
            x = tvm.runtime.tensor(rng.standard_normal((t, k)).astype(np.float32), dev)
            y = tvm.runtime.empty((t, n), "float32", dev)
            for _ in range(calls // 10):
                fn(x, *ops, y)
            ts = []
            for _ in range(calls):
                t0 = time.perf_counter()
                fn(x, *ops, y)
                ts.append(time.perf_counter() - t0)
            out[shape][t] = [statistics.median(ts), min(ts)]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["Q4_1:576x576", "Q4_1:1536x576"])
    p.add_argument("--rows", type=int, nargs="+", default=[1, 9])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.shapes, a.rows, a.calls)))
        return 0
    runs: dict[int, list[dict[str, dict[str, list[float]]]]] = {th: [] for th in a.threads}
    load = [os.getloadavg()[0]]
    for _ in range(a.rounds):
        for th in a.threads:
            cmd = [sys.executable, __file__, "--child", "--calls", str(a.calls), "--shapes"]
            cmd += a.shapes + ["--rows", *map(str, a.rows)]
            env = {**os.environ, "TVM_NUM_THREADS": str(th)}
            run = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if run.returncode != 0:
                print(run.stderr.strip().splitlines()[-1], file=sys.stderr)
                return 1
            runs[th].append(json.loads(run.stdout.strip().splitlines()[-1]))
            load.append(os.getloadavg()[0])
    got = {
        th: {
            shape: {
                str(t): [statistics.median(r[shape][str(t)][i] for r in rs) for i in (0, 1)]
                for t in a.rows
            }
            for shape in a.shapes
        }
        for th, rs in runs.items()
    }
    print(f"`benchmarks/tvm_kernel_threads.py {' '.join(sys.argv[1:])}`")
    print(
        f"(medians of {a.calls} calls, cache-warm weights, min in brackets, median of "
        f"{a.rounds} alternating processes per thread count; 1-minute load "
        f"average {min(load):.1f} to {max(load):.1f})\n"
    )
    th = a.threads
    head = "| shape | T |" + "".join(f" {t} thread(s) us |" for t in th)
    head += f" {th[0]} / {th[-1]} threads |" if len(th) > 1 else ""
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for shape in a.shapes:
        for t in a.rows:
            cell = {n: got[n][shape][str(t)] for n in th}
            row = f"| {shape} | {t} |" + "".join(
                f" {cell[n][0] * 1e6:.1f} ({cell[n][1] * 1e6:.1f}) |" for n in th
            )
            if len(th) > 1:
                row += f" {cell[th[0]][0] / cell[th[-1]][0]:.2f} |"
            print(row)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
