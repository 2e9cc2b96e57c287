"""Block-quantized matrix products on the GGUF file's own blocks, as TensorIR (TVM).

``y f32[M, N] = x f32[M, K] @ W^T`` where ``W f32[N, K]`` (``nn.Linear`` layout, one GGUF row
per output feature) is never materialized: the kernel reads the file's codes and scales and
dequantizes inside the reduction, so the weights are exactly those of llama.cpp (no
re-quantization). Per block of 32 weights along a row::

    Q4_0   w = d * (q - 8)     q: 4-bit, GGUF nibble order (byte j: low = weight j, high = j+16)
    Q4_1   w = d * q + m       q: 4-bit, same nibble order
    Q8_0   w = d * q           q: int8

:meth:`QWeight.from_gguf` splits each GGUF block into its code bytes (kept bit for bit, in the
file's order) and its float16 scale (and offset), widened to float32 once, exactly, so that
the kernel needs no half-precision support (OpenCL devices without ``cl_khr_fp16``). That costs
2 bytes per 32 weights over the file (Q4_0: 20 instead of 18 bytes a block).

M is the number of rows of a chunk: 1 for plain decoding, k+1 to verify k drafts. One kernel
is compiled per row bucket (:data:`BUCKETS`); a call pads its rows up to the next bucket.
Schedules: :func:`schedule_cpu` (the untuned default: parallel over N; one row uses
:func:`schedule_cpu_lanes`, vectorized along K; more rows decode each weight once for all
rows), :func:`schedule_gpu` (one work item per output feature, for the ``opencl`` target);
tuned schedules come from :mod:`edgespec.kernels.tuning`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.kernels.compiled import tvm_module as _tvm

if TYPE_CHECKING:
    from tvm.ir import IRModule
    from tvm.target import Target
    from tvm.tirx import PrimFunc

    from edgespec.kernels.tuning import Scheduler

#: weights per GGUF block for every format here
BLOCK = 32
#: the row counts a kernel is compiled for; M rows run in the smallest bucket >= M
BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16)
#: name of the compiled TVM function
FUNC_NAME = "qmatmul"


@dataclass(frozen=True)
class QFormat:
    """How one GGUF type stores a block of :data:`BLOCK` weights.

    Attributes:
        name: the GGUF type name ("Q4_0").
        type_size: bytes per block in the file.
        code_bits: 4 (two codes a byte) or 8 (one signed byte a code).
        affine: True when blocks carry an offset ``m`` after the scale ``d``.
        zero: what is subtracted from a 4-bit code (8 for Q4_0, 0 otherwise).
    """

    name: str
    type_size: int
    code_bits: int
    affine: bool
    zero: int

    @property
    def code_offset(self) -> int:
        """Byte offset of the codes inside a block (after d, and m when affine)."""
        return 4 if self.affine else 2

    @property
    def code_dtype(self) -> str:
        """The element type of the ``qs`` operand."""
        return "uint8" if self.code_bits == 4 else "int8"


#: the GGUF types with a kernel here
FORMATS: dict[str, QFormat] = {
    "Q4_0": QFormat("Q4_0", 18, 4, False, 8),
    "Q4_1": QFormat("Q4_1", 20, 4, True, 0),
    "Q8_0": QFormat("Q8_0", 34, 8, False, 0),
}


def get_format(name: str) -> QFormat:
    """The :class:`QFormat` called ``name``, or a one-line error listing the supported ones."""
    fmt = FORMATS.get(name)
    if fmt is None:
        raise EdgespecError(
            f"no quantized matmul kernel for GGUF type {name}; supported: {', '.join(FORMATS)}"
        )
    return fmt


@dataclass(frozen=True)
class QWeight:
    """One GGUF tensor as kernel operands, bit for bit the file's codes.

    Attributes:
        fmt: its :class:`QFormat`.
        qs: the codes in file order: ``uint8[N, K/2]`` (4-bit) or ``int8[N, K]`` (Q8_0).
        d: ``float32[N, K/32]`` the block scales (float16 in the file, widened exactly).
        m: ``float32[N, K/32]`` the block offsets (affine types), else None.
    """

    fmt: QFormat
    qs: np.ndarray
    d: np.ndarray
    m: np.ndarray | None

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, K)``."""
        n, nb = self.d.shape
        return int(n), int(nb) * BLOCK

    @classmethod
    def from_gguf(cls, raw: np.ndarray, qtype: str) -> QWeight:
        """Split a GGUF tensor's blocks into operands.

        Args:
            raw: ``uint8[N, K/32 * type_size]``, the tensor's bytes as ``GGUFReader`` gives
                them (one row per output feature).
            qtype: its GGUF type name, a key of :data:`FORMATS`.
        """
        fmt = get_format(qtype)
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        if raw.ndim != 2 or raw.shape[1] % fmt.type_size:
            raise EdgespecError(
                f"{qtype} tensor bytes must be [N, K/32 * {fmt.type_size}]; got {raw.shape}"
            )
        n = raw.shape[0]
        blocks = raw.reshape(n, -1, fmt.type_size)

        def f16(at: int) -> np.ndarray:
            return blocks[:, :, at : at + 2].copy().view(np.float16)[..., 0].astype(np.float32)

        codes = np.ascontiguousarray(blocks[:, :, fmt.code_offset :].reshape(n, -1))
        if fmt.code_bits == 8:
            codes = codes.view(np.int8)
        return cls(fmt, codes, f16(0), f16(2) if fmt.affine else None)

    def operands(self) -> list[np.ndarray]:
        """The weight operands in kernel argument order: ``qs, d[, m]``."""
        return [self.qs, self.d] + ([] if self.m is None else [self.m])


