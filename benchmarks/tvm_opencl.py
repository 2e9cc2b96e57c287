"""The tvm backend's OpenCL path beside its llvm build: logits agreement and step time.

Loads one model twice in one process, ``--device opencl`` (TVM's OpenCL kernels launched with
pyopencl on the first OpenCL device: PoCL on a machine without a GPU driver) and ``--device
cpu`` (the llvm build of the same ``--weights``), feeds both the same prompt and then greedy
steps on the llvm build's tokens, interleaved, and prints per step the max |logit diff|,
whether the top-1 agrees, the llvm build's top-2 margin and the two step times; then
medians. First it prints the bytes of weights the OpenCL model holds on the device and how
many matrices run on the file's blocks. On PoCL the times say what a CPU driver costs, not
what a phone's GPU would do.

    .venv/bin/python benchmarks/tvm_opencl.py --model smollm2-135m --steps 8 [--weights gguf-exact]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from edgespec.runtimes.base import LoadOptions, ModelSource
from edgespec.runtimes.tvm_backend import TvmBackend
from edgespec.zoo import verify

PROMPT = [1, 504, 3458, 282, 4649, 314, 2411, 30, 378, 3458]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="zoo name")
    ap.add_argument("--steps", type=int, default=8, help="greedy steps after the prompt")
    ap.add_argument("--threads", type=int, default=None, help="llvm build's threads")
    ap.add_argument("--weights", default="fp32", help="fp32 or gguf-exact (both devices)")
    args = ap.parse_args()
    path = verify(args.model, progress=False)
    src = ModelSource("gguf", path, args.model)

    def load(device: str) -> object:
        opts = LoadOptions(
            n_ctx=64, progress=False, device=device, weights=args.weights, n_threads=args.threads
        )
        return TvmBackend.load(src, opts)

    cl, cpu = load("opencl"), load("cpu")
    print(f"opencl device: {cl.info.extra['opencl_device']}; load average {os.getloadavg()[0]:.1f}")
    blocks = cl.info.extra.get("quantized_matrices", "none")
    print(f"weights on the device: {cl.weight_bytes() / 1e6:.1f} MB; matrices on blocks: {blocks}")
    a, b = cl.forward(PROMPT), cpu.forward(PROMPT)
    print(f"prompt ({len(PROMPT)} tokens): max |logit diff| {np.abs(a - b).max():.3g}")
    tok = int(b[-1].argmax())
    diffs, t_cl, t_cpu = [], [], []
    print("| step | token | max abs diff | top-1 equal | llvm top-2 margin | opencl ms | llvm ms |")
    print("|---|---|---|---|---|---|---|")
    for step in range(args.steps):
        t0 = time.perf_counter()
        a = cl.forward([tok], all_logits=False)[0]
        t1 = time.perf_counter()
        b = cpu.forward([tok], all_logits=False)[0]
        t2 = time.perf_counter()
        top2 = np.sort(b)[-2:]
        diffs.append(float(np.abs(a - b).max()))
        t_cl.append((t1 - t0) * 1e3)
        t_cpu.append((t2 - t1) * 1e3)
        same = int(a.argmax()) == int(b.argmax())
        print(
            f"| {step} | {tok} | {diffs[-1]:.3g} | {same} | {top2[1] - top2[0]:.3g} | "
            f"{t_cl[-1]:.1f} | {t_cpu[-1]:.1f} |"
        )
        tok = int(b.argmax())
    med_cl, med_cpu = statistics.median(t_cl), statistics.median(t_cpu)
    print(
        f"median step: opencl {med_cl:.1f} ms, llvm {med_cpu:.1f} ms "
        f"({med_cl / med_cpu:.1f}x); max |logit diff| over steps {max(diffs):.3g}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
