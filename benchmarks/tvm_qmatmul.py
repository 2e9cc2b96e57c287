"""The TVM block-quantized matmul against the alternatives, side by side in one run.

For one GGUF tensor of smollm2-135m (default ``blk.0.ffn_gate.weight``, Q4_1, 1536 x 576) and
M = 1, 2, 4, 8, 9, 16 rows, times ``y = x @ W^T`` for:

- ``tvm-tuned``: :class:`edgespec.kernels.qmatmul.QMatmul` with this device's MetaSchedule
  records (tuned here first, ``--trials`` per M, unless cached under ``$EDGESPEC_HOME/tvm/``);
  a record whose schedule is slower than the untuned one keeps the untuned schedule;
- ``tvm-untuned``: the same kernel with :func:`edgespec.kernels.qmatmul.schedule_cpu`;
- ``numpy``: float32 ``x @ W.T`` on the dequantized weight (what the NumPy backend does);
- ``onnx``: ORT's ``MatMulNBits`` on the same codes and scales, built by the gguf-exact
  exporter's own node builder (``accuracy_level`` 4, as the exporter uses; affine blocks add
  the residual MatMul).

Every call goes through Python from a NumPy array, as a backend would make it, with the same
thread count for all (``--threads``, default 1: on a shared, loaded 2-core VM two threads
per implementation mostly measure contention). Rounds
interleave the implementations and row counts; medians over rounds. Prints a markdown table
(median microseconds and time(M)/time(1)) and the accuracy of each against the float64
reference, as a fraction of the float32 bound :func:`edgespec.kernels.reference.qmatmul_bound`.

    .venv/bin/python benchmarks/tvm_qmatmul.py --trials 16 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgespec.kernels import reference, tuning
from edgespec.kernels.qmatmul import (
    QMatmul,
    QWeight,
    cpu_scheduler,
    qmatmul_func,
    qmatmul_key,
)

ROWS = (1, 2, 4, 8, 9, 16)


def onnx_matmul(raw: np.ndarray, qtype: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """ORT MatMulNBits of the tensor, built by the gguf-exact exporter's node builder."""
    import onnx_ir as ir
    import onnxruntime as ort
    from gguf import GGMLQuantizationType

    from edgespec.export.gguf_exact import _Builder
    from edgespec.export.gguf_nbits import from_gguf

    w = from_gguf(raw, GGMLQuantizationType[qtype])
    n, k = w.shape
    a = ir.Value(name="a", shape=ir.Shape(["B", "T", k]), type=ir.TensorType(ir.DataType.FLOAT))
    graph = ir.Graph([a], [], nodes=[], opset_imports={"": 17, "com.microsoft": 1}, name="qmm")
    builder = _Builder(graph, accuracy_level=4)
    nodes: list[Any] = []
    y = builder.nbits(a, w, "w", nodes)
    graph.extend(nodes)
    graph.outputs.append(y)
    model = ir.serde.serialize_model(ir.Model(graph, ir_version=10))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out = sess.get_outputs()[0].name
    return lambda x: sess.run([out], {"a": x[None]})[0][0]


def median_us(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(x)
    return (time.perf_counter() - t0) / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=None, help="GGUF file (default smollm2-135m)")
    p.add_argument("--tensor", default="blk.0.ffn_gate.weight")
    p.add_argument("--trials", type=int, default=16, help="MetaSchedule trials per row count")
    p.add_argument("--retune", action="store_true", help="tune even when a record exists")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=50, help="calls per timing")
    p.add_argument(
        "--threads", type=int, default=1, help="threads of every implementation (default 1)"
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)  # numpy's BLAS

    from gguf import GGMLQuantizationType, GGUFReader, quants

    from edgespec import zoo

    path = args.model or zoo.pull("smollm2-135m")
    tensor = next(t for t in GGUFReader(path).tensors if t.name == args.tensor)
    raw, qtype = np.asarray(tensor.data), tensor.tensor_type.name
    weight = QWeight.from_gguf(raw, qtype)
    n, k = weight.shape
    target = tuning.host_target(args.threads)
    print(f"{args.tensor} {qtype} N={n} K={k}; target {target}", file=sys.stderr)

    tuning_log = {}
    for m in ROWS:
        key = qmatmul_key(weight.fmt, m, n, k)
        path_rec = tuning.records_dir() / f"{key}.json"
        if args.retune or tuning.load_record(path_rec) is None:
            rec = tuning.tune(
                qmatmul_func(weight.fmt, m, n, k),
                key,
                cpu_scheduler,
                target=target,
                trials=args.trials,
            )
        else:
            rec = tuning.TuningRecord.read(path_rec)
        tuning_log[m] = {
            "trials": rec.trials,
            "seconds": rec.tuning_seconds,
            "cost_model": rec.cost_model,
            "best_us": rec.best_us,
            "untuned_us": rec.untuned_us,
        }

    deq = quants.dequantize(raw, GGMLQuantizationType[qtype])  # W float32[N, K]
    impls: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "tvm-tuned": QMatmul(
            weight, target=target, buckets=ROWS, scheduler=tuning.tuned_scheduler(cpu_scheduler)
        ),
        "tvm-untuned": QMatmul(weight, target=target, buckets=ROWS),
        "numpy": lambda x: x @ deq.T,
        "onnx": onnx_matmul(raw, qtype, args.threads),
    }
    rng = np.random.default_rng(0)
    xs = {m: rng.standard_normal((m, k)).astype(np.float32) for m in ROWS}
    accuracy = {}
    for name, fn in impls.items():  # also compiles every bucket before timing
        worst = 0.0
        for x in xs.values():
            err = np.abs(fn(x) - reference.qmatmul(x, raw, qtype))
            worst = max(worst, float((err / reference.qmatmul_bound(x, raw, qtype)).max()))
        accuracy[name] = worst
    times: dict[str, dict[int, list[float]]] = {name: {m: [] for m in ROWS} for name in impls}
    for _ in range(args.rounds):
        for name, fn in impls.items():
            for m, x in xs.items():
                times[name][m].append(median_us(fn, x, args.calls))
    med = {name: {m: statistics.median(v) for m, v in per.items()} for name, per in times.items()}

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\n{args.tensor} ({qtype}, N={n}, K={k}), {args.threads} threads, load {load:.1f}; "
        f"median us per call over {args.rounds} rounds of {args.calls} calls\n"
    )
    print(
        "| impl | " + " | ".join(f"M={m}" for m in ROWS) + " | t(9)/t(1) | t(16)/t(1) "
        "| max err / f32 bound |"
    )
    print("|---" * (len(ROWS) + 4) + "|")
    for name in impls:
        row = med[name]
        cells = " | ".join(f"{row[m]:.0f}" for m in ROWS)
        print(
            f"| {name} | {cells} | {row[9] / row[1]:.2f} | {row[16] / row[1]:.2f} "
            f"| {accuracy[name]:.3g} |"
        )
    print("\ntuning per M (trials, seconds, best us vs untuned us at tuning time):")
    for m, t in tuning_log.items():
        print(
            f"  M={m}: {t['trials']} trials ({t['cost_model']}), {t['seconds']:.0f} s, "
            f"{t['best_us']:.0f} vs {t['untuned_us']:.0f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "tensor": args.tensor,
                    "qtype": qtype,
                    "n": n,
                    "k": k,
                    "threads": args.threads,
                    "load": load,
                    "median_us": med,
                    "accuracy": accuracy,
                    "tuning": tuning_log,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
