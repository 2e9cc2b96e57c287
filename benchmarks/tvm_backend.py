"""tvm backend vs llama.cpp and onnx: plain decoding tok/s and the k-token forward cost c(k).

The tvm backend runs three times: its quantized builds (``--weights gguf-exact``: the GGUF's
own blocks times float32 activations, kernels/qlinear.py; ``--weights gguf-q8act``: the same
blocks times int8-quantized activations, integer dot products, kernels/qlinear_q8.py, once
with a float32 KV cache and once with float16, its default) and its fp32 build; onnx runs
gguf-exact (MatMulNBits). The llama.cpp row is labelled with the file's type
(``general.file_type``).

One process, same GGUF, same context; repetitions are interleaved across the models so that
load on a shared machine hits all of them alike. llama.cpp runs at each thread count in
``--threads`` and its best count is the baseline (as benchmarks §2 does); the other backends
run at each count too and report their best. tvm and llama.cpp load once and switch their
thread count before each timing (:data:`SWITCH_THREADS`; TVM's pool is process-wide); onnx
loads a session per count. Rows: decode tok/s (median of ``--reps`` runs
of ``--decode`` one-token forwards after ``--context`` cached tokens), its ratio to llama.cpp
at its best count, and c(k)/c(1) for verify-shaped forwards of k tokens (rolled back after
each timing, at context + decode cached tokens). Prints a Markdown table; ``--json`` writes
the raw medians.

    .venv/bin/python benchmarks/tvm_backend.py --model smollm2-135m --threads 1 2

``--prefill N`` adds the time of one forward of an N-token prompt on an empty cache (the
time to first token, the last row's logits only) per row, and its ratio to llama.cpp's at
its best count.

``--isas vnni avxvnni avx2`` runs the gguf-q8act row once per int8 dot product this CPU has
(kernels/qlinear_q8.py ``ISAS``), each a library of its own: on a CPU with AVX512-VNNI that
times, side by side, what a laptop core with AVX-VNNI or only AVX2 would build (the same
instructions, not the same core).

``--cpu NAME`` builds every tvm row for LLVM's CPU ``NAME`` instead of this one, with the
int8 dot product and ``exp`` table lookup that CPU's features allow
(:func:`edgespec.kernels.tuning.build_for`): e.g. ``--cpu znver3`` (AVX2 without AVX-512
or VNNI) times, on this CPU, the instructions an AVX2 laptop core would run, so that the
builds can be set against each other for it (not against llama.cpp, whose build is this
CPU's; not that core's speed).

``--core-probe`` times the round trip of a cache line between the process's first two CPUs
(``benchmarks/core_latency.py``) before the first round of timings and after each, prints
its median and range in the header, and then the table again for the rounds whose two
probes were both below ``--probe-split`` ns ("near" CPUs) and for those both at or above it
("far"): on this 2-vCPU VM the vCPUs move between two placements, about 80 and 350-450 ns
apart, and the timings follow them (docs/benchmarks.md section 21).

``--tune TRIALS`` instead tunes the quantized build's one-row kernels (kernels/qlinear.py at
T = 1, one per GGUF type and matrix shape of the model) with MetaSchedule
(``edgespec.kernels.tuning.tune``, in-process, records under ``$EDGESPEC_HOME``) and prints
tuned against untuned (the hand schedule the graph uses) and the tuning time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Any

#: rows: (label, backend, LoadOptions fields); the first is the baseline ("{type}": the file's)
ROWS: list[tuple[str, str, dict[str, Any]]] = [
    ("llama.cpp (GGUF {type})", "llamacpp", {}),
    ("onnx gguf-exact", "onnx", {"weights": "gguf-exact"}),
    ("tvm gguf-exact (llvm)", "tvm", {"weights": "gguf-exact"}),
    # the float32 cache named: the row means what it did before f16 became this build's default
    ("tvm gguf-q8act (llvm)", "tvm", {"weights": "gguf-q8act", "kv_cache": "f32"}),
    ("tvm gguf-q8act f16 cache (llvm)", "tvm", {"weights": "gguf-q8act", "kv_cache": "f16"}),
    ("tvm fp32 (llvm)", "tvm", {"weights": "fp32"}),
]


def file_type(path: Any) -> str:
    """The GGUF file's type name from ``general.file_type`` ("Q4_1", "Q4_K_M"), or "?"."""
    from gguf import GGUFReader, LlamaFileType

    field = GGUFReader(str(path)).fields.get("general.file_type")
    if field is None:
        return "?"
    name = LlamaFileType(int(field.parts[field.data[0]][0])).name
    return name.removeprefix("MOSTLY_")


