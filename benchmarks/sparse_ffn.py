"""Chunk-sparse FFN in NumPy: kernel time against dense and the verify cost curve c(T)/c(1).

Two tables, measured side by side in one process (repetitions interleaved, medians):

1. **FFN kernel.** ``sparse_ffn`` (gathered rows of up, columns of down) against
   ``dense_ffn`` of the same weights, for token-level sparsity s and chunk size T, with
   tokens routed independently (each block active with probability 1 - s, so the chunk's
   union holds about 1 - s^T of the blocks). "ideal" is dense time x the union's active
   fraction; "vs ideal" = sparse / ideal (1.0 = perfect scaling).
2. **Verify cost curve of a BlockFFN model.** A tiny BlockFFN model in the authors' format
   (router offsets fitted to ``--sparsity``; ``--router random``, or ``chunk-local``:
   routers built to have chunk-level sparsity, :class:`edgespec.sparse.tiny.ChunkLocalRouter`),
   a forward of T tokens after a context that starts with BOS, in sparse mode (union of the
   chunk's active blocks) and dense mode (all blocks). Reported: c(T) in ms, c(T)/c(1) for
   each, the chunk union's active fraction, the FFN's share of each forward, and the
   flatness ratio (dense c(T)/c(1)) / (sparse c(T)/c(1)) (>1: sparse is flatter).
   ``--kernel numpy tvm`` times both kernel pairs (``sparse_ffn:<k>`` / ``dense_ffn:<k>``,
   the same backend on both sides) side by side in one run; ``--curve-only`` skips table 1.
3. **What the controller picks from each curve.** The measured c(T) of each mode as the
   controller's cost curve, a constant per-position acceptance alpha: the draft length k it
   chooses and the expected tokens/s against plain decoding (``edgespec.speculative``).

    python benchmarks/sparse_ffn.py --threads 1 --out docs/results/sparse_ffn.md
    python benchmarks/sparse_ffn.py --threads 1 --curve-only --router chunk-local \
        --kernel numpy tvm --out docs/results/sparse_ffn_chunk_local.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgespec.bench.timing import median_ms


def kernel_table(
    d: int, n_blocks: int, block: int, repeats: int, rng: np.random.Generator
) -> list[str]:
    from edgespec.kernels import KERNELS
    from edgespec.kernels.reference import block_rows

    sparse, dense = KERNELS.get("sparse_ffn:numpy"), KERNELS.get("dense_ffn:numpy")
    F = n_blocks * block
    up = rng.normal(size=(F, d)).astype(np.float32) * d**-0.5
    down_t = rng.normal(size=(F, d)).astype(np.float32) * F**-0.5
    rows_out = [
        "| s | T | union active | dense ms | sparse ms | sparse/dense | ideal ms | vs ideal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in (0.5, 0.7, 0.9):
        for T in (1, 2, 4, 8):
            x = rng.normal(size=(T, d)).astype(np.float32)
            # several routings per cell, so the union fraction is an average, not one draw
            draws = [rng.random((T, n_blocks)) >= s for _ in range(8)]
            d_ms, s_ms, fracs = [], [], []
            for active in draws:
                r = (active * rng.random((T, n_blocks))).astype(np.float32)
                union = np.flatnonzero(active.any(axis=0))
                rows = block_rows(union, block)
                scale_full = np.repeat(r, block, axis=1)
                scale = np.repeat(r[:, union], block, axis=1)
                m = median_ms(
                    {
                        "dense": partial(dense, x, None, up, down_t.T, scale=scale_full),
                        "sparse": partial(sparse, x, rows, None, up, down_t.T, scale=scale),
                    },
                    repeats,
                )
                d_ms.append(m["dense"])
                s_ms.append(m["sparse"])
                fracs.append(union.size / n_blocks)
            dm, sm, fr = statistics.median(d_ms), statistics.median(s_ms), float(np.mean(fracs))
            ideal = dm * fr
            rows_out.append(
                f"| {s:.1f} | {T} | {fr:.2f} | {dm:.3f} | {sm:.3f} | {sm / dm:.2f} | "
                f"{ideal:.3f} | {sm / ideal:.2f} |"
            )
    return rows_out


def _time_ffn(m: Any) -> list[float]:
    """Wrap the model's FFN so that its seconds add up in the returned one-element list."""
    total = [0.0]
    inner = m._ffn

    def timed(*a: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*a)
        finally:
            total[0] += time.perf_counter() - t0

    m._ffn = timed
    return total


