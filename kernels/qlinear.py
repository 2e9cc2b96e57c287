"""The quantized linear layer of the ``tvm`` backend's graph: GGUF blocks, symbolic rows.

``y f32[T, N] = x f32[T, K] @ W^T`` for a GGUF tensor ``W`` of a type in :data:`LAYOUTS`
(Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K), with T a ``tir.Var`` so that one compiled
function serves prefill, plain decoding (T = 1) and verification (T = k+1) inside the Relax
graph (``call_tir``). The weights are the file's own: per group of 32 weights along a row (16
for Q6_K), ``w = D * c + M`` with the integer code ``c`` and the scale ``D`` and offset ``M``
that ``gguf.quants.dequantize`` forms (:class:`Layout`: the file's float16 ``d``, ``m``,
widened exactly, times the K-quants' 6- or 8-bit sub-scales, a product exact in float32), i.e.
the values llama.cpp dequantizes, bit for bit (tested on random blocks and on the Qwen 1.5B
file's tensors).

Layout (:func:`pack`, once at load): the file's values, tiled like the fp32 graph's matmul so
that a tile's codes are one contiguous stream and its ``tile`` output features are the
vector lanes: codes ``uint8[N/tile, K/2, tile]`` (4-bit; Q4_0's nibble order, into which
Q4_K's is permuted) or ``int8[N/tile, K, tile]``, scales and offsets ``float16[N/tile,
K/group, tile]`` (K-quants: ``float16[N/tile, K/256, tile]`` and integer sub-scales
``[N/tile, K/group, tile]``). 4-bit types and Q8_0 take as many bytes as the file (Q4_1:
0.625 bytes a weight, float32 4; Q4_K 3% more: sub-scales a byte each instead of 6 bits):
plain decoding streams every weight once per token, so bytes are time (widening the codes to
one byte each at load, and the scales to float32, made smollm2's one-token forward about
twice as slow). Q5_0/Q5_1/Q5_K/Q6_K codes are widened to one byte each (1.55x / 1.57x /
1.30x the file's bytes): exact and simple, not yet as lean as the file.

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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.kernels.qmatmul import QWeight

if TYPE_CHECKING:
    from tvm.tirx import PrimFunc

f32 = "float32"
#: output features per tile (the vector lanes of one FMA group); falls back to 16, then 1
TILE = 64
#: weights per K-quant super-block (one float16 scale, and offset scale, per super-block)
SUPER = 256

#: ``(byte offset in a block, bytes)`` written over a block so that ``gguf.quants.dequantize``
#: returns its integer codes: every float16 scale 1, offset 0, and K-quant sub-scale 1, min 0
_ONE, _ZERO = np.float16(1).tobytes(), np.float16(0).tobytes()
_KSCALES = bytes([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1])  # Q4_K/Q5_K: sc = 1, min = 0 (all 8)


def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    """``float16[n_blocks]``: the float16 at byte ``at`` of each block."""
    return blocks[:, at : at + 2].copy().view(np.float16)[:, 0]


def _unnibble(c: np.ndarray) -> np.ndarray:
    """``uint8[N, K]``: the 4-bit codes of ``c`` (``uint8[N, K/2]`` in Q4_0's nibble order:
    byte i of each group of 32 weights holds weights i and i + 16)."""
    b = c.reshape(c.shape[0], -1, 1, 16)
    return np.concatenate([b & 15, b >> 4], axis=2).reshape(c.shape[0], -1)


Scales = tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]


def _plain_scales(affine: bool) -> Callable[[np.ndarray], Scales]:
    """Q4_0/Q4_1/Q5_0/Q5_1/Q8_0: ``d`` (and ``m``) float16 per block of 32."""

    def scales(blocks: np.ndarray) -> Scales:
        return _f16(blocks, 0), _f16(blocks, 2) if affine else None, None, None

    return scales


def _kmin_scales(blocks: np.ndarray) -> Scales:
    """Q4_K/Q5_K: ``d``, ``-dmin`` float16 per 256; 6-bit scale and min per 32 (uint8)."""
    from gguf.quants import Q4_K

    sc, mn = Q4_K.get_scale_min(np.ascontiguousarray(blocks[:, 4:16]))
    return _f16(blocks, 0), -_f16(blocks, 2), sc.astype(np.uint8), mn.astype(np.uint8)


def _q6k_scales(blocks: np.ndarray) -> Scales:
    """Q6_K: ``d`` float16 per 256; int8 scale per 16."""
    return _f16(blocks, 208), None, blocks[:, 192:208].copy().view(np.int8), None


@dataclass(frozen=True)
class Layout:
    """How :func:`pack` stores one GGUF type and :func:`qlinear_kernel` reads it.

    A weight is ``w = D * code + M`` per group of ``group`` weights along a row, with ``D =
    d`` (``M = m``) float16 per group, or for K-quants ``D = d * sd`` (``M = m * sm``), a
    float16 per 256 weights times a small integer per group: products exact in float32, so
    ``D`` and ``M`` are the values ``gguf.quants.dequantize`` forms (K-quants keep ``m =
    -dmin``, so ``M = -dmin * min``).

    Attributes:
        type_size: bytes per file block (32 weights, or 256 for K-quants).
        group: weights per scale (32; 16 for Q6_K).
        code_bits: 4 (``uint8``, two codes a byte, Q4_0's nibble order in each group of 32)
            or 8 (``int8``; Q5_x and Q6_K codes are widened to one byte each at load).
        zero: what the kernel subtracts from a 4-bit code (8 for Q4_0).
        affine: whether there is an offset ``M``.
        sub: the dtype of the per-group integers ``sd`` (``sm``) of K-quants, else None.
        unit: ``(byte offset, bytes)`` that make a block's dequantized values its codes.
        scales: a file block's ``(d, m, sd, sm)`` (None where absent).
    """

    type_size: int
    group: int
    code_bits: int
    zero: int
    affine: bool
    sub: str | None
    unit: tuple[tuple[int, bytes], ...]
    scales: Callable[[np.ndarray], Scales]

    @property
    def block(self) -> int:
        """Weights per file block."""
        return SUPER if self.sub else 32

    def parts(self) -> list[str]:
        """The operand names after ``x`` in kernel order (graph parameters ``name.<part>``)."""
        return (
            ["c", "d"]
            + (["m"] if self.affine else [])
            + (["sd"] if self.sub else [])
            + (["sm"] if self.sub and self.affine else [])
        )


#: the GGUF types :func:`qlinear_kernel` multiplies on their own blocks
LAYOUTS: dict[str, Layout] = {
    "Q4_0": Layout(18, 32, 4, 8, False, None, ((0, _ONE),), _plain_scales(False)),
    "Q4_1": Layout(20, 32, 4, 0, True, None, ((0, _ONE + _ZERO),), _plain_scales(True)),
    "Q5_0": Layout(22, 32, 8, 0, False, None, ((0, _ONE),), _plain_scales(False)),
    "Q5_1": Layout(24, 32, 8, 0, True, None, ((0, _ONE + _ZERO),), _plain_scales(True)),
    "Q8_0": Layout(34, 32, 8, 0, False, None, ((0, _ONE),), _plain_scales(False)),
    "Q4_K": Layout(144, 32, 4, 0, True, "uint8", ((0, _ONE + _ZERO + _KSCALES),), _kmin_scales),
    "Q5_K": Layout(176, 32, 8, 0, True, "uint8", ((0, _ONE + _ZERO + _KSCALES),), _kmin_scales),
    "Q6_K": Layout(210, 16, 8, 0, False, "int8", ((192, bytes([1] * 16) + _ONE),), _q6k_scales),
}
#: a fused matrix (QKV) whose parts are Q4_K and Q6_K, as Q4_K_M files mix them: Q6_K's groups
#: of 16 with int8 codes, and Q4_K's offsets (zero on Q6_K rows); not a file type (no blocks)
MIXED_K = "Q4_K_Q6_K"  # an identifier: it names the graph's kernel
LAYOUTS[MIXED_K] = Layout(0, 16, 8, 0, True, "int8", (), _q6k_scales)


#: the GGUF types with one float16 scale per 32 weights and no offset, narrowest codes first.
#: A fused matrix mixing them (the Qwen2.5 0.5B's Q4_K_M file: Q5_0 q/k rows with Q8_0 v
#: rows in half its layers) is multiplied in the widest of its types: the narrower codes
#: widen exactly (Q4_0's 0..15 less 8 and Q5_0's -16..15 are int8 values of the same
#: weights) and the scales are the file's, so the values are the file's bit for bit
SYMMETRIC = ("Q4_0", "Q5_0", "Q8_0")


def common_format(types: set[str]) -> str | None:
    """The layout a fused matrix whose parts have GGUF ``types`` is multiplied in, or None
    (float32): their one type, :data:`MIXED_K` for Q4_K with Q6_K, or the widest of a mix
    of :data:`SYMMETRIC` types."""
    if len(types) == 1:
        (one,) = types
        return one if one in LAYOUTS and LAYOUTS[one].type_size else None
    if types == {"Q4_K", "Q6_K"}:
        return MIXED_K
    if types <= set(SYMMETRIC):
        return max(types, key=SYMMETRIC.index)
    return None


def get_layout(fmt: str) -> Layout:
    """The :class:`Layout` of GGUF type ``fmt``, or a one-line error listing the supported."""
    if fmt not in LAYOUTS:
        raise EdgespecError(
            f"no quantized matmul kernel for GGUF type {fmt}; supported: {', '.join(LAYOUTS)}"
        )
    return LAYOUTS[fmt]


def tile_for(n: int) -> int:
    """Output features per tile for ``n`` outputs: the widest of 64, 16, 1 dividing ``n``."""
    return next(f for f in (TILE, 16, 1) if n % f == 0)


@dataclass(frozen=True)
class QBlocks:
    """One GGUF tensor split into the kernel's operands, rows = output features (untiled).

    Attributes:
        fmt: the GGUF type name.
        ops: ``{part: array[N, ...]}`` in :meth:`Layout.parts` order: ``c`` codes (``uint8[N,
            K/2]`` 4-bit, or ``int8[N, K]``), ``d`` (``m``) ``float16[N, K/group]`` or, for
            K-quants, ``float16[N, K/256]``, and ``sd`` (``sm``) integers ``[N, K/group]``.
    """

    fmt: str
    ops: dict[str, np.ndarray]

    @classmethod
    def from_gguf(cls, raw: np.ndarray, qtype: str) -> QBlocks:
        """Split a GGUF tensor's bytes ``uint8[N, K/block * type_size]`` (one row per output).

        The codes are what ``gguf.quants.dequantize`` returns for the blocks with their
        scales set to one (:attr:`Layout.unit`), so they are the file's by construction.
        """
        from gguf import GGMLQuantizationType

        from edgespec.gguf_file import dequantize

        lay = get_layout(qtype)
        if not lay.type_size:
            raise EdgespecError(f"{qtype} is not a GGUF type; load the parts and use .to()")
        raw = np.ascontiguousarray(raw, dtype=np.uint8)
        if raw.ndim != 2 or raw.shape[1] % lay.type_size:
            raise EdgespecError(
                f"{qtype} tensor bytes must be [N, K/{lay.block} * {lay.type_size}]; "
                f"got {raw.shape}"
            )
        n = raw.shape[0]
        blocks = raw.reshape(-1, lay.type_size)
        unit = blocks.copy()
        for at, val in lay.unit:
            unit[:, at : at + len(val)] = np.frombuffer(val, np.uint8)
        codes = dequantize(unit, GGMLQuantizationType[qtype]).reshape(n, -1)  # gguf-py's
        if lay.code_bits == 4:
            q = (codes + lay.zero).astype(np.uint8).reshape(n, -1, 2, 16)
            c = q[:, :, 0, :] | (q[:, :, 1, :] << 4)  # byte i of a group: weights i, i + 16
        else:
            c = codes.astype(np.int8)
        d, m, sd, sm = lay.scales(blocks)
        found = {"c": c, "d": d, "m": m, "sd": sd, "sm": sm}
        return cls(qtype, {p: found[p].reshape(n, -1) for p in lay.parts()})  # type: ignore[union-attr]

    @classmethod
    def from_qweight(cls, w: QWeight) -> QBlocks:
        """A :class:`~edgespec.kernels.qmatmul.QWeight` (Q4_0/Q4_1/Q8_0) as blocks."""
        ops = {"c": w.qs, "d": w.d.astype(np.float16)}
        return cls(w.fmt.name, ops | ({} if w.m is None else {"m": w.m.astype(np.float16)}))

    @property
    def rows(self) -> int:
        """N."""
        return int(self.ops["c"].shape[0])

    def to(self, fmt: str) -> QBlocks:
        """These blocks in layout ``fmt``: themselves, a Q4_K / Q6_K tensor in
        :data:`MIXED_K` (the same values: Q4_K's codes widened to int8 and its 32-weight
        sub-scales repeated per 16; Q6_K with zero offsets), or a :data:`SYMMETRIC` tensor
        in a wider one of those (its codes as int8, the same scales)."""
        if fmt == self.fmt:
            return self
        if self.fmt in SYMMETRIC and fmt in SYMMETRIC[SYMMETRIC.index(self.fmt) + 1 :]:
            c = self.ops["c"]
            if LAYOUTS[self.fmt].code_bits == 4:
                c = _unnibble(c).astype(np.int8) - np.int8(LAYOUTS[self.fmt].zero)
            return QBlocks(fmt, {"c": c, "d": self.ops["d"]})
        if fmt != MIXED_K or self.fmt not in ("Q4_K", "Q6_K"):
            raise EdgespecError(f"cannot multiply a {self.fmt} tensor as {fmt}")
        o = self.ops
        if self.fmt == "Q6_K":
            zero = np.zeros_like(o["sd"])
            m = np.zeros_like(o["d"])
            return QBlocks(fmt, {"c": o["c"], "d": o["d"], "m": m, "sd": o["sd"], "sm": zero})
        c = _unnibble(o["c"]).astype(np.int8)

        def per16(a: np.ndarray) -> np.ndarray:
            return np.repeat(a, 2, axis=1).astype(np.int8)  # 6-bit: fits int8

        return QBlocks(
            fmt, {"c": c, "d": o["d"], "m": o["m"], "sd": per16(o["sd"]), "sm": per16(o["sm"])}
        )


def untile(a: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """A tiled operand ``a[N/tile, X, tile]`` (output feature j at ``[j // tile, :, j %
    tile]``) as ``[N, X]``, one row per output feature; with ``rows`` (``int[M]``) only
    those features, ``[M, X]``, gathered without un-tiling the rest."""
    nt, x, tile = a.shape
    if rows is not None:
        return a[rows // tile, :, rows % tile]
    return a.transpose(0, 2, 1).reshape(nt * tile, x)


@dataclass(frozen=True)
class PackedQWeight:
    """One GGUF tensor in the graph's layout (:func:`pack`): the file's values, tiled.

    Attributes:
        fmt: the GGUF type name ("Q4_1").
        ops: ``{part: array}`` in :meth:`Layout.parts` order, each :class:`QBlocks` operand
            ``a[N, X]`` as ``a[N/tile, X, tile]`` (output feature j at ``[j // tile, :, j %
            tile]``). 4-bit codes: byte ``16g + i`` of a row holds weight ``32g + i`` low and
            ``32g + i + 16`` high.
    """

    fmt: str
    ops: dict[str, np.ndarray]

    @property
    def layout(self) -> Layout:
        """Its :class:`Layout`."""
        return get_layout(self.fmt)

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, K)``."""
        nt, kc, tile = self.ops["c"].shape
        return int(nt * tile), int(kc * (2 if self.layout.code_bits == 4 else 1))

    def operands(self) -> list[np.ndarray]:
        """The kernel operands after ``x``, in :meth:`Layout.parts` order."""
        return list(self.ops.values())

    def codes(self) -> np.ndarray:
        """``int32[N, K]``: the integer code of each weight (the file's order)."""
        lay = self.layout
        n, k = self.shape
        c = untile(self.ops["c"])
        if lay.code_bits == 4:
            c = _unnibble(c)
        return c.reshape(n, k).astype(np.int32) - lay.zero

    def parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(code, D, M)``, each ``float32[N, K]`` per weight (``M`` zeros when not affine);
        ``D`` and ``M`` are the exact float32 products of :class:`Layout`."""
        lay = self.layout
        code = self.codes().astype(np.float32)

        def per_weight(scale: str, sub: str) -> np.ndarray:
            if scale not in self.ops:
                return np.zeros_like(code)
            s = untile(self.ops[scale]).astype(np.float32)
            if lay.sub:
                s = np.repeat(s, SUPER // lay.group, axis=1) * untile(self.ops[sub])
            return np.repeat(s.astype(np.float32), lay.group, axis=1)

        return code, per_weight("d", "sd"), per_weight("m", "sm")

    def dequantize(self) -> np.ndarray:
        """``float32[N, K]``: ``D * code + M`` per weight (the values the kernel multiplies;
        equal bit for bit to ``gguf.quants.dequantize`` of the file's tensor)."""
        code, d, m = self.parts()
        return d * code + m if self.layout.affine else d * code


def qlinear_bound(x: np.ndarray, w: PackedQWeight) -> np.ndarray:
    """The float32 error bound of :func:`qlinear_kernel`, ``float64[T, N]``.

    Per group of ``g`` weights (:attr:`Layout.group`) the kernel sums ``g`` products ``x *
    code`` (``gamma_g * sum |x| |code|``, Higham eq. 3.5) and ``g`` values ``x`` (``gamma_g *
    sum |x|``), scales them by ``D`` and ``M`` (exact in float32, :class:`Layout`; one ``u``
    each for the products, one more for their sum), and sums the K/g group terms
    (``gamma_{K/g}``). To first order the result is within ``gamma_{K/g + g + 2} * (|x| @
    (|D code| + |M|)^T)`` of the exact product with the dequantized weights.
    """
    code, d, m = w.parts()
    _, k = w.shape
    g = w.layout.group
    n = k // g + g + 2
    u = 2.0**-24
    mag = np.abs(d.astype(np.float64) * code) + np.abs(m.astype(np.float64))
    return n * u / (1 - n * u) * (np.abs(np.asarray(x, dtype=np.float64)) @ mag.T)


#: kernel variants by the suffix of a graph format ("Q4_1@q8": int8 activations), each a
#: module with ``operand_names``, ``operand_types`` and ``qlinear_q8_kernel``-like ``kernel``
VARIANTS: dict[str, str] = {"@q8": "edgespec.kernels.qlinear_q8"}


def variant(fmt: str) -> Any:
    """The module of a graph format with a :data:`VARIANTS` suffix, or None (this module)."""
    import importlib

    at = fmt.find("@")
    if at < 0:
        return None
    if fmt[at:] not in VARIANTS:
        raise EdgespecError(f"no kernel variant {fmt[at:]} (known: {', '.join(VARIANTS)})")
    return importlib.import_module(VARIANTS[fmt[at:]])


def operand_names(fmt: str) -> list[str]:
    """The graph parameter suffixes of a matrix in ``fmt``: ``[".c", ".d", ...]``."""
    if (v := variant(fmt)) is not None:
        return list(v.operand_names(fmt))
    return ["." + p for p in get_layout(fmt).parts()]


def operand_types(fmt: str, K: int, N: int) -> list[tuple[tuple[int, ...], str]]:
    """``(shape, dtype)`` of the operands (:meth:`Layout.parts`) of an ``N x K`` matrix."""
    if (v := variant(fmt)) is not None:
        return list(v.operand_types(fmt, K, N))
    lay, tile = get_layout(fmt), tile_for(N)
    groups = (N // tile, K // lay.group, tile)
    scale = (N // tile, K // SUPER, tile) if lay.sub else groups
    code = (N // tile, K // 2, tile) if lay.code_bits == 4 else (N // tile, K, tile)
    types = {
        "c": (code, "uint8" if lay.code_bits == 4 else "int8"),
        "d": (scale, "float16"),
        "m": (scale, "float16"),
        "sd": (groups, lay.sub or ""),
        "sm": (groups, lay.sub or ""),
    }
    return [types[p] for p in lay.parts()]


def pack(w: QBlocks | QWeight, tile: int | None = None) -> PackedQWeight:
    """``w`` (rows = output features, the file's order) in the graph's tiled layout."""
    b = QBlocks.from_qweight(w) if isinstance(w, QWeight) else w
    n = b.rows
    tile = tile or tile_for(n)
    if n % tile:
        raise EdgespecError(f"{n} output features are not a multiple of the tile {tile}")

    def tiled(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(a.reshape(n // tile, tile, a.shape[1]).transpose(0, 2, 1))

    return PackedQWeight(b.fmt, {p: tiled(a) for p, a in b.ops.items()})


def from_gguf(raw: np.ndarray, qtype: str, tile: int | None = None) -> PackedQWeight:
    """Pack a GGUF tensor's bytes ``uint8[N, K/block * type_size]`` (one row per output)."""
    return pack(QBlocks.from_gguf(raw, qtype), tile)


def concat(parts: Sequence[QBlocks | QWeight]) -> QBlocks:
    """GGUF tensors of one type and one K stacked along N (rows): the fused QKV and gate/up
    projections, before :func:`pack`."""
    bs = [QBlocks.from_qweight(p) if isinstance(p, QWeight) else p for p in parts]
    if len({b.fmt for b in bs}) != 1 or len({b.ops["c"].shape[1] for b in bs}) != 1:
        raise EdgespecError("fused quantized weights need one GGUF type and one K")
    return QBlocks(bs[0].fmt, {p: np.concatenate([b.ops[p] for b in bs]) for p in bs[0].ops})


def qlinear_kernel(fmt: str, K: int, N: int) -> PrimFunc:
    """``qlinear(x f32[T, K], c, d[, m], y f32[T, N])`` for symbolic T (see the module
    docstring for the loops), private (to be added to a Relax module); a :data:`VARIANTS`
    format's kernel for ``"<type>@<variant>"``."""
    if (v := variant(fmt)) is not None:
        return v.kernel(fmt, K, N)
    mod = schedule_qlinear(qlinear_func(fmt, K, N))
    return mod["main"].with_attr("tirx.noalias", True).without_attr("global_symbol")


def qlinear_func(fmt: str, K: int, N: int, rows: int | None = None) -> PrimFunc:
    """The unscheduled TensorIR of :func:`qlinear_kernel` (blocks ``cf``: a code widened to
    float32, ``s``: group sums, ``xs``: group sums of ``x`` (affine types), ``y``), for a
    symbolic row count, or ``rows`` rows (a static shape MetaSchedule can tune)."""
    from tvm import te, tirx

    lay = get_layout(fmt)
    if K % lay.block:
        raise EdgespecError(f"K must be a multiple of {lay.block} for {fmt} blocks; got {K}")
    g, tile = lay.group, tile_for(N)
    nb, per_super = K // g, SUPER // g
    n = tirx.Var("T", "int64") if rows is None else rows
    x = te.placeholder((n, K), "float32", name="x")
    shapes = operand_types(fmt, K, N)
    ph = {p: te.placeholder(*shapes[i], name=p) for i, p in enumerate(lay.parts())}
    c = ph["c"]
    if lay.code_bits == 4:

        def code(a: Any, k: Any, lane: Any) -> Any:
            byte = c[a, k // 32 * 16 + k % 16, lane]
            nib = (byte >> ((k % 32 // 16) * 4).astype("uint8")) & tirx.const(15, "uint8")
            return nib.astype("float32") - tirx.const(float(lay.zero), "float32")

    else:

        def code(a: Any, k: Any, lane: Any) -> Any:
            return c[a, k, lane].astype("float32")

    def scale(p: str, sub: str, a: Any, b: Any, lane: Any) -> Any:
        """``D`` (``M``) of group ``b``: exact in float32 (see :class:`Layout`)."""
        if lay.sub is None:
            return ph[p][a, b, lane].astype(f32)
        return ph[p][a, b // per_super, lane].astype(f32) * ph[sub][a, b, lane].astype(f32)

    cf = te.compute((N // tile, K, tile), code, name="cf")
    r = te.reduce_axis((0, g), name="r")
    s = te.compute(
        (n, N, nb),
        lambda t, j, b: te.sum(x[t, b * g + r] * cf[j // tile, b * g + r, j % tile], axis=r),
        name="s",
    )
    bb = te.reduce_axis((0, nb), name="b")
    if lay.affine:
        r2 = te.reduce_axis((0, g), name="r2")
        xs = te.compute((n, nb), lambda t, b: te.sum(x[t, b * g + r2], axis=r2), name="xs")
        y = te.compute(
            (n, N),
            lambda t, j: te.sum(
                scale("d", "sd", j // tile, bb, j % tile) * s[t, j, bb]
                + scale("m", "sm", j // tile, bb, j % tile) * xs[t, bb],
                axis=bb,
            ),
            name="y",
        )
    else:
        y = te.compute(
            (n, N),
            lambda t, j: te.sum(scale("d", "sd", j // tile, bb, j % tile) * s[t, j, bb], axis=bb),
            name="y",
        )
    return te.create_prim_func([x, *ph.values(), y]).with_attr("global_symbol", "main")


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