#: backends whose ``set_threads`` is cheap (no reload): one model serves every thread count,
#: switched before each timing. TVM's thread pool is process-wide, so its rows must switch
#: before each timing anyway (a count set at load would hold for every tvm model loaded later)
SWITCH_THREADS = {"tvm", "llamacpp"}


def with_isas(
    rows: list[tuple[str, str, dict[str, Any]]], isas: list[str]
) -> list[tuple[str, str, dict[str, Any], str | None]]:
    """``rows`` with the gguf-q8act row repeated once per dot product in ``isas`` (labelled
    with it; those this CPU lacks are left out, said on stderr); no ``isas``: each row once,
    built with the CPU's best (None)."""
    from edgespec.kernels import qlinear_q8

    out: list[tuple[str, str, dict[str, Any], str | None]] = []
    for label, backend, fields in rows:
        if not isas or fields.get("weights") != "gguf-q8act":
            out.append((label, backend, fields, None))
            continue
        for isa in isas:
            if isa not in qlinear_q8.ISAS or not qlinear_q8.cpu_has(isa):
                print(f"tvm_backend: skipping {isa}: this CPU does not run it", file=sys.stderr)
                continue
            out.append((label.replace("gguf-q8act", f"gguf-q8act {isa}"), backend, fields, isa))
    return out


def decode_seconds(model: Any, context: list[int], n: int) -> float:
    """Seconds per token of ``n`` one-token forwards after ``context`` (greedy feed)."""
    model.reset()
    logits = model.forward(context, all_logits=False)
    t0 = time.perf_counter()
    for _ in range(n):
        logits = model.forward([int(logits[-1].argmax())], all_logits=False)
    return (time.perf_counter() - t0) / n


def prefill_seconds(model: Any, prompt: list[int]) -> float:
    """Seconds of one forward of ``prompt`` on an empty cache (the last row's logits only,
    as a prompt's first token needs)."""
    model.reset()
    t0 = time.perf_counter()
    model.forward(prompt, all_logits=False)
    return time.perf_counter() - t0


def forward_seconds(model: Any, k: int, token: int = 5) -> float:
    """Seconds of one k-token forward (all logits) at the current cache, rolled back."""
    t0 = time.perf_counter()
    model.forward([token] * k)
    dt = time.perf_counter() - t0
    model.rollback(k)
    return dt


def tune_kernels(source: Any, trials: int) -> None:
    """MetaSchedule on the quantized build's one-row kernels of ``source`` (see the module
    docstring); prints a Markdown table."""
    from edgespec.kernels import qlinear
    from edgespec.kernels.tuning import tune
    from edgespec.runtimes import numpy_ref
    from edgespec.runtimes.tvm_backend import gguf_matrices, graph_spec

    hp, weights, _ = numpy_ref._load_gguf(source.path, "float32", False)
    spec = graph_spec(hp, weights)
    packed, _ = gguf_matrices(source.path, spec, permuted_qk=hp.arch == "llama")
    shapes = sorted({(q.fmt, *spec.weight_shapes()[name]) for name, q in packed.items()})
    print(f"MetaSchedule, {trials} trials per kernel, T = 1, load average {os.getloadavg()[0]:.1f}")
    print(
        "\n| kernel | untuned us | tuned us | tuned / untuned | tuning s |\n|---|---|---|---|---|"
    )
    total = 0.0
    for fmt, K, N in shapes:
        key = f"qlinear-{fmt}-m1-n{N}-k{K}"
        rec = tune(
            qlinear.qlinear_func(fmt, K, N, rows=1), key, qlinear.schedule_qlinear, trials=trials
        )
        total += rec.tuning_seconds
        print(
            f"| {key} | {rec.untuned_us:.0f} | {rec.best_us:.0f} | "
            f"{rec.best_us / rec.untuned_us:.2f} | {rec.tuning_seconds:.0f} |"
        )
    print(f"\ntuning time in all: {total:.0f} s")


#: independent sums the dot product peak kernel keeps in flight (enough to cover the
#: instruction's latency on two ports: 5 cycles x 2)
PEAK_CHAINS = 12