def build_model(args: argparse.Namespace, out: Path) -> Path:
    """The BlockFFN folder of the curve: random routers, or ones built to have chunk-level
    sparsity (``--router chunk-local``: :class:`edgespec.sparse.tiny.ChunkLocalRouter`)."""
    from edgespec.sparse.tiny import ChunkLocalRouter, make_tiny_blockffn

    return make_tiny_blockffn(
        out,
        target_sparsity=args.sparsity,
        seed=args.seed,
        chunk_local=ChunkLocalRouter() if args.router == "chunk-local" else None,
        hidden_size=args.d,
        num_experts=args.experts,
        expert_size=args.expert_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.d // 64,
        num_key_value_heads=args.d // 64,
        vocab_size=args.vocab,
    )


def curve_table(args: argparse.Namespace, rng: np.random.Generator) -> list[str]:
    """Sparse and dense forwards of one model with each of ``args.kernel``'s kernel pairs,
    all timed side by side (repetitions interleaved over every model and chunk size)."""
    from tqdm.auto import tqdm

    from edgespec.sparse.blockffn import load_blockffn

    n_ctx = args.context + 16
    models: dict[tuple[str, str], Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_model(args, args.save_model or Path(tmp) / "m")
        for kernel in args.kernel:
            for mode in ("sparse", "dense"):
                m = load_blockffn(folder, n_ctx=n_ctx, kernel=kernel)
                m.ffn_mode = mode
                models[(kernel, mode)] = m
    ctx = rng.integers(0, args.vocab, args.context)
    ctx[0] = 1  # BOS (tiny_config's bos_token_id): text starts a segment there
    sizes = list(range(1, args.max_chunk + 1))
    ffn_s = {key: _time_ffn(m) for key, m in models.items()}
    for m in models.values():
        m.forward(ctx)
        for T in sizes:  # compiles a kernel's row buckets before anything is timed
            m.forward(rng.integers(0, args.vocab, T))
            m.truncate(args.context)
    times: dict[tuple[str, str, int], list[float]] = {}
    ffn_ms: dict[tuple[str, str, int], list[float]] = {}
    for rep in tqdm(range(args.repeats), desc="verify curve", unit="rep"):
        for T in sizes:
            chunk = rng.integers(0, args.vocab, T)  # new tokens each repetition
            for (kernel, mode), m in models.items():
                f0 = ffn_s[(kernel, mode)][0]
                t0 = time.perf_counter()
                m.forward(chunk)
                t1 = time.perf_counter()
                times.setdefault((kernel, mode, T), []).append((t1 - t0) * 1e3)
                ffn_ms.setdefault((kernel, mode, T), []).append(
                    (ffn_s[(kernel, mode)][0] - f0) * 1e3
                )
                m.truncate(args.context)
        if rep == 0:
            for m in models.values():  # first pass warms caches; count sparsity from the rest
                m.sparsity.reset()
    med = {k: statistics.median(v) for k, v in times.items()}
    ffn = {k: statistics.median(v) for k, v in ffn_ms.items()}
    stats = models[(args.kernel[0], "sparse")].sparsity.to_dict()["by_chunk"]
    out = [
        f"Token-level block sparsity measured during the run: {stats['1']['token_sparsity']:.3f}"
        "; chunk-level sparsity per T: "
        + ", ".join(f"T={T} {stats[str(T)]['chunk_sparsity']:.3f}" for T in sizes)
        + ".",
        "",
    ]
    summary = []
    for kernel in args.kernel:

        def c(mode: str, T: int, kernel: str = kernel) -> float:
            return med[(kernel, mode, T)]

        out += [
            f"#### Kernels sparse_ffn:{kernel} / dense_ffn:{kernel}",
            "",
            "| T | chunk union active | sparse ms | dense ms | dense/sparse | FFN share sparse | "
            "FFN share dense | sparse c(T)/c(1) | dense c(T)/c(1) | flatness (dense/sparse "
            "ratio) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for T in sizes:
            rs, rd = c("sparse", T) / c("sparse", 1), c("dense", T) / c("dense", 1)
            active = 1.0 - stats[str(T)]["chunk_sparsity"]
            fs, fd = (
                ffn[(kernel, "sparse", T)] / c("sparse", T),
                ffn[(kernel, "dense", T)] / c("dense", T),
            )
            out.append(
                f"| {T} | {active:.2f} | {c('sparse', T):.3f} | {c('dense', T):.3f} | "
                f"{c('dense', T) / c('sparse', T):.2f} | {fs:.2f} | {fd:.2f} | {rs:.2f} | "
                f"{rd:.2f} | {rd / rs:.2f} |"
            )
        T = sizes[-1]
        flat = (c("dense", T) / c("dense", 1)) / (c("sparse", T) / c("sparse", 1))
        summary.append(f"{kernel} {flat:.2f}")
        curve = {mode: {T: c(mode, T) for T in sizes} for mode in ("dense", "sparse")}
        out += ["", *controller_table(curve, sizes), ""]
    out.append(f"Flatness at T={sizes[-1]} (target >= 1.5): " + ", ".join(summary) + ".")
    return out


def controller_table(curves: dict[str, dict[int, float]], sizes: list[int]) -> list[str]:
    """The controller's draft length on each measured curve (``{"dense"|"sparse": {T:
    ms}}``), per acceptance alpha."""
    from edgespec.speculative.controller import Acceptance, Controller, CostCurve

    out = [
        "| alpha | k on dense curve | k on sparse curve | E[tok/s] vs plain, dense | "
        "E[tok/s] vs plain, sparse |",
        "|---|---|---|---|---|",
    ]
    max_k = sizes[-1] - 1
    for alpha in (0.5, 0.6, 0.7, 0.8, 0.9):
        cells = []
        for name in ("dense", "sparse"):
            curve = CostCurve(dict(curves[name]))
            c = Controller(curve, {"p": Acceptance.prior(max_k, alpha)}, max_k=max_k)
            choice = c.choose(max_k)
            cells.append((choice.k, choice.expected_rate / c.expected_rate(None, 0)))
        (kd, gd), (ks, gs) = cells
        out.append(f"| {alpha} | {kd} | {ks} | {gd:.2f} | {gs:.2f} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, default=768, help="model width (BlockFFN Small: 768)")
    ap.add_argument("--experts", type=int, default=48, help="blocks per layer (Small: 48)")
    ap.add_argument("--expert-size", type=int, default=64, help="neurons per block (Small: 64)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--sparsity", type=float, default=0.8, help="token-level target")
    ap.add_argument("--context", type=int, default=64, help="tokens cached before each chunk")
    ap.add_argument("--max-chunk", type=int, default=9, help="largest T (k+1 of a verify)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--kernel",
        nargs="+",
        default=["numpy"],
        help="FFN kernel pairs of the verify curve (numpy, tvm; several are timed side by side)",
    )
    ap.add_argument(
        "--router",
        choices=("random", "chunk-local"),
        default="random",
        help="random routers, or ones built to have chunk-level sparsity (ChunkLocalRouter)",
    )
    ap.add_argument("--curve-only", action="store_true", help="skip the FFN kernel table")
    ap.add_argument(
        "--save-model",
        type=Path,
        help="keep the curve's model folder here (to tune its kernel: edgespec tune -m DIR)",
    )
    ap.add_argument("--out", type=Path, help="write the tables as Markdown here too")
    args = ap.parse_args(argv)

    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(args.seed)
    lines = [
        f"Command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"NumPy {np.__version__}, {args.threads} BLAS thread(s)",
        "",
    ]
    with threadpool_limits(limits=args.threads, user_api="blas"):
        F = args.experts * args.expert_size
        if not args.curve_only:
            lines += [
                f"### FFN kernel, d={args.d}, F={F} ({args.experts} blocks of "
                f"{args.expert_size}), float32, independent routing",
                "",
                *kernel_table(args.d, args.experts, args.expert_size, args.repeats, rng),
                "",
            ]
        lines += [
            f"### Verify cost curve, BlockFFN model with {args.router} routers (d={args.d}, "
            f"{args.layers} layers, {args.experts}x{args.expert_size} FFN blocks, vocab "
            f"{args.vocab}), target token sparsity {args.sparsity}, context {args.context}",
            "",
            f"Load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
            "",
            *curve_table(args, rng),
            "",
            f"Load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
        ]
    from edgespec.bench.timing import emit

    return emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    raise SystemExit(main())
