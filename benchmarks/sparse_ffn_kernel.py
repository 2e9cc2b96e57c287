"""FFN time of the compiled chunk-sparse kernel against the dense kernel of the same backend.

For each FFN size, chunk size T (rows of the forward) and chunk sparsity s (the fraction of
expert blocks outside the chunk's union), one process times side by side, repetitions
interleaved, medians:

- ``tvm dense``: ``dense_ffn:tvm`` (all F rows, the same schedule without the index list);
- ``tvm sparse``: ``sparse_ffn:tvm`` on the union's rows (read through the list in place);
- ``np dense`` / ``np sparse``: the NumPy references (OpenBLAS; the sparse one slices up to
  32 contiguous runs of rows in place and gathers beyond that).

"ideal" is the same backend's dense time x the active fraction (1 - s); "vs ideal" is
sparse / ideal, the issue's target being at most 1.3. The FFN is SwiGLU (gate, up, down),
float32, weights 64-byte aligned in the kernels' layout (``down_t [F, d]``), blocks of
``--block`` neurons picked at random (a different union per repetition round).
"max err / bound" is the TVM sparse kernel's largest error against the float64 reference
as a fraction of :func:`edgespec.kernels.sparse_ffn.ffn_bound` (the tests' tolerance).

``--weights q8_0`` times the Q8_0 pair instead (``sparse_ffn:tvm-q8`` / ``dense_ffn:tvm-q8``,
the weights quantized once to GGML's Q8_0 blocks) with the float32 TVM pair beside it: "vs
ideal" against the Q8_0 dense kernel (equal precision), "q8 / f32" the Q8_0 sparse time over
the float32 sparse time, and the error against the float64 reference on gguf-py's
dequantization of the same weights.

    python benchmarks/sparse_ffn_kernel.py --threads 1 --out docs/results/sparse_ffn_kernel.md
    python benchmarks/sparse_ffn_kernel.py --threads 1 --weights q8_0
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from edgespec.bench.timing import median_ms

#: (name, d, F): SmolLM2-135M's FFN and Qwen2.5-1.5B's
SIZES = {"smollm2": (576, 1536), "qwen1.5b": (1536, 8960)}


#: (chunk sparsity s, chunk rows T) of every table
CELLS = [(s, t) for s in (0.5, 0.7, 0.9) for t in (1, 2, 4, 8)]


def random_weights(rng: np.random.Generator, d: int, f: int) -> dict[str, np.ndarray]:
    """gate, up and down_t ``float32[F, d]``, 64-byte aligned, scaled by 1/sqrt(fan-in)."""
    from edgespec.kernels.sparse_ffn import aligned_zeros

    w = {}
    for key, fan_in in (("gate", d), ("up", d), ("down_t", f)):
        a = aligned_zeros((f, d), np.float32)
        a[...] = rng.standard_normal((f, d), dtype=np.float32) * np.float32(fan_in**-0.5)
        w[key] = a
    return w


def measure_cells(
    desc: str,
    d: int,
    n_blocks: int,
    block: int,
    repeats: int,
    rounds: int,
    rng: np.random.Generator,
    calls: Callable[[np.ndarray, np.ndarray], dict[str, Callable[[], object]]],
    error: Callable[[np.ndarray, np.ndarray], float],
) -> Iterator[tuple[float, int, float, dict[str, float], float]]:
    """For each of :data:`CELLS`: ``rounds`` random unions of whole blocks, the ``calls(x,
    rows)`` timed side by side (interleaved medians, warmed first), the median over rounds
    of each, and the worst ``error(x, rows)``; yields ``(s, T, active fraction, medians ms,
    worst error)``."""
    from edgespec.kernels import reference

    for s, t in tqdm(CELLS, desc=desc, unit="cell"):
        x = rng.standard_normal((t, d), dtype=np.float32)
        n_on = round(n_blocks * (1 - s))
        med: dict[str, list[float]] = {}
        worst = 0.0
        for _ in range(rounds):
            blocks = np.sort(rng.choice(n_blocks, n_on, replace=False))
            rows = reference.block_rows(blocks, block)
            fns = calls(x, rows)
            for fn in fns.values():  # compile (and quantize) and warm the caches
                fn()
            for k, v in median_ms(fns, repeats).items():
                med.setdefault(k, []).append(v)
            worst = max(worst, error(x, rows))
        yield s, t, n_on / n_blocks, {k: statistics.median(v) for k, v in med.items()}, worst


def table(
    name: str, d: int, f: int, block: int, repeats: int, rounds: int, rng: np.random.Generator
) -> list[str]:
    from edgespec.kernels import reference
    from edgespec.kernels.sparse_ffn import FFNKernels, ffn_bound

    kern = FFNKernels()
    w = random_weights(rng, d, f)
    gate, up, down = w["gate"], w["up"], w["down_t"].T
    n_blocks = f // block
    out = [
        f"#### {name}: d={d}, F={f} ({n_blocks} blocks of {block}), SwiGLU, float32",
        "",
        "| s | T | tvm dense ms | tvm sparse ms | tvm vs ideal | np dense ms | np sparse ms"
        " | np vs ideal | tvm sparse / np sparse | max err / bound |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def calls(x: np.ndarray, rows: np.ndarray) -> dict[str, Callable[[], object]]:
        return {
            "tvm dense": partial(kern.run, x, None, gate, up, down, act="silu", scale=None),
            "tvm sparse": partial(kern.run, x, rows, gate, up, down, act="silu", scale=None),
            "np dense": partial(reference.dense_ffn, x, gate, up, down),
            "np sparse": partial(reference.sparse_ffn, x, rows, gate, up, down),
        }

    def error(x: np.ndarray, rows: np.ndarray) -> float:
        y = kern.run(x, rows, gate, up, down, act="silu", scale=None)
        f64 = [a.astype(np.float64) for a in (gate, up, down)]
        exact = reference.sparse_ffn(x.astype(np.float64), rows, *f64)
        return float((np.abs(y - exact) / ffn_bound(x, rows, gate, up, down)).max())

    for s, t, frac, m, worst in measure_cells(
        name, d, n_blocks, block, repeats, rounds, rng, calls, error
    ):
        out.append(
            f"| {s} | {t} | {m['tvm dense']:.3f} | {m['tvm sparse']:.3f}"
            f" | {m['tvm sparse'] / (m['tvm dense'] * frac):.2f}"
            f" | {m['np dense']:.3f} | {m['np sparse']:.3f}"
            f" | {m['np sparse'] / (m['np dense'] * frac):.2f}"
            f" | {m['tvm sparse'] / m['np sparse']:.2f} | {worst:.1e} |"
        )
    return out + [""]


def q8_table(
    name: str, d: int, f: int, block: int, repeats: int, rounds: int, rng: np.random.Generator
) -> list[str]:
    """The Q8_0 kernel pair side by side with the float32 pair (see the module docstring)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    from edgespec.kernels import reference
    from edgespec.kernels.sparse_ffn import FFNKernels, ffn_bound

    kerns = {"q8": FFNKernels(quant="q8_0"), "f32": FFNKernels()}
    w = random_weights(rng, d, f)
    q8 = GGMLQuantizationType.Q8_0
    deq = {k: dequantize(quantize(a, q8), q8).astype(np.float32) for k, a in w.items()}
    gate, up, down = w["gate"], w["up"], w["down_t"].T
    n_blocks = f // block
    mb = {"q8": f * d * 3 * 34 / 32 / 1e6, "f32": f * d * 3 * 4 / 1e6}
    out = [
        f"#### {name}: d={d}, F={f} ({n_blocks} blocks of {block}), SwiGLU, Q8_0 weights"
        f" ({mb['q8']:.1f} MB; float32 {mb['f32']:.1f} MB)",
        "",
        "| s | T | q8 dense ms | q8 sparse ms | q8 vs ideal | f32 dense ms | f32 sparse ms"
        " | q8 / f32 sparse | max err / bound |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def calls(x: np.ndarray, rows: np.ndarray) -> dict[str, Callable[[], object]]:
        return {
            f"{k} {mode}": partial(kern.run, x, r, gate, up, down, act="silu", scale=None)
            for k, kern in kerns.items()
            for mode, r in (("dense", None), ("sparse", rows))
        }

    def error(x: np.ndarray, rows: np.ndarray) -> float:
        y = kerns["q8"].run(x, rows, gate, up, down, act="silu", scale=None)
        g, u, dn = deq["gate"], deq["up"], deq["down_t"].T
        f64 = [a.astype(np.float64) for a in (g, u, dn)]
        exact = reference.sparse_ffn(x.astype(np.float64), rows, *f64)
        return float((np.abs(y - exact) / ffn_bound(x, rows, g, u, dn)).max())

    for s, t, frac, m, worst in measure_cells(
        f"{name} q8_0", d, n_blocks, block, repeats, rounds, rng, calls, error
    ):
        out.append(
            f"| {s} | {t} | {m['q8 dense']:.3f} | {m['q8 sparse']:.3f}"
            f" | {m['q8 sparse'] / (m['q8 dense'] * frac):.2f}"
            f" | {m['f32 dense']:.3f} | {m['f32 sparse']:.3f}"
            f" | {m['q8 sparse'] / m['f32 sparse']:.2f} | {worst:.1e} |"
        )
    return out + [""]


def tune_table(name: str, d: int, f: int, block: int, trials: int, threads: int) -> list[str]:
    """MetaSchedule (``trials`` candidates) on the sparse kernel at a fixed union of 20 % of
    the blocks (chunk sparsity 0.8), T = 1 and 8: untuned and tuned times of the same run."""
    from edgespec.kernels.sparse_ffn import FFNShape, tune_sparse
    from edgespec.kernels.tuning import host_target

    n_rows = max(1, round(f // block * 0.2)) * block
    out = [
        f"#### MetaSchedule, {name}: d={d}, F={f}, A = {n_rows} rows (20 % of the blocks), "
        f"SwiGLU, float32, {trials} trials",
        "",
        "| T | key | cost model | tuning s | untuned us | tuned us | untuned / tuned |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in (1, 8):
        rec = tune_sparse(
            FFNShape(t, d, f, n_rows=n_rows), block=block, trials=trials,
            target=host_target(threads),
        )  # fmt: skip
        out.append(
            f"| {t} | {rec.key} | {rec.cost_model} | {rec.tuning_seconds:.0f} | "
            f"{rec.untuned_us:.0f} | {rec.best_us:.0f} | {rec.untuned_us / rec.best_us:.2f} |"
        )
    return out + [""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=sorted(SIZES))
    p.add_argument("--block", type=int, default=64, help="neurons per block (default 64)")
    p.add_argument("--repeats", type=int, default=15, help="timed calls per round")
    p.add_argument("--rounds", type=int, default=3, help="random unions per cell")
    p.add_argument("--threads", type=int, default=1, help="threads of every implementation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the tables as Markdown here too")
    p.add_argument(
        "--weights",
        choices=("f32", "q8_0"),
        default="f32",
        help="f32: the float32 TVM pair and the NumPy references; q8_0: the Q8_0 TVM pair "
        "beside the float32 one",
    )
    p.add_argument(
        "--tune",
        type=int,
        metavar="TRIALS",
        help="instead: MetaSchedule with TRIALS candidates on a fixed union, before/after",
    )
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)  # numpy's BLAS
    from edgespec.fileutil import atomic_path
    from edgespec.kernels.tuning import host_cpu

    rng = np.random.default_rng(args.seed)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"Command: `python benchmarks/sparse_ffn_kernel.py {shlex.join(sys.argv[1:])}`",
        f"Machine: {platform.machine()}, llvm mcpu {host_cpu()}, {os.cpu_count()} cores,"
        f" {args.threads} thread(s) per implementation, NumPy {np.__version__},"
        f" load average {load:.1f} at start",
        "",
    ]
    for name in args.sizes:
        d, f = SIZES[name]
        if args.tune:
            lines += tune_table(name, d, f, args.block, args.tune, args.threads)
        else:
            make = q8_table if args.weights == "q8_0" else table
            lines += make(name, d, f, args.block, args.repeats, args.rounds, rng)
    text = "\n".join(lines)
    print(text)
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
