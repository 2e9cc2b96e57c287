"""The quantized linear layer on int8 activations: integer dot products (AVX512-VNNI).

``y f32[T, N] = x f32[T, K] @ W^T`` for a GGUF tensor ``W`` of a 32-weight-block type (Q4_0,
Q4_1, Q5_0, Q5_1, Q8_0; :data:`FORMATS`), T symbolic, as :mod:`edgespec.kernels.qlinear`
does, but with the activations quantized to int8 per block of 32 first, as llama.cpp's CPU
backend does for these types (its ``Q8_0`` / ``Q8_1`` activation blocks), and each block's
products summed in int32 by ``vpdpbusd`` (64 unsigned weight bytes times 4 signed activation
bytes broadcast to 16 lanes, 16 output features a vector). The graph names these matrices
``"<type>@q8"`` (:func:`q8_format`); :mod:`edgespec.kernels.qlinear` hands them here. The
K-quants (Q4_K, Q5_K, Q6_K and the mixed Q4_K/Q6_K layout) have their own loops, on
activations quantized per 256 as llama.cpp's ``Q8_K``: :mod:`edgespec.kernels.qlinear_q8k`,
with this module's code layout and the float path's scales and sub-scales.

Arithmetic, per row t and block b of 32 (:func:`quantize_rows`, the NumPy reference
:func:`edgespec.kernels.reference.qlinear_q8`)::

    amax = max |x|;  e = 127 / amax (0 if amax = 0);  q[r] = round_half_even(x[r] * e)  int8
    dx = float16(amax / 127) as float32;  qs = sum q (int32);  sx = float16(amax/127 * qs)
    isum[j] = sum_r u[j, r] * q[r] - z * qs      (exact, int32; u = the stored unsigned code)
    y[t, j] = fma(m[j, b], sx, fma(d[j, b] * dx, float(isum[j]), y[t, j]))   over b in order

with ``u - z`` the weight's integer code (4-bit: ``u`` the nibble, ``z`` 8 for Q4_0, else 0;
8-bit codes are stored as ``code + 128``, ``z = 128``, since ``vpdpbusd``'s first operand is
unsigned). ``d * dx`` is exact (two float16 values: 22 significant bits at most); each block
costs two correctly rounded fused multiply-adds (one for non-affine types). Every row is
computed the same way whatever T is, so batched and one-token forwards agree bit for bit.

Layout (:func:`convert`): codes ``uint8[N/tile, K/8, 4*tile]`` for 4-bit types, byte ``4*l +
i`` of row ``kk`` holding weights ``8kk + i`` (low nibble) and ``8kk + 4 + i`` (high) of
output feature ``l`` of the tile: one 64-byte load is 16 features x 4 consecutive weights,
``vpdpbusd``'s operand, with the file's 0.5 bytes a weight. 8-bit types: ``uint8[N/tile, K/4,
4*tile]``, byte ``4*l + i`` of row ``kk`` = weight ``4kk + i`` + 128. Scales and offsets are
:class:`~edgespec.kernels.qlinear.PackedQWeight`'s ``float16[N/tile, K/32, tile]``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.kernels.qlinear import LAYOUTS, MIXED_K, PackedQWeight, get_layout

if TYPE_CHECKING:
    from tvm.tirx import PrimFunc

#: the suffix of a graph format multiplied here ("Q4_1@q8")
SUFFIX = "@q8"
#: the GGUF types with a kernel here: 32-weight blocks (activations as llama.cpp's Q8_0 /
#: Q8_1), and the K-quants with 4- or 8-bit codes (activations as its Q8_K:
#: kernels/qlinear_q8k.py), the mixed Q4_K/Q6_K layout included
FORMATS = tuple(f for f, lay in LAYOUTS.items() if lay.type_size or f == MIXED_K)
#: output features per vector (int32x16)
LANES = 16
#: the offset added to 8-bit codes so that they are unsigned
OFFSET8 = 128


def q8_format(fmt: str) -> str | None:
    """The graph format of a ``fmt`` matrix on int8 activations, or None (no kernel here)."""
    return fmt + SUFFIX if fmt in FORMATS else None


def base_format(fmt: str) -> str:
    """``"Q4_1@q8"`` -> ``"Q4_1"``."""
    if not fmt.endswith(SUFFIX) or fmt[: -len(SUFFIX)] not in FORMATS:
        raise EdgespecError(f"no int8-activation kernel for {fmt}; supported: {FORMATS}")
    return fmt[: -len(SUFFIX)]


def tile_for(n: int) -> int:
    """Output features per tile: 64 (four vectors) or 16."""
    if n % LANES:
        raise EdgespecError(f"{n} output features are not a multiple of {LANES}")
    return 64 if n % 64 == 0 else LANES


def zero_of(fmt: str) -> int:
    """``z``: what the kernel subtracts from a stored unsigned code."""
    lay = get_layout(base_format(fmt))
    return lay.zero if lay.code_bits == 4 else OFFSET8


@dataclass(frozen=True)
class Q8Weight:
    """One GGUF tensor in this kernel's layout (module docstring).

    Attributes:
        fmt: ``"<type>@q8"``.
        ops: ``{"c": uint8[N/tile, K/8 or K/4, 4*tile], "d": float16[N/tile, K/32, tile]
            [, "m": same]}``.
    """

    fmt: str
    ops: dict[str, np.ndarray]

    def operands(self) -> list[np.ndarray]:
        """The kernel operands after ``x``, in :func:`operand_names` order."""
        return list(self.ops.values())

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, K)``."""
        nt, kk, t4 = self.ops["c"].shape
        per = 8 if get_layout(base_format(self.fmt)).code_bits == 4 else 4
        return int(nt * t4 // 4), int(kk * per)

    def codes(self) -> np.ndarray:
        """``int32[N, K]``: the integer codes ``u - z`` (equal to the float path's codes)."""
        n, k = self.shape
        c = self.ops["c"]
        nt, kk, t4 = c.shape
        tile = t4 // 4
        b = c.reshape(nt, kk, tile, 4).transpose(0, 2, 1, 3).reshape(n, kk, 4).astype(np.int32)
        if get_layout(base_format(self.fmt)).code_bits == 4:
            b = np.concatenate([b & 15, b >> 4], axis=2)
        return b.reshape(n, k) - zero_of(self.fmt)

    def scales(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``(d, m)`` as ``float32[N, K/32]`` (``m`` None when not affine)."""

        def untile(a: np.ndarray) -> np.ndarray:
            nt, nb, tile = a.shape
            return a.transpose(0, 2, 1).reshape(nt * tile, nb).astype(np.float32)

        m = self.ops.get("m")
        return untile(self.ops["d"]), None if m is None else untile(m)


def convert(w: PackedQWeight) -> Q8Weight:
    """``w`` (the float path's layout, a type in :data:`FORMATS`) in this kernel's layout."""
    fmt = q8_format(w.fmt)
    if fmt is None:
        raise EdgespecError(f"no int8-activation kernel for {w.fmt}; supported: {FORMATS}")
    code, _, _ = w.parts()
    n, k = w.shape
    tile = tile_for(n)
    if w.ops["c"].shape[2] != tile:
        raise EdgespecError(f"{w.fmt} weight tiled by {w.ops['c'].shape[2]}, expected {tile}")
    u = (code.astype(np.int32) + zero_of(fmt)).astype(np.uint8)  # [N, K]
    if w.layout.code_bits == 4:
        g = u.reshape(n, k // 8, 2, 4)
        u = (g[:, :, 0, :] | (g[:, :, 1, :] << 4)).astype(np.uint8).reshape(n, -1)  # [N, K/2]
    c = u.reshape(n // tile, tile, -1, 4).transpose(0, 2, 1, 3).reshape(n // tile, -1, 4 * tile)
    return Q8Weight(
        fmt, {"c": np.ascontiguousarray(c)} | {p: a for p, a in w.ops.items() if p != "c"}
    )


def operand_names(fmt: str) -> list[str]:
    """The graph parameter suffixes of a matrix in ``fmt``: the float path's
    (:meth:`~edgespec.kernels.qlinear.Layout.parts`)."""
    return ["." + p for p in get_layout(base_format(fmt)).parts()]


def operand_types(fmt: str, K: int, N: int) -> list[tuple[tuple[int, ...], str]]:
    """``(shape, dtype)`` of the operands of an ``N x K`` matrix in ``fmt``."""
    from edgespec.kernels import qlinear

    base = base_format(fmt)
    tile = tile_for(N)
    per = 8 if get_layout(base).code_bits == 4 else 4
    return [((N // tile, K // per, 4 * tile), "uint8"), *qlinear.operand_types(base, K, N)[1:]]


def _vnni(acc: Any, w: Any, q: Any) -> Any:
    """``acc int32x16 + vpdpbusd(w uint8x64, q int8x64)``."""
    from tvm.script import tirx as T

    return T.call_llvm_pure_intrin(
        "int32x16", "llvm.x86.avx512.vpdpbusd.512", acc, T.reinterpret("int8x64", w), q
    )


def kernel(fmt: str, K: int, N: int) -> PrimFunc:
    """``qlinear(x f32[T, K], c, d[, m], y f32[T, N])`` for symbolic T, private (to be added
    to a Relax module); the loops: rows quantized once, then output tiles in parallel,
    blocks in order, rows, the tile's vectors unrolled."""
    from tvm.script import tirx as T

    lay = get_layout(base_format(fmt))
    if lay.sub:
        from edgespec.kernels import qlinear_q8k

        return qlinear_q8k.kernel(fmt, K, N)
    if K % 32:
        raise EdgespecError(f"K must be a multiple of 32 for {fmt}; got {K}")
    tile = tile_for(N)
    nvec, nb, four = tile // LANES, K // 32, lay.code_bits == 4
    steps = 4 if four else 8  # 64-byte loads per vector and block
    per = 8 if four else 4  # weights per byte row
    z = zero_of(fmt)
    affine = lay.affine

    @T.macro
    def body(X: Any, C: Any, D: Any, M: Any, Y: Any, n: Any) -> None:
        Q = T.alloc_buffer((n * K,), "int8")
        Yf = T.decl_buffer((n * N,), "float32", data=Y.data)  # flat: contiguous vectors
        Df = T.decl_buffer((N * nb,), "float16", data=D.data)
        Mf = T.decl_buffer((N * nb,), "float16", data=M.data)
        Q4 = T.decl_buffer((n * (K // 4),), "int32", data=Q.data)
        XD = T.alloc_buffer((n * nb,), "float32")
        XS = T.alloc_buffer((n * nb,), "float32")
        QS = T.alloc_buffer((n * nb,), "int32")
        for t in range(n):
            for b in range(nb):
                amax = T.alloc_local((1,), "float32")
                qsum = T.alloc_local((1,), "int32")
                amax[0] = T.float32(0)
                qsum[0] = 0
                for r in range(32):
                    amax[0] = T.max(amax[0], T.fabs(X[t, b * 32 + r]))
                inv = T.if_then_else(amax[0] > T.float32(0), T.float32(127) / amax[0], T.float32(0))
                for r in range(32):
                    q = T.Cast("int32", T.nearbyint(X[t, b * 32 + r] * inv))
                    Q[t * K + b * 32 + r] = T.Cast("int8", q)
                    qsum[0] = qsum[0] + q
                d32 = amax[0] / T.float32(127)
                XD[t * nb + b] = T.Cast("float32", T.Cast("float16", d32))
                XS[t * nb + b] = T.Cast(
                    "float32", T.Cast("float16", d32 * T.Cast("float32", qsum[0]))
                )
                QS[t * nb + b] = qsum[0]
        for jo in T.parallel(N // tile):
            for t in range(n):
                Yf[T.ramp(t * N + jo * tile, 1, tile)] = T.broadcast(T.float32(0), tile)
            for b in range(nb):
                for t in range(n):
                    for v in T.unroll(nvec):
                        acc = T.alloc_local((LANES,), "int32")
                        acc[T.ramp(0, 1, LANES)] = T.broadcast(-z * QS[t * nb + b], LANES)
                        for s in T.unroll(steps):
                            w = C[jo, b * steps + s, T.ramp(v * 64, 1, 64)]
                            row = t * (K // 4) + b * 8
                            if four:
                                lo = w & T.broadcast(T.uint8(15), 64)
                                hi = w >> T.broadcast(T.uint8(4), 64)
                                q_lo = T.reinterpret("int8x64", T.broadcast(Q4[row + 2 * s], 16))
                                q_hi = T.reinterpret(
                                    "int8x64", T.broadcast(Q4[row + 2 * s + 1], 16)
                                )
                                acc[T.ramp(0, 1, LANES)] = _vnni(acc[T.ramp(0, 1, LANES)], lo, q_lo)
                                acc[T.ramp(0, 1, LANES)] = _vnni(acc[T.ramp(0, 1, LANES)], hi, q_hi)
                            else:
                                q_all = T.reinterpret("int8x64", T.broadcast(Q4[row + s], 16))
                                acc[T.ramp(0, 1, LANES)] = _vnni(acc[T.ramp(0, 1, LANES)], w, q_all)
                        lanes = T.ramp(t * N + jo * tile + v * LANES, 1, LANES)
                        dd = T.Cast(
                            "float32x16", Df[T.ramp((jo * nb + b) * tile + v * LANES, 1, LANES)]
                        )
                        dx = dd * T.broadcast(XD[t * nb + b], LANES)
                        yv = T.call_llvm_pure_intrin(
                            "float32x16",
                            "llvm.fma.v16f32",
                            dx,
                            T.Cast("float32x16", acc[T.ramp(0, 1, LANES)]),
                            Yf[lanes],
                        )
                        if affine:
                            mm = T.Cast(
                                "float32x16", Mf[T.ramp((jo * nb + b) * tile + v * LANES, 1, LANES)]
                            )
                            Yf[lanes] = T.call_llvm_pure_intrin(
                                "float32x16",
                                "llvm.fma.v16f32",
                                mm,
                                T.broadcast(XS[t * nb + b], LANES),
                                yv,
                            )
                        else:
                            Yf[lanes] = yv

    if affine:

        @T.prim_func(private=True)
        def qlinear(x_h: T.handle, c_h: T.handle, d_h: T.handle, m_h: T.handle, y_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            n = T.int64()
            X = T.match_buffer(x_h, (n, K), "float32")
            C = T.match_buffer(c_h, (N // tile, K // per, 4 * tile), "uint8")
            D = T.match_buffer(d_h, (N // tile, nb, tile), "float16")
            M = T.match_buffer(m_h, (N // tile, nb, tile), "float16")
            Y = T.match_buffer(y_h, (n, N), "float32")
            body(X, C, D, M, Y, n)

        return qlinear

    @T.prim_func(private=True)
    def qlinear_d(x_h: T.handle, c_h: T.handle, d_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        X = T.match_buffer(x_h, (n, K), "float32")
        C = T.match_buffer(c_h, (N // tile, K // per, 4 * tile), "uint8")
        D = T.match_buffer(d_h, (N // tile, nb, tile), "float16")
        Y = T.match_buffer(y_h, (n, N), "float32")
        body(X, C, D, D, Y, n)

    return qlinear_d


@functools.cache
def cpu_has_vnni() -> bool:
    """Whether this machine's CPU has AVX512-VNNI (``/proc/cpuinfo``, read once; False where
    unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512_vnni" in f.read()
    except OSError:
        return False


def prefer(w: PackedQWeight) -> PackedQWeight | Q8Weight:
    """``w`` on int8 activations where this module has its type and shape (N a multiple of
    16), else ``w`` itself (the float32-activation kernel)."""
    n, _ = w.shape
    if q8_format(w.fmt) is None or n % LANES:
        return w
    return convert(w)
