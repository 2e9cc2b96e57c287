"""The quantized linear layer of the ``tvm`` backend's graph: GGUF blocks, symbolic rows.

``y f32[T, N] = x f32[T, K] @ W^T`` for a GGUF tensor ``W`` of type Q4_0, Q4_1 or Q8_0
(:data:`edgespec.kernels.qmatmul.FORMATS`), with T a ``tir.Var`` so that one compiled
function serves prefill, plain decoding (T = 1) and verification (T = k+1) inside the Relax
graph (``call_tir``). The weights are the file's own: per block of 32 weights along a row,
``w = d * c + m`` with the file's scale ``d`` and offset ``m`` (float16, widened exactly) and
the integer code ``c`` (Q4_0: ``q - 8``, so ``m = 0``; Q4_1: ``q``; Q8_0: ``q``, ``m = 0``),
i.e. the values llama.cpp dequantizes.

Layout (:func:`pack`, once at load): the file's bytes, tiled like the fp32 graph's matmul so
that a tile's codes are one contiguous stream and its ``tile`` output features are the
vector lanes: codes ``uint8[N/tile, K/2, tile]`` (4-bit, the file's nibble order) or
``int8[N/tile, K, tile]`` (Q8_0), scales and offsets ``float16[N/tile, K/32, tile]``. As
many bytes as the file (Q4_1: 0.625 bytes a weight, float32 4): plain decoding streams every
weight once per token, so bytes are time (widening the codes to one byte each at load, and
the scales to float32, made smollm2's one-token forward about twice as slow).

The block scale is factored out of the inner sum, as llama.cpp does::

    y[t, j] = sum_b ( d[j, b] * sum_r x[t, 32b+r] * c[j, 32b+r]  +  m[j, b] * xs[t, b] )
    xs[t, b] = sum_r x[t, 32b+r]

Loops (:func:`qlinear_kernel`): output tiles in parallel, blocks in order; per block the
tile's ``32 x tile`` codes are widened to float32 once into a local buffer (8 KB, in L1),
then for each row the 32 codes with the tile's features vectorized (one FMA per weight and
row). Measured on one core against the fp32 graph's matmul (ad-hoc side-by-side, smollm2
shapes, load average 1 to 3): Q4_1 3072 x 576 at T = 1 0.10 ms (fp32 0.35 to 0.70 ms), T = 9
0.77 ms; widening inside the row loop instead took 0.12 to 0.33 ms at T = 1 and 0.83 to
1.7 ms at T = 9. Each tile is streamed once for all T rows, and
each row's sums run in the same order whatever T is: batched and one-token forwards agree bit
for bit (tested), which speculative decoding's greedy contract needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.kernels.qmatmul import BLOCK, QWeight, get_format

if TYPE_CHECKING:
    from tvm.tirx import PrimFunc

f32 = "float32"
#: output features per tile (the vector lanes of one FMA group); falls back to 16, then 1
TILE = 64


def tile_for(n: int) -> int:
    """Output features per tile for ``n`` outputs: the widest of 64, 16, 1 dividing ``n``."""
    return next(f for f in (TILE, 16, 1) if n % f == 0)


@dataclass(frozen=True)
class PackedQWeight:
    """One GGUF tensor in the graph's layout (:func:`pack`): the file's bytes, tiled.

    Attributes:
        fmt: the GGUF type name ("Q4_1").
        c: the codes, ``c[j // tile, ..., j % tile]`` for output feature j: 4-bit types
            ``uint8[N/tile, K/2, tile]``, the file's bytes (byte ``16b + i`` of a row holds
            weight ``32b + i`` low and ``32b + i + 16`` high); Q8_0 ``int8[N/tile, K, tile]``.
        d: ``float16[N/tile, K/32, tile]`` block scales, the file's.
        m: ``float16[N/tile, K/32, tile]`` block offsets (Q4_1), else None.
    """

    fmt: str
    c: np.ndarray
    d: np.ndarray
    m: np.ndarray | None

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, K)``."""
        nt, nb, tile = self.d.shape
        return int(nt * tile), int(nb * BLOCK)

    def operands(self) -> list[np.ndarray]:
        """The kernel operands after ``x``: ``c, d[, m]``."""
        return [self.c, self.d] + ([] if self.m is None else [self.m])

    def parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(code, d, m)``, each ``float32[N, K]`` per weight (``m`` zeros when not affine)."""
        nt, nb, tile = self.d.shape
        c: np.ndarray = self.c.transpose(0, 2, 1).reshape(nt * tile, -1)
        if get_format(self.fmt).code_bits == 4:
            b = c.reshape(nt * tile, nb, BLOCK // 2)
            c = np.concatenate([b & 15, b >> 4], axis=2).reshape(nt * tile, nb * BLOCK)
        code = c.astype(np.float32) - get_format(self.fmt).zero

        def per_weight(a: np.ndarray | None) -> np.ndarray:
            if a is None:
                return np.zeros_like(code)
            return np.repeat(a.transpose(0, 2, 1).reshape(nt * tile, nb), BLOCK, axis=1)

        return code, per_weight(self.d.astype(np.float32)), per_weight(self.m)

    def dequantize(self) -> np.ndarray:
        """``float32[N, K]``: ``d * code + m`` per weight (the values the kernel multiplies;
        equal bit for bit to ``gguf.quants.dequantize`` of the file's tensor)."""
        code, d, m = self.parts()
        return d * code + m if self.m is not None else d * code


def qlinear_bound(x: np.ndarray, w: PackedQWeight) -> np.ndarray:
    """The float32 error bound of :func:`qlinear_kernel`, ``float64[T, N]``.

    Per block the kernel sums 32 products ``x * code`` (``gamma_32 * sum |x| |code|``, Higham
    eq. 3.5) and 32 ``x`` (``gamma_32 * sum |x|``), scales them by ``d`` and ``m`` (one ``u``
    each, then one more for their sum), and sums the K/32 block terms (``gamma_{K/32}``). To
    first order the result is within ``gamma_{K/32 + 34} * (|x| @ (|d code| + |m|)^T)`` of
    the exact product with the dequantized weights (``|d code| + |m| >= |w|``).
    """
    code, d, m = w.parts()
    _, k = w.shape
    n = k // BLOCK + BLOCK + 2
    u = 2.0**-24
    mag = np.abs(d.astype(np.float64) * code) + np.abs(m.astype(np.float64))
    return n * u / (1 - n * u) * (np.abs(np.asarray(x, dtype=np.float64)) @ mag.T)


def operand_types(fmt: str, K: int, N: int) -> list[tuple[tuple[int, ...], str]]:
    """``(shape, dtype)`` of the operands ``c, d[, m]`` of an ``N x K`` matrix in ``fmt``."""
    q, tile = get_format(fmt), tile_for(N)
    c: tuple[tuple[int, ...], str] = (
        ((N // tile, K // 2, tile), "uint8") if q.code_bits == 4 else ((N // tile, K, tile), "int8")
    )
    scale: tuple[tuple[int, ...], str] = ((N // tile, K // BLOCK, tile), "float16")
    return [c, scale] + ([scale] if q.affine else [])


def pack(w: QWeight, tile: int | None = None) -> PackedQWeight:
    """``w`` (rows = output features, the file's order) in the graph's tiled layout."""
    n, _ = w.shape
    tile = tile or tile_for(n)
    if n % tile:
        raise EdgespecError(f"{n} output features are not a multiple of the tile {tile}")

    def tiled(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.reshape(n // tile, tile, a.shape[1]).transpose(0, 2, 1))

    def f16(a: np.ndarray) -> np.ndarray:  # widened from float16 by QWeight: exact back
        return tiled(a.astype(np.float16))

    m = f16(w.m) if w.m is not None else None
    return PackedQWeight(w.fmt.name, tiled(w.qs), f16(w.d), m)


def from_gguf(raw: np.ndarray, qtype: str, tile: int | None = None) -> PackedQWeight:
    """Pack a GGUF tensor's bytes ``uint8[N, K/32 * type_size]`` (one row per output)."""
    return pack(QWeight.from_gguf(raw, qtype), tile)


def concat(parts: list[QWeight]) -> QWeight:
    """GGUF tensors of one type and one K stacked along N (rows): the fused QKV and gate/up
    projections, before :func:`pack`."""
    if len({p.fmt.name for p in parts}) != 1 or len({p.shape[1] for p in parts}) != 1:
        raise EdgespecError("fused quantized weights need one GGUF type and one K")
    m = [p.m for p in parts if p.m is not None]
    return QWeight(
        parts[0].fmt,
        np.concatenate([p.qs for p in parts]),
        np.concatenate([p.d for p in parts]),
        np.concatenate(m) if m else None,
    )


def qlinear_kernel(fmt: str, K: int, N: int) -> PrimFunc:
    """``qlinear(x f32[T, K], c, d[, m], y f32[T, N])`` for symbolic T (see the module
    docstring for the loops), private (to be added to a Relax module)."""
    mod = schedule_qlinear(qlinear_func(fmt, K, N))
    return mod["main"].with_attr("tirx.noalias", True).without_attr("global_symbol")


def qlinear_func(fmt: str, K: int, N: int, rows: int | None = None) -> PrimFunc:
    """The unscheduled TensorIR of :func:`qlinear_kernel` (blocks ``cf``: a code widened to
    float32, ``s``: block sums, ``xs``: block sums of ``x`` (affine types), ``y``), for a
    symbolic row count, or ``rows`` rows (a static shape MetaSchedule can tune)."""
    from tvm import te, tirx

    q = get_format(fmt)
    affine = q.affine
    if K % BLOCK:
        raise EdgespecError(f"K must be a multiple of {BLOCK} for GGUF blocks; got {K}")
    tile, nb = tile_for(N), K // BLOCK
    n = tirx.Var("T", "int64") if rows is None else rows
    x = te.placeholder((n, K), "float32", name="x")
    half = BLOCK // 2
    if q.code_bits == 4:
        c = te.placeholder((N // tile, K // 2, tile), "uint8", name="c")

        def code(a: Any, k: Any, lane: Any) -> Any:
            byte = c[a, k // BLOCK * half + k % half, lane]
            nib = (byte >> ((k % BLOCK // half) * 4).astype("uint8")) & tirx.const(15, "uint8")
            return nib.astype("float32") - tirx.const(float(q.zero), "float32")

    else:
        c = te.placeholder((N // tile, K, tile), "int8", name="c")

        def code(a: Any, k: Any, lane: Any) -> Any:
            return c[a, k, lane].astype("float32")

    d = te.placeholder((N // tile, nb, tile), "float16", name="d")
    cf = te.compute((N // tile, K, tile), code, name="cf")
    r = te.reduce_axis((0, BLOCK), name="r")
    s = te.compute(
        (n, N, nb),
        lambda t, j, b: te.sum(
            x[t, b * BLOCK + r] * cf[j // tile, b * BLOCK + r, j % tile], axis=r
        ),
        name="s",
    )
    bb = te.reduce_axis((0, nb), name="b")
    args: list[Any] = [x, c, d]
    if affine:
        m = te.placeholder((N // tile, nb, tile), "float16", name="m")
        r2 = te.reduce_axis((0, BLOCK), name="r2")
        xs = te.compute((n, nb), lambda t, b: te.sum(x[t, b * BLOCK + r2], axis=r2), name="xs")
        y = te.compute(
            (n, N),
            lambda t, j: te.sum(
                d[j // tile, bb, j % tile].astype(f32) * s[t, j, bb]
                + m[j // tile, bb, j % tile].astype(f32) * xs[t, bb],
                axis=bb,
            ),
            name="y",
        )
        args.append(m)
    else:
        y = te.compute(
            (n, N),
            lambda t, j: te.sum(d[j // tile, bb, j % tile].astype(f32) * s[t, j, bb], axis=bb),
            name="y",
        )
    return te.create_prim_func([*args, y]).with_attr("global_symbol", "main")


def schedule_qlinear(func: PrimFunc, target: Any = None, key: str = "") -> Any:
    """The hand schedule of :func:`qlinear_func` (the module docstring's loops); a
    :data:`~edgespec.kernels.tuning.Scheduler`, so it is the untuned baseline of tuning."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    yb = sch.get_sblock("y")
    tile = tile_for(int(sch.get(sch.get_loops(yb)[1]).extent))  # the loop over N
    t, j, b = sch.get_loops(yb)
    jo, ji = sch.split(j, [None, tile])
    sch.reorder(jo, b, t, ji)
    sch.parallel(jo)
    sb = sch.get_sblock("s")
    sch.compute_at(sb, t)
    sj, sr = sch.get_loops(sb)[-2:]
    sch.reorder(sr, sj)
    sch.vectorize(sj)
    sch.vectorize(ji)
    sch.set_scope(sb, 0, "local")
    sch.decompose_reduction(sb, sr)
    cb = sch.get_sblock("cf")  # the block's codes widened once, for all rows
    sch.compute_at(cb, b)
    sch.vectorize(sch.get_loops(cb)[-1])
    sch.set_scope(cb, 0, "local")
    sch.decompose_reduction(yb, b)
    return sch.mod
