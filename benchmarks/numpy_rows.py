"""The NumPy reference's matrix products at a verify chunk's few rows: one GEMM as it is, a row
at a time, or rows padded to a multiple of 4.

OpenBLAS multiplies one row by a matrix-vector product, and 2 rows or more by its GEMM, which
packs the whole matrix on every call. For each matrix of ``--model`` (its NumPy reference's
``x @ W`` layout, ``[K, N]``) and each row count T this times, side by side in one process,
repetitions interleaved, medians:

- ``gemm``: ``x @ W`` as it is;
- ``rows``: one ``x[t:t+1] @ W`` per row;
- ``pad4``: the rows padded with zero rows to a multiple of 4, one GEMM;

then the NumPy backend's forward of T tokens (after ``--context`` tokens) with every product
``x @ W`` as it is against :func:`edgespec.runtimes.numpy_ref.matmul` (a row at a time up
to :data:`~edgespec.runtimes.numpy_ref.ROWS_ONE_BY_ONE` rows, padded beyond), forwards
interleaved, and checks that their logits agree within float32 rounding.

    python benchmarks/numpy_rows.py --model smollm2-135m --out docs/results/numpy-rows/smollm2.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm


def pad4(x: np.ndarray) -> np.ndarray:
    """``x`` with zero rows appended up to a multiple of 4 rows."""
    padded = np.zeros((-(-len(x) // 4) * 4, x.shape[1]), x.dtype)
    padded[: len(x)] = x
    return padded


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 7, 8, 9])
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="OpenBLAS threads")
    p.add_argument("--out", type=Path, help="write the tables as Markdown here too")
    args = p.parse_args(argv)
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)  # before NumPy loads OpenBLAS
    from threadpoolctl import threadpool_limits

    from edgespec import zoo
    from edgespec.runtimes import numpy_ref
    from edgespec.runtimes.base import LoadOptions, ModelSource

    threadpool_limits(args.threads)
    path = zoo.pull(args.model, progress=False)
    n_ctx = args.context + max(args.rows) + 8
    opts = LoadOptions(n_ctx=n_ctx, n_threads=args.threads, progress=False)
    source = ModelSource("gguf", path, args.model)
    model = numpy_ref.NumpyBackend.load(source, opts)
    layer = model.w.layers[0]
    mats = {
        "qkv": layer.wqkv,
        "o": layer.wo,
        "gate+up": layer.w_gate_up,
        "down": layer.w_down,
        "head": model.w.output,
    }
    from edgespec.bench.timing import emit, median_ms

    rng = np.random.default_rng(0)
    cells: dict[tuple[str, int], dict[str, float]] = {}  # the three ways' medians, ms
    for name, w in tqdm(mats.items(), desc="matrices", unit="matrix"):
        for t in args.rows:
            x = rng.standard_normal((t, w.shape[0]), dtype=np.float32)
            ways = {
                "gemm": lambda x=x, w=w: x @ w,
                "rows": lambda x=x, w=w: [x[i : i + 1] @ w for i in range(len(x))],
                "pad4": lambda x=x, w=w: pad4(x) @ w,
            }
            cells[(name, t)] = median_ms(ways, args.repeats)

    context = [1 + (i * 7919) % (model.info.vocab_size - 1) for i in range(args.context)]
    model.forward(context, all_logits=False)
    shaped = numpy_ref.matmul
    products = {"gemm": lambda x, w: x @ w, "shaped": shaped}
    fwd: dict[tuple[str, int], list[float]] = {}
    worst = 0.0
    for _ in tqdm(range(args.repeats), desc="forwards", unit="round"):
        for t in args.rows:
            chunk = [1 + (j * 104729) % (model.info.vocab_size - 1) for j in range(t)]
            outs = []
            for way, product in products.items():
                numpy_ref.matmul = product  # the forward looks it up at each call
                t0 = time.perf_counter()
                outs.append(model.forward(chunk, all_logits=True))
                fwd.setdefault((way, t), []).append(time.perf_counter() - t0)
                model.truncate(args.context)
            scale = float(np.abs(outs[0]).max())
            worst = max(worst, float(np.abs(outs[0] - outs[1]).max()) / scale)
    numpy_ref.matmul = shaped

    def ms(v: list[float]) -> float:
        return statistics.median(v) * 1e3

    load = os.getloadavg()[0]
    lines = [
        f"`{shlex.join(['python', *sys.argv])}`",
        "",
        f"({platform.machine()}, {args.model} on the NumPy backend (float32), NumPy"
        f" {np.__version__}, {args.threads} OpenBLAS thread(s), medians of {args.repeats}"
        f" interleaved calls a cell; 1-minute load average {load:.1f} at the end)",
        "",
        "One matrix, ms (gemm / one row at a time / padded to a multiple of 4 rows):",
        "",
        "| matrix [K, N] | " + " | ".join(f"T = {t}" for t in args.rows) + " |",
        "|---|" + "---|" * len(args.rows),
    ]
    for name, w in mats.items():
        row = []
        for t in args.rows:
            g, r, p = (cells[(name, t)][way] for way in ("gemm", "rows", "pad4"))
            row.append(f"{g:.3f} / {r:.3f} / {p:.3f}")
        lines.append(f"| {name} {list(w.shape)} | " + " | ".join(row) + " |")
    lines += [
        "",
        f"Forward of T tokens after {args.context}, ms: every product one GEMM against"
        f" numpy_ref.matmul (up to {numpy_ref.ROWS_ONE_BY_ONE} rows one at a time, more padded"
        f" to a multiple of {numpy_ref.PAD_ROWS}; largest logit difference {worst:.1e} of the"
        " largest logit):",
        "",
        "| T | one GEMM | matmul | GEMM / matmul | c(T)/c(1) GEMM | c(T)/c(1) matmul |",
        "|---|---|---|---|---|---|",
    ]
    c1 = {way: ms(fwd[(way, args.rows[0])]) for way in products}
    for t in args.rows:
        a, b = ms(fwd[("gemm", t)]), ms(fwd[("shaped", t)])
        lines.append(
            f"| {t} | {a:.2f} | {b:.2f} | {a / b:.2f} | {a / c1['gemm']:.2f} |"
            f" {b / c1['shaped']:.2f} |"
        )
    return emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    raise SystemExit(main())
