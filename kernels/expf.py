"""``exp`` of float32 vectors in TensorIR, bit for bit glibc's ``expf``, without a libm call.

TVM lowers ``T.exp`` on the llvm target to LLVM's ``exp`` intrinsic, which a vectorized loop
scalarizes into one call of libm's ``expf`` per value (``expf@PLT`` in the compiled graph).
At a 9-token forward the attention's softmax and ``silu_mul``'s sigmoid make hundreds of
thousands of those calls. :func:`expf` computes the same function with vector instructions:
the algorithm of glibc's ``expf`` (since 2.28, from Arm's optimized-routines; musl and
bionic use it too) as the FMA build glibc picks on x86-64 CPUs with FMA runs it:

    k = round(x * 32 / ln 2) (the 0x1.8p52 shift trick, one FMA), r = x * 32 / ln 2 - k
    (one FMA), exp(x) = 2^(k/32) * (1 + C2 r + C1 r^2 + C0 r^3)  (in float64, rounded once)

with ``2^(k/32)`` from a 32-entry table and the exponent bits of ``k``. Every step is an
IEEE float64 operation or an explicit ``llvm.fma``, so the result is the same on any CPU,
whether LLVM vectorizes it or not; that it equals the libm's is tested value by value
(tests/kernels/test_expf.py: every float32 at the edges of its branches, softmax- and
SiLU-like inputs, a stride over all bit patterns; all 2^32 once, with
``benchmarks/expf_exhaustive.py``), so a graph built with it computes bit for bit what it did
with libm's.

The table lookup is the one step with a choice of instructions (:data:`LOOKUPS`): on CPUs
with AVX-512, two ``vpermi2pd`` (16 entries each) and a blend, in registers; elsewhere a
load per lane from a 32-entry buffer the kernel fills (:func:`table_filler`) once.

Shapes: :func:`expf` takes and returns a ``float32xW`` expression (W = 1 or a multiple of 8).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from decimal import Decimal, localcontext
from typing import Any

from edgespec.kernels.compiled import BuildChoice, stack_buffer

#: table bits: 2^(k/N) for the low bits of k
N = 32
#: the lanes of one float64 vector the lookup works on (AVX-512: 8)
DLANES = 8
INV_LN2_N = float.fromhex("0x1.71547652b82fep+0") * N
SHIFT = float.fromhex("0x1.8p+52")
#: the cubic on r (already divided by N, N^2, N^3)
C0 = float.fromhex("0x1.c6af84b912394p-5") / N / N / N
C1 = float.fromhex("0x1.ebfce50fac4f3p-3") / N / N
C2 = float.fromhex("0x1.62e42ff0c52d6p-1") / N
#: below: 0 (exp underflows float32); above: +inf
UNDERFLOW = float.fromhex("-0x1.9fe368p6")
OVERFLOW = float.fromhex("0x1.62e42ep6")


def _table() -> list[int]:
    """``TABLE[i]``: the bits of 2^(i/N) rounded to float64, less ``i << 47`` (the exponent
    bits that ``k``'s shift adds back). Computed with 60 decimal digits, then rounded once."""
    out = []
    with localcontext() as ctx:
        ctx.prec = 60
        ln2 = Decimal(2).ln()
        for i in range(N):
            bits = struct.unpack("<Q", struct.pack("<d", float((ln2 * i / N).exp())))[0]
            out.append(bits - (i << (52 - 5)))
    return out


TABLE = _table()


def _as_f64(bits: int) -> float:
    return float(struct.unpack("<d", struct.pack("<Q", bits))[0])


def _vec(v: Any, lanes: int) -> Any:
    from tvm.script import tirx as T

    return v if lanes == 1 else T.Broadcast(v, lanes)


def _fma(a: Any, b: Any, c: Any, lanes: int) -> Any:
    from tvm.script import tirx as T

    dtype = "float64" if lanes == 1 else f"float64x{lanes}"
    return T.call_llvm_pure_intrin(dtype, "llvm.fma", a, b, c)


def _lookup_generic(ki: Any, table: Any, lanes: int) -> Any:
    """``uint64xlanes``: ``TABLE[ki & 31]``, one load per lane from ``table``
    (:func:`table_filler`)."""
    from tvm.script import tirx as T

    idx = ki & _vec(T.uint64(N - 1), lanes)
    return table[T.Cast("int64" if lanes == 1 else f"int64x{lanes}", idx)]


def _lookup_avx512(ki: Any, table: Any, lanes: int) -> Any:
    """``uint64x8``: ``TABLE[ki & 31]`` with two ``vpermi2pd`` (each picks from 16 entries by
    the index's low 4 bits) and a blend on its bit 4; ``table`` is not read."""
    from tvm import tirx
    from tvm.script import tirx as T

    def entries(lo: int) -> Any:
        vals = [T.float64(_as_f64(b)) for b in TABLE[lo : lo + DLANES]]
        return tirx.Shuffle(vals, [T.int32(i) for i in range(DLANES)])

    idx = T.reinterpret(f"int64x{DLANES}", ki)
    pick = [
        T.call_llvm_pure_intrin(
            f"float64x{DLANES}",
            "llvm.x86.avx512.vpermi2var.pd.512",
            entries(lo),
            idx,
            entries(lo + DLANES),
        )
        for lo in (0, 2 * DLANES)
    ]
    high = (ki & T.Broadcast(T.uint64(16), DLANES)) != T.Broadcast(T.uint64(0), DLANES)
    return T.reinterpret(f"uint64x{DLANES}", T.Select(high, pick[1], pick[0]))


#: how the table entry of each lane is found (see the module docstring)
LOOKUPS: dict[str, Callable[[Any, Any, int], Any]] = {
    "avx512": _lookup_avx512,
    "generic": _lookup_generic,
}
#: the CPU flag each lookup needs ("" for none)
FLAGS = {"avx512": "avx512f", "generic": ""}


def cpu_has(name: str) -> bool:
    """Whether this CPU runs the lookup ``name`` (:data:`LOOKUPS`)."""
    from edgespec.kernels.qlinear_q8 import _cpu_flags

    return not FLAGS[name] or FLAGS[name] in _cpu_flags()


#: the lookup kernels built now use: the first of :data:`LOOKUPS` this CPU runs, unless a
#: ``building_with(name)`` block overrides it (the same values either way)
LOOKUP_CHOICE = BuildChoice(
    "exp table lookup", LOOKUPS, lambda: next(k for k in LOOKUPS if cpu_has(k))
)
lookup = LOOKUP_CHOICE.current
building_with = LOOKUP_CHOICE.building_with


def _entry(i: Any) -> Any:
    """``TABLE[i]`` for a TIR index ``i`` (a chain of selects: the table has no constant
    buffers in this TVM)."""
    from tvm.script import tirx as T

    e = T.uint64(TABLE[-1])
    for j in range(N - 2, -1, -1):
        e = T.Select(i == j, T.uint64(TABLE[j]), e)
    return e


def table_filler() -> Any:
    """A ``T.macro`` ``fill(table)`` that fills ``table`` (``uint64[32]``, e.g. a
    :func:`~edgespec.kernels.compiled.stack_buffer`) with :data:`TABLE`; a kernel calls it
    before :func:`expf` (the AVX-512 lookup does not read it, and LLVM drops the stores)."""
    from tvm.script import tirx as T

    @T.macro
    def fill(table: Any) -> None:
        for i in T.unroll(N):  # unrolled, each select chain folds to its constant
            table[i] = _entry(i)

    return fill


def _core(xd: Any, table: Any, lanes: int, find: Callable[[Any, Any, int], Any]) -> Any:
    """``float64xlanes``: exp of the float64 ``xd`` before the final rounding (glibc's
    steps, the FMA build)."""
    from tvm.script import tirx as T

    def c(v: float) -> Any:
        return _vec(T.float64(v), lanes)

    u64 = "uint64" if lanes == 1 else f"uint64x{lanes}"
    f64 = "float64" if lanes == 1 else f"float64x{lanes}"
    kd = _fma(c(INV_LN2_N), xd, c(SHIFT), lanes)
    ki = T.reinterpret(u64, kd)
    r = _fma(c(INV_LN2_N), xd, -(kd - c(SHIFT)), lanes)
    s = T.reinterpret(f64, find(ki, table, lanes) + (ki << _vec(T.uint64(52 - 5), lanes)))
    y = _fma(_fma(c(C0), r, c(C1), lanes), r * r, _fma(c(C2), r, c(1.0), lanes), lanes)
    return y * s


def expf(x: Any, table: Any, lanes: int = 1) -> Any:
    """``float32xlanes``: ``exp(x)`` of the ``float32xlanes`` expression ``x`` (lanes = 1 or a
    multiple of 8), bit for bit glibc's ``expf`` (NaN in, NaN out; -inf in, 0 out).
    ``table``: the kernel's :func:`table_filler` buffer."""
    from tvm import tirx
    from tvm.script import tirx as T

    # the generic lookup takes any width; the others one float64 vector (DLANES) at a time
    name = lookup() if lanes % DLANES == 0 else "generic"
    find: Callable[[Any, Any, int], Any] = LOOKUPS[name]
    width = lanes if name == "generic" else DLANES
    parts = []
    for lo in range(0, lanes, width):
        part = x if width == lanes else tirx.Shuffle([x], [T.int32(lo + i) for i in range(width)])
        xd = T.Cast("float64" if width == 1 else f"float64x{width}", part)
        core = _core(xd, table, width, find)
        parts.append(T.Cast("float32" if width == 1 else f"float32x{width}", core))
    v = parts[0] if len(parts) == 1 else tirx.Shuffle(parts, [T.int32(i) for i in range(lanes)])
    zero, inf = _vec(T.float32(0), lanes), _vec(T.float32(math.inf), lanes)
    return T.Select(
        x < _vec(T.float32(UNDERFLOW), lanes),
        zero,
        T.Select(x > _vec(T.float32(OVERFLOW), lanes), inf, v),
    )


def exp_func(libm: bool = False) -> Any:
    """A TIR function ``main(x float32[n], y float32[n])``: ``y = exp(x)``, n a multiple of 16,
    with :func:`expf` (built with :func:`lookup`'s lookup), or with ``T.exp`` where ``libm``
    (a call of the C library's ``expf`` per value: the reference); for tests and benchmarks."""
    from tvm.script import tirx as T

    fill = table_filler()
    W = 16

    @T.prim_func
    def main(var_x: T.handle, var_y: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(var_x, (n,), "float32")
        y = T.match_buffer(var_y, (n,), "float32")
        tab = stack_buffer((N,), "uint64")
        fill(tab)
        for io in range(n // W):
            if libm:
                for i in T.vectorized(W):
                    y[io * W + i] = T.exp(x[io * W + i])
            else:
                y[T.ramp(io * W, 1, W)] = expf(x[T.ramp(io * W, 1, W)], tab, W)

    return main