def dot_peak(iters: int = 200_000, reps: int = 9) -> float:
    """This core's rate (per second, one thread) of the int8 dot product the kernels are
    built with (``qlinear_q8.DOTS``: one ``vpdpbusd`` of 64 byte pairs with VNNI), measured
    with :data:`PEAK_CHAINS` independent sums on operands in registers: the matmuls' ceiling."""
    import numpy as np
    import tvm
    from tvm.script import tirx as T

    from edgespec.kernels import qlinear_q8
    from edgespec.kernels.tuning import host_target

    dot, A = qlinear_q8.DOTS[qlinear_q8.building_isa()], PEAK_CHAINS

    @T.prim_func
    def peak(w_h: T.handle, y_h: T.handle, n: T.int32):
        T.func_attr({"tirx.noalias": True, "global_symbol": "main"})
        W = T.match_buffer(w_h, (64 * A,), "uint8")
        Y = T.match_buffer(y_h, (16 * A,), "int32")
        acc = T.alloc_local((16 * A,), "int32")
        for a in T.unroll(A):
            acc[T.ramp(a * 16, 1, 16)] = T.broadcast(T.int32(0), 16)
        for i in range(n):
            for a in T.unroll(A):
                acc[T.ramp(a * 16, 1, 16)] = dot(
                    acc[T.ramp(a * 16, 1, 16)], W[T.ramp(a * 64, 1, 64)],
                    T.reinterpret("int8x64", T.broadcast(T.Cast("int32", i), 16)),
                )  # fmt: skip
        for a in T.unroll(A):
            Y[T.ramp(a * 16, 1, 16)] = acc[T.ramp(a * 16, 1, 16)]

    fn = tvm.compile(tvm.IRModule({"main": peak}), target=host_target())["main"]
    w = tvm.runtime.tensor(np.ones(64 * A, np.uint8))
    y = tvm.runtime.empty((16 * A,), "int32")
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(w, y, iters)
        times.append(time.perf_counter() - t0)
    return iters * A / statistics.median(times)


def kernel_times(source: Any, rows: list[int], reps: int) -> None:
    """The quantized matmuls of one forward of ``source``, alone: per build (float32 or int8
    activations, kernels/qlinear.py and qlinear_q8.py) the sum over the model's matrices of
    one kernel call at each row count in ``rows`` (each distinct shape timed on one of its
    matrices, min of ``reps`` calls, one thread, weights cache-warm); prints a Markdown table."""
    import numpy as np
    import tvm

    from edgespec.kernels import qlinear, qlinear_q8
    from edgespec.kernels.tuning import host_target
    from edgespec.runtimes import numpy_ref
    from edgespec.runtimes.tvm_backend import gguf_matrices, graph_spec, set_tvm_threads

    hp, weights, _ = numpy_ref._load_gguf(source.path, "float32", False)
    spec = graph_spec(hp, weights)
    packed, _ = gguf_matrices(source.path, spec, permuted_qk=hp.arch == "llama")
    set_tvm_threads(tvm, 1)
    dev, rng = tvm.cpu(0), np.random.default_rng(0)
    builds = {"gguf-exact": lambda w: w, "gguf-q8act": qlinear_q8.prefer}
    total = {(b, t): 0.0 for b in builds for t in rows}
    seen: dict[tuple[str, str, int, int], float] = {}
    shapes = spec.weight_shapes()
    for name, q in packed.items():
        K, N = shapes[name]
        for build, convert in builds.items():
            w = convert(q)
            for t in rows:
                key = (build, w.fmt, K, N)
                if (*key[1:], t) not in seen:
                    func = qlinear.qlinear_kernel(w.fmt, K, N).with_attr("global_symbol", "main")
                    fn = tvm.compile(tvm.IRModule({"main": func}), target=host_target())["main"]
                    ops = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in w.operands()]
                    x = tvm.runtime.tensor(rng.standard_normal((t, K)).astype(np.float32), dev)
                    y = tvm.runtime.empty((t, N), "float32", dev)
                    best = float("inf")
                    for _ in range(reps):
                        t0 = time.perf_counter()
                        fn(x, *ops, y)
                        best = min(best, time.perf_counter() - t0)
                    seen[(*key[1:], t)] = best
                total[(build, t)] += seen[(*key[1:], t)]
    print(f"quantized matmuls of one forward, {len(packed)} matrices, min of {reps} calls each, "
          f"1 thread, load average {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print(
        "| build |" + "".join(f" T = {t} ms |" for t in rows) + f" T = {rows[-1]} / T = {rows[0]} |"
    )
    print("|---|" + "---|" * (len(rows) + 1))
    for b in builds:
        cells = "".join(f" {total[(b, t)] * 1e3:.1f} |" for t in rows)
        print(f"| {b} |{cells} {total[(b, rows[-1])] / total[(b, rows[0])]:.2f} |")
    rate = dot_peak()
    macs = sum(k * n for k, n in (shapes[name] for name in packed))
    floors = {t: t * macs / 64 / rate for t in rows}
    print(
        f"\nint8 dot product ({qlinear_q8.building_isa()}) peak, one thread: {rate / 1e9:.2f} G "
        f"64-byte dot products/s; {macs / 1e6:.1f} M multiply-adds a row; gguf-q8act against "
        "that ceiling (T x multiply-adds / 64 / peak):\n"
    )
    print("| T | gguf-q8act ms | ceiling ms | share of peak |\n|---|---|---|---|")
    for t in rows:
        got = total[("gguf-q8act", t)]
        print(f"| {t} | {got * 1e3:.2f} | {floors[t] * 1e3:.2f} | {floors[t] / got:.0%} |")


