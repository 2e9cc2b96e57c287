"""What a TVM kernel can stream on one thread: the yardstick for the int8 matmuls at T = 1.

A minimal TensorIR kernel reads a code stream of ``--kb`` KB (7.5 MB by default, the size of
the Qwen 1.5B's ffn_gate in Q4_K) 64 bytes at a time, each load feeding ``--work``
``vpdpbusd`` (AVX512-VNNI) into four accumulators, with optional software prefetches
``--ahead`` KB on, the 1 KB of each step read in order or in the int8 kernels' order
(``--order kernel``: four code rows 256 bytes apart, a vector's 64 bytes from each, as
``kernels/qlinear_q8k.py`` reads a Q4_K group at T = 1), and optionally the side streams a
Q4_K matrix has (``--side``: 512 bytes of sub-scales and 512 of offsets' sub-scales per 8
KB of codes), and ``--stores`` vector stores per KB (what a kernel whose accumulators live in
memory does). Like ``benchmarks/tvm_q8_stream.py`` it times one call warm (the same operands
call after call) and cold (enough copies for 256 MB, cycled), in thread CPU time, min of
``--reps``, and prints GB/s of every byte read. Against that script's figure for the real
kernel, the difference is what the kernel's loop, not the memory, costs.

    .venv/bin/python benchmarks/tvm_stream_floor.py --order seq kernel --ahead 0 8 --side
    .venv/bin/python benchmarks/tvm_stream_floor.py --order kernel --ahead 8 --side --stores 0 8 16
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from typing import Any

import numpy as np


def stream_kernel(
    kb: int, work: int, ahead: int, kernel_order: bool, side: bool, stores: int = 0
) -> Any:
    """The TensorIR function ``stream(codes u8[kb + 64, 1024], q i8[64], out i32[64 + 8 *
    stores * 16], sd u8[kb/8 + 8, 512], sm u8[...])`` (``sd``/``sm`` read only with
    ``side``); with ``stores``, each 1 KB step first stores that many accumulator vectors
    into ``out`` past its first 64 (a ring of 8 steps), as a kernel whose accumulators live in
    memory does."""
    from tvm.script import tirx as T

    def chunk(line: int) -> int:  # byte offset of the line-th 64-byte load of a 1 KB step
        return (line % 4) * 256 + (line // 4) * 64 if kernel_order else line * 64

    @T.prim_func
    def stream(c_h: T.handle, q_h: T.handle, o_h: T.handle, sd_h: T.handle, sm_h: T.handle):
        T.func_attr({"global_symbol": "stream", "tirx.noalias": True})
        C = T.match_buffer(c_h, (kb + 64, 1024), "uint8")
        Q = T.match_buffer(q_h, (64,), "int8")
        Out = T.match_buffer(o_h, (64 + 8 * stores * 16,), "int32")
        SD = T.match_buffer(sd_h, (kb // 8 + 8, 512), "uint8")
        SM = T.match_buffer(sm_h, (kb // 8 + 8, 512), "uint8")
        for _ in T.parallel(1):  # as the matmuls run: inside TVM's parallel launch
            acc = T.alloc_buffer((64,), "int32", scope="local")
            for v in T.unroll(4):
                acc[T.ramp(v * 16, 1, 16)] = T.broadcast(0, 16)
            for b in range(kb):
                if side:
                    if b % 8 == 0:
                        for line in T.unroll(8):
                            acc[T.ramp((line % 4) * 16, 1, 16)] = (
                                acc[T.ramp((line % 4) * 16, 1, 16)]
                                + T.reinterpret("int32x16", SD[b // 8, T.ramp(line * 64, 1, 64)])
                                + T.reinterpret("int32x16", SM[b // 8, T.ramp(line * 64, 1, 64)])
                            )
                for st in T.unroll(stores):
                    Out[T.ramp(64 + ((b % 8) * stores + st) * 16, 1, 16)] = acc[
                        T.ramp((st % 4) * 16, 1, 16)
                    ]
                if ahead > 0:
                    for line in T.unroll(16):
                        T.evaluate(
                            T.call_llvm_intrin(
                                "void",
                                "llvm.prefetch.p0",
                                T.address_of(C[b + ahead, line * 64]),
                                0,
                                3,
                                1,
                            )
                        )
                for line in T.unroll(16):
                    for _r in T.unroll(work):
                        acc[T.ramp((line % 4) * 16, 1, 16)] = T.call_llvm_pure_intrin(
                            "int32x16",
                            "llvm.x86.avx512.vpdpbusd.512",
                            acc[T.ramp((line % 4) * 16, 1, 16)],
                            T.reinterpret("int8x64", C[b, T.ramp(chunk(line), 1, 64)]),
                            Q[T.ramp(0, 1, 64)],
                        )
            for v in T.unroll(4):
                Out[T.ramp(v * 16, 1, 16)] = acc[T.ramp(v * 16, 1, 16)]

    return stream


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kb", type=int, default=7680, help="KB of codes a call (default 7.5 MB)")
    p.add_argument("--work", type=int, nargs="+", default=[3], help="vpdpbusd per 64 bytes")
    p.add_argument("--ahead", type=int, nargs="+", default=[0, 8], help="prefetch distance, KB")
    p.add_argument("--order", nargs="+", choices=["seq", "kernel"], default=["seq", "kernel"])
    p.add_argument("--side", action="store_true", help="also the Q4_K sub-scale streams")
    p.add_argument(
        "--stores", type=int, nargs="+", default=[0], help="vector stores per KB (accumulators)"
    )
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()

    import tvm

    from edgespec.kernels.qlinear_q8 import cpu_has
    from edgespec.kernels.tuning import host_target
    from edgespec.runtimes.tvm_backend import set_tvm_threads

    if not cpu_has("vnni"):
        print("this CPU has no AVX512-VNNI: the yardstick kernel needs vpdpbusd", file=sys.stderr)
        return 2
    if a.kb % 8 or a.kb < 8:
        print("--kb must be a positive multiple of 8", file=sys.stderr)
        return 2
    set_tvm_threads(tvm, 1)
    dev = tvm.cpu(0)
    side_shape = (a.kb // 8 + 8, 512)
    nbytes = a.kb * 1024 + (2 * (a.kb // 8) * 512 if a.side else 0)
    copies = max(2, int(256e6 // nbytes))
    sets = [
        [
            tvm.runtime.tensor(np.ones((a.kb + 64, 1024), np.uint8), dev),
            tvm.runtime.tensor(np.ones(side_shape, np.uint8), dev),
            tvm.runtime.tensor(np.ones(side_shape, np.uint8), dev),
        ]
        for _ in range(copies)
    ]
    q = tvm.runtime.tensor(np.ones(64, np.int8), dev)
    outs = {n: tvm.runtime.empty((64 + 8 * n * 16,), "int32", dev) for n in a.stores}

    def timed(fn: Any, ops: list[Any], out: Any) -> float:
        t0 = time.thread_time()
        fn(ops[0], q, out, ops[1], ops[2])
        return time.thread_time() - t0

    rows, load = [], [os.getloadavg()[0]]
    for order, ahead, work, stores in itertools.product(a.order, a.ahead, a.work, a.stores):
        func = stream_kernel(a.kb, work, ahead, order == "kernel", a.side, stores)
        fn = tvm.compile(tvm.IRModule({"stream": func}), target=host_target())["stream"]
        out = outs[stores]
        warm = min(timed(fn, sets[0], out) for _ in range(a.reps * copies))
        cold = min(sum(timed(fn, ops, out) for ops in sets) / copies for _ in range(a.reps))
        gbs = f"{nbytes / warm / 1e9:.1f} | {nbytes / cold / 1e9:.1f}"
        rows.append(f"| {order} | {ahead} | {work} | {stores} | {gbs} |")
        load.append(os.getloadavg()[0])
    print(f"`benchmarks/tvm_stream_floor.py {' '.join(sys.argv[1:])}`")
    print(
        f"({a.kb} KB of codes{' + sub-scale streams' if a.side else ''} a call, 1 thread, "
        f"thread CPU time, min of {a.reps}; 1-minute load average {min(load):.1f} to "
        f"{max(load):.1f})\n"
    )
    print(
        "| order | prefetch KB ahead | vpdpbusd per 64 B | stores per KB | warm GB/s | cold GB/s |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
