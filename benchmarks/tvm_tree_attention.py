"""Tree attention over a KV cache: the TVM kernel against the NumPy reference and onnxruntime.

For each model's attention shape, committed prefix P and chunk size M (the new rows: 1 for
plain decoding, k+1 to verify k drafts), one process times side by side, repetitions
interleaved, medians of one attention layer (all heads):

- ``tvm``: ``tree_attention:tvm`` compiled for exactly M rows (a call pads to the next
  bucket of 1, 2, 4, 8, 16 in the registry's default; here M = 9 is its own kernel), the
  cache read in place (float32, 64-byte aligned);
- ``np``: ``tree_attention:numpy`` (kernels/reference.py, float32 in, OpenBLAS batched
  matmuls);
- ``ort``: onnxruntime on a tiny graph of the same attention (Transpose/Reshape to group the
  query heads by KV head, MatMul, Mul by 1/sqrt(D), Add of a 0/-inf mask bias given as an
  input, Softmax, MatMul, back to ``[M, H, D]``); the bias is built outside the timing.

The mask is a chain (a verify chunk); a tree of M nodes costs the same in every column.
"t(M)/t(1)" is each implementation's time over its own M = 1 time at the same P. "max err /
bound" is the TVM kernel's largest error against the float64 reference as a fraction of
:func:`edgespec.kernels.tree_attention.attention_bound` (the tests' tolerance).

    python benchmarks/tvm_tree_attention.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from edgespec.bench.timing import median_ms

#: (name, H, H_kv, D): SmolLM2-135M's attention and Qwen2.5-1.5B's
SIZES = {"smollm2": (9, 3, 64), "qwen1.5b": (12, 2, 128)}
ROWS = (1, 2, 4, 9, 16)
PREFIXES = (256, 1024)


def ort_session(n_heads: int, n_kv: int, hd: int, threads: int) -> Any:
    """An onnxruntime session of ``out [M, H, D] = attention(q [M, H, D], k, v [L, H_kv, D],
    bias [G*M, L])``, rows grouped by KV head as the reference does."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    f32 = TensorProto.FLOAT

    def const(name: str, value: np.ndarray) -> onnx.NodeProto:
        return helper.make_node(
            "Constant", [], [name], value=onnx.numpy_helper.from_array(value, name)
        )

    nodes = [
        const("group_shape", np.array([n_kv, -1, hd], np.int64)),
        const("head_shape", np.array([n_heads, -1, hd], np.int64)),
        const("scale", np.array(1.0 / np.sqrt(hd), np.float32)),
        helper.make_node("Transpose", ["q"], ["qh"], perm=[1, 0, 2]),
        helper.make_node("Reshape", ["qh", "group_shape"], ["qg"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[1, 2, 0]),
        helper.make_node("Transpose", ["v"], ["vt"], perm=[1, 0, 2]),
        helper.make_node("MatMul", ["qg", "kt"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["ss"]),
        helper.make_node("Add", ["ss", "bias"], ["sb"]),
        helper.make_node("Softmax", ["sb"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "vt"], ["og"]),
        helper.make_node("Reshape", ["og", "head_shape"], ["oh"]),
        helper.make_node("Transpose", ["oh"], ["out"], perm=[1, 0, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "tree_attention",
        [
            helper.make_tensor_value_info("q", f32, ["M", n_heads, hd]),
            helper.make_tensor_value_info("k", f32, ["L", n_kv, hd]),
            helper.make_tensor_value_info("v", f32, ["L", n_kv, hd]),
            helper.make_tensor_value_info("bias", f32, ["R", "L"]),
        ],
        [helper.make_tensor_value_info("out", f32, ["M", n_heads, hd])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def table(name: str, n_heads: int, n_kv: int, hd: int, args: argparse.Namespace) -> list[str]:
    from edgespec.kernels import reference
    from edgespec.kernels.tree_attention import TreeAttention, aligned_zeros, attention_bound

    rng = np.random.default_rng(args.seed)
    kern = TreeAttention(buckets=ROWS)
    sess = ort_session(n_heads, n_kv, hd, args.threads) if not args.no_ort else None
    group = n_heads // n_kv
    out = [
        f"#### {name}: H={n_heads}, H_kv={n_kv}, D={hd}, float32, one layer",
        "",
        "| P | M | tvm ms | np ms | ort ms | tvm t(M)/t(1) | np t(M)/t(1) | ort t(M)/t(1)"
        " | tvm / np | tvm / ort | max err / bound |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cells = [(p, m) for p in PREFIXES for m in ROWS]
    base: dict[tuple[int, str], float] = {}
    for prefix, m_rows in tqdm(cells, desc=name, unit="cell"):
        n_ctx = prefix + m_rows
        q = rng.standard_normal((m_rows, n_heads, hd), dtype=np.float32)
        k = aligned_zeros((n_ctx, n_kv, hd), np.float32)
        v = aligned_zeros((n_ctx, n_kv, hd), np.float32)
        k[...] = rng.standard_normal(k.shape, dtype=np.float32)
        v[...] = rng.standard_normal(v.shape, dtype=np.float32)
        mask = np.tril(np.ones((m_rows, m_rows), bool))
        fns: dict[str, Callable[[], object]] = {
            "tvm": partial(kern, q, k, v, mask),
            "np": partial(reference.tree_attention, q, k, v, mask),
        }
        if sess is not None:
            bias = np.zeros((group * m_rows, n_ctx), np.float32)
            bias[:, prefix:] = np.where(np.tile(mask, (group, 1)), 0.0, -np.inf)
            feed = {"q": q, "k": k, "v": v, "bias": bias}
            fns["ort"] = partial(sess.run, None, feed)
        for fn in fns.values():  # compile and warm the caches
            fn()
        med = median_ms(fns, args.repeats)
        y = kern(q, k, v, mask)
        f64 = np.float64
        exact = reference.tree_attention(q.astype(f64), k.astype(f64), v.astype(f64), mask)
        worst = float((np.abs(y - exact) / attention_bound(q, k, v, mask)).max())
        if sess is not None:
            y_ort = fns["ort"]()[0]  # type: ignore[index]
            assert np.abs(y_ort - exact).max() < 1e-3, "onnxruntime graph disagrees"
        for impl, t in med.items():
            base.setdefault((prefix, impl), t)
        ort_ms = med.get("ort", float("nan"))

        def ratio(impl: str, t: float, prefix: int = prefix) -> float:
            return t / base.get((prefix, impl), float("nan"))

        out.append(
            f"| {prefix} | {m_rows} | {med['tvm']:.3f} | {med['np']:.3f} | {ort_ms:.3f}"
            f" | {ratio('tvm', med['tvm']):.2f} | {ratio('np', med['np']):.2f}"
            f" | {ratio('ort', ort_ms):.2f} | {med['tvm'] / med['np']:.2f}"
            f" | {med['tvm'] / ort_ms:.2f} | {worst:.1e} |"
        )
    return out + [""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=sorted(SIZES))
    p.add_argument("--repeats", type=int, default=25, help="timed calls per cell")
    p.add_argument("--threads", type=int, default=1, help="threads of every implementation")
    p.add_argument("--no-ort", action="store_true", help="leave out the onnxruntime column")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write the tables as Markdown here too")
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)  # numpy's BLAS
    from edgespec.fileutil import atomic_path
    from edgespec.kernels.tuning import host_cpu

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"Command: `python benchmarks/tvm_tree_attention.py {shlex.join(sys.argv[1:])}`",
        f"Machine: {platform.machine()}, llvm mcpu {host_cpu()}, {os.cpu_count()} cores,"
        f" {args.threads} thread(s) per implementation, NumPy {np.__version__},"
        f" load average {load:.1f} at start (shared machine: timings are directional)",
        "",
    ]
    for name in args.sizes:
        lines += table(name, *SIZES[name], args)
    text = "\n".join(lines)
    print(text)
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