def qmatmul_key(fmt: QFormat, m_rows: int, n: int, k: int) -> str:
    """The kernel-and-shape key of tuning records: ``qmatmul-Q4_1-m4-n1536-k576``."""
    return f"{FUNC_NAME}-{fmt.name}-m{m_rows}-n{n}-k{k}"


def qmatmul_func(fmt: QFormat, m_rows: int, n: int, k: int) -> PrimFunc:
    """The TensorIR function ``qmatmul(x, qs, d[, m], y)`` for one shape, unscheduled but for
    the dequantization, which is inlined into the reduction block ``y`` (so MetaSchedule and
    the hand schedules start from one block that reads the codes).

    Args:
        fmt: the block format.
        m_rows: M, rows of ``x`` (a bucket).
        n: N, output features.
        k: K, input features (a multiple of 32).
    """
    _tvm()
    from tvm import s_tir, te, tirx

    if k % BLOCK:
        raise EdgespecError(f"K must be a multiple of {BLOCK} for GGUF blocks; got {k}")
    x = te.placeholder((m_rows, k), "float32", name="x")
    qs_shape = (n, k // 2) if fmt.code_bits == 4 else (n, k)
    qs = te.placeholder(qs_shape, fmt.code_dtype, name="qs")
    d = te.placeholder((n, k // BLOCK), "float32", name="d")
    mins = te.placeholder((n, k // BLOCK), "float32", name="m") if fmt.affine else None

    def weight(i: Any, j: Any) -> Any:
        b, r = j // BLOCK, j % BLOCK
        if fmt.code_bits == 4:
            byte = qs[i, b * (BLOCK // 2) + r % (BLOCK // 2)]
            shift = tirx.Cast("uint8", (r // (BLOCK // 2)) * 4)
            code = ((byte >> shift) & tirx.const(15, "uint8")).astype("float32")
        else:
            code = qs[i, j].astype("float32")
        if fmt.zero:
            code = code - tirx.const(float(fmt.zero), "float32")
        w = d[i, b] * code
        return w + mins[i, b] if mins is not None else w

    w = te.compute((n, k), weight, name="w")
    r = te.reduce_axis((0, k), name="k")
    y = te.compute((m_rows, n), lambda i, j: te.sum(x[i, r] * w[j, r], axis=r), name="y")
    args = [x, qs, d] + ([mins] if mins is not None else []) + [y]
    func = te.create_prim_func(args).with_attr("global_symbol", FUNC_NAME)
    sch = s_tir.Schedule(func)
    sch.compute_inline(sch.get_sblock("w"))
    return sch.mod["main"]


def cpu_tile(m_rows: int) -> int:
    """Outputs per parallel task in :func:`schedule_cpu`: the widest of 16, 8, 4 whose
    ``m_rows * tile`` accumulators stay within 160 (wider spills; measured for Q4_1 1536 x 576
    on one core: M=16 takes 2.6 ms with 8, 5.2 ms with 16)."""
    return next(t for t in (16, 8, 4) if m_rows * t <= 160 or t == 4)


def schedule_cpu(func: PrimFunc, tile: int | None = None) -> IRModule:
    """The untuned CPU schedule. One row (plain decoding): :func:`schedule_cpu_lanes`. More
    rows: ``tile`` outputs per parallel task (default :func:`cpu_tile`), the K loop outside
    the M rows so each weight is decoded once for all rows, and the rows and outputs unrolled
    (with the row loop left rolled, M = 8 and 16 ran 7 to 9 times slower than M = 9 here)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    blk = sch.get_sblock("y")
    i, j, r = sch.get_loops(blk)
    m_rows = int(sch.get(i).extent)
    if m_rows == 1:
        return schedule_cpu_lanes(func)
    jo, ji = sch.split(j, [None, tile or cpu_tile(m_rows)])
    ro, ri = sch.split(r, [None, BLOCK])
    sch.reorder(jo, ro, ri, i, ji)
    sch.parallel(jo)
    sch.decompose_reduction(blk, ro)
    sch.unroll(ji)
    sch.unroll(i)
    return sch.mod


def schedule_cpu_lanes(func: PrimFunc, lanes: int = 16, tile: int = 8) -> IRModule:
    """K split into ``lanes`` partial sums (``rfactor``) kept in a local buffer, so the inner
    loop runs over 16 consecutive codes (one block half: contiguous bytes) and LLVM vectorizes
    it; ``tile`` outputs per parallel task. Measured on one core, Q4_1 1536 x 576: M = 1 in
    0.34 ms against 1.0 ms for the row-unrolled schedule, but the codes are decoded again for
    every row (M = 9: 2.9 ms against 1.0 ms), so :func:`schedule_cpu` uses it for M = 1 only.
    A different summation order than the others, inside the same float32 bound."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    blk = sch.get_sblock("y")
    i, j, r = sch.get_loops(blk)
    m_rows = int(sch.get(i).extent)
    _, rv = sch.split(r, [None, lanes])
    rf = sch.rfactor(rv, factor_axis=2)  # y_rf[i, j, lane]
    i2, j2, ro2, rv2 = sch.get_loops(rf)
    jo, ji = sch.split(j2, [None, tile])
    sch.reorder(jo, ro2, ji, i2, rv2)
    sch.parallel(jo)
    sch.decompose_reduction(rf, ro2)
    sch.reverse_compute_at(sch.get_sblock("y"), jo)
    sch.set_scope(rf, 0, "local")
    if m_rows > 1:
        sch.unroll(i2)
    return sch.mod


def schedule_gpu(func: PrimFunc, threads: int = 64) -> IRModule:
    """A GPU schedule (OpenCL): one work item per output feature, ``threads`` per group; each
    loops over the M rows and the K reduction."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    blk = sch.get_sblock("y")
    i, j, r = sch.get_loops(blk)
    bx, tx = sch.split(j, [None, threads])
    sch.reorder(bx, tx, i, r)
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    return sch.mod


def bucket_for(m_rows: int, buckets: Sequence[int] = BUCKETS) -> int:
    """The smallest bucket that holds ``m_rows`` rows."""
    for b in sorted(buckets):
        if b >= m_rows:
            return b
    raise EdgespecError(f"{m_rows} rows exceed the largest kernel bucket ({max(buckets)})")


def cpu_scheduler(func: PrimFunc, target: Target, key: str) -> IRModule:
    """The untuned :data:`Scheduler`: :func:`schedule_cpu` for every key."""
    return schedule_cpu(func)


class QMatmul:
    """``y = x @ W^T`` for one GGUF tensor, compiled with TVM, one kernel per row bucket.

    Args:
        weight: the tensor's operands.
        target: a ``tvm.target.Target`` (default :func:`edgespec.kernels.tuning.host_target`).
        scheduler: makes the scheduled module of each bucket's function (default
            :func:`cpu_scheduler`; tuned: ``tuning.tuned_scheduler(cpu_scheduler)``).
        buckets: the row counts compiled (lazily, on first use).
    """

    def __init__(
        self,
        weight: QWeight,
        *,
        target: Target | None = None,
        scheduler: Scheduler | None = None,
        buckets: Sequence[int] = BUCKETS,
    ) -> None:
        tvm = _tvm()
        from edgespec.kernels.tuning import host_target

        self.weight = weight
        self.target = target if target is not None else host_target()
        self.scheduler: Scheduler = scheduler or cpu_scheduler
        self.buckets = tuple(sorted(buckets))
        self.device = tvm.cpu(0)
        self._ops = [tvm.runtime.tensor(a, self.device) for a in weight.operands()]
        self._built: dict[int, Any] = {}

    def function(self, bucket: int) -> Any:
        """The compiled function for ``bucket`` rows (compiled on first use)."""
        fn = self._built.get(bucket)
        if fn is None:
            tvm = _tvm()
            n, k = self.weight.shape
            fmt = self.weight.fmt
            key = qmatmul_key(fmt, bucket, n, k)
            mod = self.scheduler(qmatmul_func(fmt, bucket, n, k), self.target, key)
            fn = tvm.compile(mod, target=self.target)[FUNC_NAME]
            self._built[bucket] = fn
        return fn

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``x float32[M, K]`` (M <= the largest bucket) -> ``float32[M, N]``."""
        tvm = _tvm()
        m_rows, k = x.shape
        n, k_w = self.weight.shape
        if k != k_w:
            raise EdgespecError(f"x has {k} features but the weight expects {k_w}")
        bucket = bucket_for(m_rows, self.buckets)
        xp = np.zeros((bucket, k), np.float32)
        xp[:m_rows] = x
        y = tvm.runtime.empty((bucket, n), "float32", self.device)
        self.function(bucket)(tvm.runtime.tensor(xp, self.device), *self._ops, y)
        return y.numpy()[:m_rows]
