"""The compiled chunk-sparse FFN at every chunk size: rows padded up to a bucket, or not.

``sparse_ffn:tvm`` compiles one kernel per row count M. With buckets (1, 2, 4, 8, 16), as the
other compiled kernels keep, a chunk of M rows runs the next bucket's kernel on zero-padded
rows; with every M up to 16 (:data:`edgespec.kernels.sparse_ffn.BUCKETS` since this
benchmark) it runs its own. For each chunk size T this times one call both ways, side by
side in one process, repetitions interleaved, medians, on one FFN: BlockFFN-Small's
proportions by default (d 768, 48 expert blocks of 64, ungated, ReLU, per-row scales), a
union of ``--active`` blocks (the union a chunk-local router keeps at T = 8-9). "first call"
is the exact kernel's first call at that row count, compile included.

    python benchmarks/sparse_ffn_rows.py --threads 1 --out docs/results/sparse-ffn-rows/small.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

#: the buckets the other compiled kernels keep (kernels/compiled.py)
PADDED = (1, 2, 4, 8, 16)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", type=int, default=768, help="model width")
    p.add_argument("--experts", type=int, default=48, help="expert blocks")
    p.add_argument("--block", type=int, default=64, help="neurons per block")
    p.add_argument("--active", type=int, default=16, help="blocks in the union")
    p.add_argument("--rows", type=int, nargs="+", default=list(range(1, 17)))
    p.add_argument("--repeats", type=int, default=200, help="timed calls per row count")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the table as Markdown here too")
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts

    from edgespec.bench.timing import emit, median_ms
    from edgespec.kernels import reference
    from edgespec.kernels.sparse_ffn import BUCKETS, FFNKernels, aligned_zeros

    rng = np.random.default_rng(args.seed)
    d, f = args.d, args.experts * args.block
    up, down_t = (aligned_zeros((f, d), np.float32) for _ in range(2))
    up[...] = rng.standard_normal((f, d), dtype=np.float32) * np.float32(d**-0.5)
    down_t[...] = rng.standard_normal((f, d), dtype=np.float32) * np.float32(f**-0.5)
    blocks = np.sort(rng.choice(args.experts, args.active, replace=False))
    rows = reference.block_rows(blocks, args.block)
    kernels = {"padded": FFNKernels(buckets=PADDED), "exact": FFNKernels(buckets=BUCKETS)}

    def call(kern: FFNKernels, x: np.ndarray, scale: np.ndarray) -> None:
        kern.run(x, rows, None, up, down_t.T, act="relu", scale=scale)

    inputs = {}
    first: dict[tuple[str, int], float] = {}
    for m in args.rows:  # compile every kernel before anything is timed
        x = rng.standard_normal((m, d), dtype=np.float32)
        scale = rng.random((m, rows.size), dtype=np.float32)
        inputs[m] = (x, scale)
        ys = []
        for name, kern in kernels.items():
            t0 = time.perf_counter()
            call(kern, x, scale)  # compiles the kernel of this row count (or its bucket)
            first[(name, m)] = time.perf_counter() - t0
            for _ in range(5):
                call(kern, x, scale)
            ys.append(kern.run(x, rows, None, up, down_t.T, act="relu", scale=scale))
        np.testing.assert_array_equal(ys[0], ys[1])  # padding rows change nothing
    cells = {  # the two ways' medians (ms) at each row count, their calls interleaved
        m: median_ms(
            {name: partial(call, kern, *inputs[m]) for name, kern in kernels.items()},
            args.repeats,
        )
        for m in tqdm(args.rows, desc="timing", unit="row count")
    }

    load = os.getloadavg()[0]
    lines = [
        f"`{shlex.join(['python', *sys.argv])}`",
        "",
        f"({platform.machine()}, d {d}, {args.experts} blocks of {args.block}, union of"
        f" {args.active} ({rows.size} rows), ungated ReLU with per-row scales, float32,"
        f" {args.threads} thread(s), medians of {args.repeats} calls each, interleaved;"
        f" 1-minute load average {load:.1f} at the end)",
        "",
        "| T | padded to | padded us | exact us | padded / exact | exact's first call s |",
        "|---|---|---|---|---|---|",
    ]
    for m in args.rows:
        pad = next(b for b in PADDED if b >= m)
        a, b = (cells[m][k] * 1e3 for k in ("padded", "exact"))
        lines.append(
            f"| {m} | {pad} | {a:.0f} | {b:.0f} | {a / b:.2f} | {first[('exact', m)]:.2f} |"
        )
    return emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    raise SystemExit(main())
