"""Launching TVM-generated OpenCL C through ``pyopencl`` (the mobile-GPU path, executed).

The apache-tvm wheel generates OpenCL C for ``Target({"kind": "opencl", "host": {"kind":
"llvm"}})`` but its runtime has no OpenCL (``tvm.runtime.enabled("opencl")`` is False), so the
generated kernel source is taken from the built module and compiled and launched here with
pyopencl, on whatever OpenCL driver is installed: a phone's GPU driver, or PoCL (Debian
``pocl-opencl-icd``), which runs OpenCL on the CPU. On PoCL this checks correctness, not speed.

The kernels are built with :func:`edgespec.kernels.qmatmul.schedule_gpu`: one work item per
output feature, ``threads`` per work group, so the launch is ``global = ceil(N / threads) *
threads``, ``local = threads``. TVM orders a kernel's buffer parameters by name; they are read
back from the source (``x_ptr`` is the operand ``x``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgespec.errors import EdgespecError, missing_extra
from edgespec.kernels.qmatmul import BUCKETS, QWeight, bucket_for, qmatmul_func, schedule_gpu

#: the TVM target whose device code is OpenCL C
OPENCL_TARGET = {"kind": "opencl", "host": {"kind": "llvm"}}
_KERNEL = re.compile(r"__kernel\s+void\s+(\w+)\s*\(([^)]*)\)\s*\{")
_PARAM = re.compile(r"(\w+)_ptr\s*$")


def _cl() -> Any:
    try:
        import pyopencl
    except ImportError as e:  # pragma: no cover - depends on the install
        raise missing_extra("pyopencl", "tvm") from e
    return pyopencl


def cl_device() -> Any:
    """The first OpenCL device of the first platform, or one line saying what is missing."""
    cl = _cl()
    try:
        platforms = cl.get_platforms()
    except cl.Error:  # the ICD loader found no platform (PLATFORM_NOT_FOUND_KHR)
        platforms = []
    devices = [d for p in platforms for d in p.get_devices()]
    if not devices:
        raise EdgespecError(
            "no OpenCL device: no ICD driver is registered in /etc/OpenCL/vendors; install "
            "your GPU's OpenCL driver, or PoCL to run on the CPU (Debian: apt-get install "
            "pocl-opencl-icd; ./install.sh does it)"
        )
    return devices[0]


@dataclass(frozen=True)
class OpenCLKernel:
    """One generated kernel: its OpenCL C, entry name and buffer parameters in order.

    Attributes:
        source: the OpenCL C source TVM generated.
        name: the ``__kernel`` function's name.
        params: operand names in parameter order (``["d", "m", "qs", "x", "y"]``).
        global_size: work items along dimension 0.
        local_size: work items per group.
    """

    source: str
    name: str
    params: list[str]
    global_size: int
    local_size: int


def generate(weight: QWeight, m_rows: int, threads: int = 64) -> OpenCLKernel:
    """TVM's OpenCL C for ``qmatmul`` of ``weight`` with ``m_rows`` rows."""
    from edgespec.kernels.compiled import tvm_module

    tvm = tvm_module()
    from tvm.target import Target

    n, k = weight.shape
    mod = schedule_gpu(qmatmul_func(weight.fmt, m_rows, n, k), threads=threads)
    lib = tvm.compile(mod, target=Target(OPENCL_TARGET))
    source = str(lib.mod.imports[0].inspect_source())
    found = _KERNEL.search(source)
    if found is None:
        raise EdgespecError("TVM's OpenCL output has no __kernel function")
    params = []
    for p in found.group(2).split(","):
        name = _PARAM.search(p.strip())
        if name is None:
            raise EdgespecError(f"unexpected OpenCL kernel parameter '{p.strip()}'")
        params.append(name.group(1))
    groups = -(-n // threads)
    return OpenCLKernel(source, found.group(1), params, groups * threads, threads)


class OpenCLQMatmul:
    """``y = x @ W^T`` for one GGUF tensor, TVM's OpenCL kernel launched with pyopencl.

    Same interface as :class:`edgespec.kernels.qmatmul.QMatmul`.

    Args:
        weight: the tensor's operands (copied to the device once).
        buckets: the row counts compiled (lazily).
        threads: work items per group.
        device: a ``pyopencl.Device`` (default :func:`cl_device`).
    """

    def __init__(
        self,
        weight: QWeight,
        *,
        buckets: Sequence[int] = BUCKETS,
        threads: int = 64,
        device: Any = None,
    ) -> None:
        cl = _cl()
        self.weight = weight
        self.buckets = tuple(sorted(buckets))
        self.threads = threads
        self.device = device if device is not None else cl_device()
        self.context = cl.Context(devices=[self.device])
        self.queue = cl.CommandQueue(self.context)
        ro = cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR
        names = ["qs", "d"] + ([] if weight.m is None else ["m"])
        self._weights = {
            name: cl.Buffer(self.context, ro, hostbuf=np.ascontiguousarray(a))
            for name, a in zip(names, weight.operands(), strict=True)
        }
        self._built: dict[int, tuple[OpenCLKernel, Any]] = {}

    def kernel(self, bucket: int) -> tuple[OpenCLKernel, Any]:
        """The generated kernel for ``bucket`` rows and its compiled pyopencl kernel."""
        if bucket not in self._built:
            cl = _cl()
            gen = generate(self.weight, bucket, self.threads)
            program = cl.Program(self.context, gen.source).build()
            self._built[bucket] = (gen, getattr(program, gen.name))
        return self._built[bucket]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``x float32[M, K]`` -> ``float32[M, N]``."""
        cl = _cl()
        m_rows, k = x.shape
        n, k_w = self.weight.shape
        if k != k_w:
            raise EdgespecError(f"x has {k} features but the weight expects {k_w}")
        bucket = bucket_for(m_rows, self.buckets)
        gen, kern = self.kernel(bucket)
        xp = np.zeros((bucket, k), np.float32)
        xp[:m_rows] = x
        mf = cl.mem_flags
        bufs = dict(self._weights)
        bufs["x"] = cl.Buffer(self.context, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=xp)
        y = np.empty((bucket, n), np.float32)
        bufs["y"] = cl.Buffer(self.context, mf.WRITE_ONLY, y.nbytes)
        kern(self.queue, (gen.global_size,), (gen.local_size,), *[bufs[p] for p in gen.params])
        cl.enqueue_copy(self.queue, y, bufs["y"]).wait()
        return y[:m_rows]