def table(
    ref_label: str,
    dec: dict[tuple[str, int], list[float]],
    fwd: dict[tuple[str, int], dict[int, list[float]]],
    pre: dict[tuple[str, int], list[float]],
    ks: list[int],
    prefill: int,
    reps: Any,
) -> tuple[dict[Any, float], dict[Any, dict[int, float]], dict[Any, float]]:
    """Print the Markdown table of the medians over rounds ``reps``; returns the medians
    (decode seconds, c(k) seconds, prefill seconds per row)."""
    reps = list(reps)
    med = {key: statistics.median(v[r] for r in reps) for key, v in dec.items()}
    cmed = {
        key: {k: statistics.median(v[r] for r in reps) for k, v in d.items()}
        for key, d in fwd.items()
    }
    ref = min((s for (lab, _), s in med.items() if lab == ref_label), default=None)
    pmed = {key: statistics.median(v[r] for r in reps) for key, v in pre.items() if v}
    pref = min((s for (lab, _), s in pmed.items() if lab == ref_label), default=None)
    head = "| backend | threads | decode tok/s | vs llama.cpp best |"
    head += "".join(f" c({k}) ms |" for k in ks) + f" c({max(ks)})/c(1) |"
    if prefill:
        head += f" prefill {prefill} ms | prefill vs llama.cpp best |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for (label, t), s in med.items():
        c = cmed[(label, t)]
        ratio = f"{ref / s:.2f}x" if ref else "-"
        row = f"| {label} | {t} | {1 / s:.1f} | {ratio} |"
        row += "".join(f" {c[k] * 1e3:.1f} |" for k in ks)
        row += f" {c[max(ks)] / c[min(ks)]:.2f} |"
        if prefill:
            ps = pmed[(label, t)]
            row += f" {ps * 1e3:.1f} | {f'{pref / ps:.2f}x' if pref else '-'} |"
        print(row)
    return med, cmed, pmed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--decode", type=int, default=16)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 9])
    p.add_argument("--backends", nargs="+", default=sorted({r[1] for r in ROWS}))
    p.add_argument("--rows", nargs="+", default=None, help="only these row labels' first words")
    p.add_argument(
        "--isas",
        nargs="+",
        default=None,
        help="the gguf-q8act row once per int8 dot product (kernels/qlinear_q8.py ISAS: vnni, "
        "avxvnni, avx2, generic), each where this CPU runs it; default: the CPU's best only",
    )
    p.add_argument(
        "--cpu",
        default=None,
        help="build the tvm rows for this LLVM CPU (e.g. znver3: AVX2 only) instead of this one",
    )
    p.add_argument(
        "--prefill",
        type=int,
        default=0,
        metavar="N",
        help="also time a forward of an N-token prompt on an empty cache (time to first token)",
    )
    p.add_argument(
        "--core-probe",
        action="store_true",
        help="time a core-to-core round trip after each round (benchmarks/core_latency.py) "
        "and print the rounds split by it",
    )
    p.add_argument(
        "--probe-split",
        type=float,
        default=200.0,
        metavar="NS",
        help="--core-probe: round trips below NS count as near CPUs (default 200: this VM's "
        "two bands are about 80 and 350-450 ns)",
    )
    p.add_argument("--json", default=None, help="write the raw medians here")
    p.add_argument("--tune", type=int, default=0, help="tune the quantized kernels instead")
    p.add_argument(
        "--kernels", action="store_true", help="time the quantized matmuls alone instead (--ks)"
    )
    a = p.parse_args()

    from edgespec import zoo
    from edgespec.kernels import qlinear_q8
    from edgespec.runtimes import BACKENDS
    from edgespec.runtimes.base import LoadOptions, ModelSource

    path = zoo.pull(a.model, progress=False)
    source = ModelSource("gguf", path, a.model)
    if a.cpu:
        from edgespec.errors import EdgespecError
        from edgespec.kernels import tuning

        try:
            tuning.build_for(a.cpu)
        except EdgespecError as e:
            raise SystemExit(f"tvm_backend: --cpu: {e}") from None
    if a.tune:
        tune_kernels(source, a.tune)
        return 0
    if a.kernels:
        kernel_times(source, sorted({min(a.ks), max(a.ks)}), 2 * a.reps + 1)
        return 0
    context = [1 + (i * 7919) % 20000 for i in range(a.context)]
    models: dict[tuple[str, int], Any] = {}
    switch: set[tuple[str, int]] = set()  # rows whose model is shared and switched per timing
    rows = with_isas(
        [(label.format(type=file_type(path)), b, f) for label, b, f in ROWS], a.isas or []
    )
    n_ctx = max(a.context + a.decode + max(a.ks), a.prefill) + 8
    prompt = [1 + (i * 7919) % 20000 for i in range(a.prefill)]
    for label, backend, fields, isa in rows:
        if backend not in a.backends or not BACKENDS.get(backend).available():
            continue
        if a.rows and not any(label.startswith(r) for r in a.rows):
            continue
        shared = None
        for t in a.threads:
            if shared is None or backend not in SWITCH_THREADS:
                opts = LoadOptions(n_ctx=n_ctx, n_threads=t, progress=False, **fields)
                with qlinear_q8.building_with(isa):
                    shared = BACKENDS.get(backend).load(source, opts)
            models[(label, t)] = shared
            if backend in SWITCH_THREADS:
                switch.add((label, t))
    dec: dict[tuple[str, int], list[float]] = {key: [] for key in models}
    pre: dict[tuple[str, int], list[float]] = {key: [] for key in models}
    fwd: dict[tuple[str, int], dict[int, list[float]]] = {
        key: {k: [] for k in a.ks} for key in models
    }
    from tqdm.auto import tqdm

    load = [os.getloadavg()[0]]
    probe: list[float] = []
    if a.core_probe:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from core_latency import round_trip_ns

        probe.append(round_trip_ns())
    with tqdm(total=a.reps * len(models), desc="timing", unit="model") as bar:
        for _ in range(a.reps):
            for key, model in models.items():
                if key in switch:
                    model.set_threads(key[1])
                if a.prefill:
                    pre[key].append(prefill_seconds(model, prompt))
                dec[key].append(decode_seconds(model, context, a.decode))
                for k in a.ks:
                    fwd[key][k].append(forward_seconds(model, k))
                bar.update(1)
            load.append(os.getloadavg()[0])
            if a.core_probe:
                probe.append(round_trip_ns())
    print(f"`{' '.join(shlex.quote(x) for x in ['benchmarks/tvm_backend.py', *sys.argv[1:]])}`")
    print(
        f"({platform.machine()}, {a.model}, context {a.context}, medians of {a.reps}; "
        f"1-minute load average {min(load):.1f} to {max(load):.1f} during the timings"
        + (
            f"; core-to-core round trip median {statistics.median(probe):.0f} ns, "
            f"{min(probe):.0f} to {max(probe):.0f} over {len(probe)} probes"
            if probe
            else ""
        )
        + ")\n"
    )
    med, cmed, pmed = table(rows[0][0], dec, fwd, pre, a.ks, a.prefill, range(a.reps))
    if probe:  # the same rounds split by where the two CPUs sat (the probes around each)
        for name, near in (("near", True), ("far", False)):
            reps = [
                r
                for r in range(a.reps)
                if (probe[r] < a.probe_split) == near and (probe[r + 1] < a.probe_split) == near
            ]
            whole = len(reps) == a.reps  # the table above again: not printed
            print(
                f"\nRounds with both probes around them {'below' if near else 'at or above'} "
                f"{a.probe_split:.0f} ns ({name} CPUs): {len(reps)} of {a.reps}"
                + (" (all: the table above)" if whole else "\n" if reps else "")
            )
            if reps and not whole:
                table(rows[0][0], dec, fwd, pre, a.ks, a.prefill, reps)
    if a.json:
        raw: dict[str, Any] = {
            f"{lab}@{t}": {
                "decode_s": med[(lab, t)],
                "c": cmed[(lab, t)],
                **({"prefill_s": pmed[(lab, t)]} if a.prefill else {}),
            }
            for lab, t in med
        }
        raw["load_average"] = [min(load), max(load)]
        if probe:
            raw["core_round_trip_ns"] = probe
        with open(a.json, "w") as f:
            json.dump(raw, f, indent=1)
    for model in {id(m): m for m in models.values()}.values():
        model.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
