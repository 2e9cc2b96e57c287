"""kernels/expf.py against the C library's ``expf`` on all 2^32 float32 bit patterns, and
their speed.

Compiles :func:`edgespec.kernels.expf.exp_func` once per table lookup this CPU runs and once
with ``T.exp`` (one libm call a value), runs all three over every bit pattern in chunks of
2^22, and prints how many values differ (NaN payloads aside), then the median time per value
of each on 2^20 softmax-like inputs (uniform in [-30, 5], one thread).

    .venv/bin/python benchmarks/expf_exhaustive.py            # about 90 s on 2 cores
    .venv/bin/python benchmarks/expf_exhaustive.py --stride 4099   # a sample, seconds
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stride", type=int, default=1, help="compare every STRIDE-th bit pattern")
    a = p.parse_args()

    import tvm

    from edgespec.kernels import expf
    from edgespec.kernels.tuning import host_target

    fns = {}
    for kind in ["libm", *(k for k in expf.LOOKUPS if expf.cpu_has(k))]:
        with expf.building_with(None if kind == "libm" else kind):
            func = expf.exp_func(libm=kind == "libm").with_attr("global_symbol", "main")
            fns[kind] = tvm.compile(tvm.IRModule({"main": func}), target=host_target())["main"]
    dev, chunk = tvm.cpu(0), 1 << 22
    differ = {k: 0 for k in fns if k != "libm"}
    total = 0
    for start in range(0, 1 << 32, chunk * a.stride):
        bits = (np.arange(chunk, dtype=np.uint64) * a.stride + start).astype(np.uint32)
        x = tvm.runtime.tensor(bits.view(np.float32), dev)
        out = {}
        for k, f in fns.items():
            y = tvm.runtime.empty((chunk,), "float32", dev)
            f(x, y)
            out[k] = y.numpy()
        for k in differ:
            nan = np.isnan(out[k]) & np.isnan(out["libm"])
            differ[k] += int(((out[k].view(np.uint32) != out["libm"].view(np.uint32)) & ~nan).sum())
        total += chunk
    print(f"{total} bit patterns (stride {a.stride}); differing from libm's expf: {differ}")
    x = tvm.runtime.tensor(
        np.random.default_rng(0).uniform(-30, 5, 1 << 20).astype(np.float32), dev
    )
    y = tvm.runtime.empty((1 << 20,), "float32", dev)
    ns = {}
    for k, f in fns.items():
        times = []
        for _ in range(15):
            t0 = time.perf_counter()
            f(x, y)
            times.append(time.perf_counter() - t0)
        ns[k] = statistics.median(times) / (1 << 20) * 1e9
    print(" | ".join(f"{k} {v:.2f} ns/value ({ns['libm'] / v:.1f}x libm)" for k, v in ns.items()))
    return 1 if any(differ.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
