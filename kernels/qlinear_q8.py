"""The quantized linear layer on int8 activations: integer dot products (AVX512-VNNI, AVX-VNNI,
AVX2).

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

The dot product is the CPU's (:func:`int8_isa`): ``vpdpbusd`` with AVX512-VNNI, or per
32-byte half with AVX-VNNI (no AVX-512: Intel's laptop cores since Alder Lake); with AVX2
only, ``vpmaddubsw`` per 32-byte half, the products of as many as int16 holds exactly (a
4-bit block's 8, 2 of 6-bit codes: :func:`dot_sum`) added before one ``vpmaddwd`` by ones, as
llama.cpp's AVX2 kernels do: the same sums exactly. Q8_0's codes (stored ``+ 128``, up to
255, which would saturate ``vpmaddubsw``) are taken back as signed bytes there, their
absolute values times the activations with the codes' signs (``vpabsb``, ``vpsignb``:
:func:`signed_codes`), so that ``z`` is 0.

Arithmetic, per row t and block b of 32 (:func:`quantize_rows`, the NumPy reference
:func:`edgespec.kernels.reference.qlinear_q8`)::

    amax = max |x|;  e = 127 / amax (0 if amax = 0);  q[r] = round_half_even(x[r] * e)  int8
    dx = float16(amax / 127) as float32;  qs = sum q (int32);  sx = float16(amax/127 * qs)
    isum[j] = sum_r u[j, r] * q[r] - z * qs      (exact, int32; u = the stored unsigned code)
    y[t, j] = fma(m[j, b], sx, fma(d[j, b] * dx, float(isum[j]), y[t, j]))   over b in order

with ``u - z`` the weight's integer code (4-bit: ``u`` the nibble, ``z`` 8 for Q4_0, else 0;
Q5_0/Q5_1/Q5_K/Q6_K codes, all in ``[-32, 32)``, are stored as 6 bits ``code + 32``, ``z =
32``; Q8_0's as ``code + 128``, ``z = 128``, since ``vpdpbusd``'s first operand is
unsigned). ``d * dx`` is exact (two float16 values: 22 significant bits at most); each block
costs two correctly rounded fused multiply-adds (one for non-affine types). Every row is
computed the same way whatever T is, so batched and one-token forwards agree bit for bit.

Layout (:func:`convert`): codes ``uint8[N/tile, K/8, 4*tile]`` for 4-bit types, byte ``4*l +
i`` of row ``kk`` holding weights ``8kk + i`` (low nibble) and ``8kk + 4 + i`` (high) of
output feature ``l`` of the tile: one 64-byte load is 16 features x 4 consecutive weights,
``vpdpbusd``'s operand, with the file's 0.5 bytes a weight. 6-bit (:func:`stored_bits`):
``uint8[N/tile, 3K/16, 4*tile]``, three rows per 16 weights ``16p ..``: rows ``3p + a`` (a = 0,
1) as the 4-bit layout's (low 4 bits of ``u`` of weights ``16p + 8a + i`` low, ``16p + 8a + 4
+ i`` high), row ``3p + 2`` the top 2 bits of ``u`` of weights ``16p + 4j + i`` at bits ``2j,
2j+1`` (j = 0..3): 0.75 bytes a weight in one stream, unpacked in registers (:func:`_six`:
a shift and a mask per plane, one OR). With the scales that is the file's size for Q6_K (210
bytes per 256) and 1.17 to 1.20x it for Q5_x (whose fifth bit the file keeps in a 1-bit
plane), where widening the codes to a byte each had streamed 1.3 to 1.6x the file's bytes.
8-bit (Q8_0): ``uint8[N/tile, K/4, 4*tile]``, byte ``4*l + i`` of row ``kk`` = weight ``4kk +
i`` + 128. Scales and offsets are :class:`~edgespec.kernels.qlinear.PackedQWeight`'s
``float16[N/tile, K/32, tile]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.kernels.compiled import BuildChoice, stack_buffer
from edgespec.kernels.qlinear import LAYOUTS, MIXED_K, PackedQWeight, get_layout, untile

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
#: how many blocks of 32 ahead the codes are prefetched (8 to 16 KB: :func:`prefetch_rows`)
AHEAD = 8
#: rows of x a pass over a tile's codes serves from T = ROWS on (32-weight blocks: each
#: block's codes loaded and unpacked once for them, the rows' outputs in registers), with the
#: dot products of :data:`BLOCKED`; from T = ROWS on the activations are quantized in a
#: parallel loop of their own whatever the dot product
ROWS = 3
#: the dot products whose kernels run blocks of ROWS rows; the others run every T one row a
#: pass over each block of 32 (its codes in L1 for the rows after the first). On a Zen 3 core
#: (AVX2, 16 ymm registers) SmolLM2's ffn_up + ffn_gate (Q4_1) took 278 us warm at T = 9
#: blocked and 202 one row a pass, 188 and 101 at T = 4, its 8-bit head (Q8_0) 8.7 and 6.2 ms
#: warm at T = 9 (about even cold) (``benchmarks/tvm_q8_stream.py``, docs/tvm.md "A real AVX2
#: core"). VNNI was measured blocked on AVX-512 cores; AVX-VNNI keeps it, not measured on a
#: core of its own
BLOCKED = {"vnni": True, "avxvnni": True, "avx2": False, "generic": True}
#: the dot products whose one-row loops run a tile's vectors as a loop below T = ROWS, not
#: unrolled. Unrolled on 16 vector registers (AVX2), LLVM loads and unpacks all four
#: vectors' codes of a block (or K-quant group) at once and spills them to the stack: at
#: T = 1 most code bytes went through a load, a store and a load again. On a Zen 3 core the
#: Qwen 1.5B's ffn_gate (Q4_K) at T = 1 took 0.81x warm, 0.96x cold, its mixed qkv 0.82x and
#: 0.85x (its Q6_K ffn_down alone 1.1-1.3x warm, even cold), and its one-token forward
#: 0.84-0.94x at two threads in four processes, both builds first in turn, the same logits
#: bit for bit (``benchmarks/tvm_q8_stream.py``, ``tvm_profile.py --against-kernels``,
#: docs/tvm.md "Vectors as a loop"). From T = ROWS on the 32-weight-block loop keeps them
#: unrolled: the spilled codes then serve every row (SmolLM2's ffn_up + ffn_gate at T = 9:
#: 214 us unrolled, 275 as a loop). VNNI (32 registers) and AVX-VNNI (16, not measured on a
#: core of its own) keep the unrolled loops
ROLLED = frozenset({"avx2"})
#: blocks of 32 a chunk has (the last one fewer) from T = ROWS on: every pass over a tile's
#: codes (ROWS rows and one vector of 16 features) takes a chunk, the first prefetching the
#: codes about PREFETCH_BYTES on, before the next chunk (:func:`kernel`)
CHUNK = 2
#: about how many bytes of a tile's codes ahead a chunk's first pass prefetches (a whole
#: number of chunks, at least one: 3 chunks of 4-bit codes in a 64-wide tile, 2 of 6-bit, 1
#: of 8-bit). One chunk of 4-bit codes (2 KB, about what this thread streams in one memory
#: latency) left the streaming too little lead to run beside the arithmetic: SmolLM2's
#: ffn_up + ffn_gate (Q4_1) cold at T = 3 took 48-49 us 2 KB ahead, 37-39 with 4 to 16 KB, at
#: T = 9 82-83 against 71-76; its head (Q8_0, 4 KB chunks) was best 4 KB ahead and slower 16
#: KB ahead (T = 9 cold 1914-1976 against 2147-2169 us) (``benchmarks/tvm_q8_stream.py``,
#: one thread; docs/tvm.md)
PREFETCH_BYTES = 6 * 1024
#: a block's cache lines in a tile (code rows x vectors) above which its prefetch is spread
#: over the tile's vector passes (each its own lines) instead of issued in the first. SmolLM2's
#: head (Q8_0: 32 lines a block) cold at T = 9 took 1992-1995 us issued at once and 1520-1557
#: spread, 1.85 -> 1.58 ms a 9-token forward; its Q4_1 matrices (16 lines) were 10 % slower
#: spread (576 x 3072: 2.19 -> 2.42 ms a forward; ``benchmarks/tvm_q8_stream.py``,
#: ``benchmarks/tvm_profile.py --ops``, docs/tvm.md)
SPREAD_LINES = 16


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


def stored_bits(fmt: str) -> int:
    """Bits a code of ``fmt`` (``"<type>@q8"``) takes in this layout: 4 (nibbles), 6 (the
    types whose codes lie in ``[-32, 32)``: Q5_0, Q5_1, Q5_K, Q6_K, the mixed Q4_K/Q6_K) or
    8 (Q8_0)."""
    base = base_format(fmt)
    if get_layout(base).code_bits == 4:
        return 4
    return 8 if base == "Q8_0" else 6


def paired(fmt: str) -> bool:
    """Whether ``fmt``'s (``"<type>@q8"``) sub-scales and sub-offsets are stored by pairs of
    groups (Q4_K: :mod:`~edgespec.kernels.qlinear_q8k` multiplies them in int16 pairs):
    ``uint8[N/tile, K/64, 2*tile]``, byte ``2*l + h`` of row ``p`` the float path's ``[2p + h,
    l]``, so that one 32-byte load widened to int16 holds both groups' values of 16 output
    features."""
    lay = get_layout(base_format(fmt))
    return stored_bits(fmt) == 4 and bool(lay.sub) and lay.affine


#: the operands :func:`paired` stores by pairs of groups
PAIRED_PARTS = ("sd", "sm")


def _pairs(a: np.ndarray) -> np.ndarray:
    """``[N/tile, G, tile]`` -> :func:`paired`'s ``[N/tile, G/2, 2*tile]``."""
    nt, groups, tile = a.shape
    return np.ascontiguousarray(
        a.reshape(nt, groups // 2, 2, tile).transpose(0, 1, 3, 2).reshape(nt, groups // 2, -1)
    )


def code_rows(fmt: str, K: int) -> int:
    """Rows of ``4 * tile`` bytes the codes of one tile take: ``K * bits / 32``."""
    return K * stored_bits(fmt) // 32


def zero_of(fmt: str) -> int:
    """``z``: what the kernel subtracts from a stored unsigned code."""
    bits = stored_bits(fmt)
    if bits == 4:
        return get_layout(base_format(fmt)).zero
    return OFFSET8 if bits == 8 else 32


def _pack6(u: np.ndarray) -> np.ndarray:
    """``uint8[N, K]`` codes ``u < 64`` -> ``uint8[N, 3K/4]``: per 16 weights three groups of
    4 bytes, the module docstring's rows ``3p, 3p + 1, 3p + 2`` of one output feature."""
    n, k = u.shape
    g = u.reshape(n, k // 16, 4, 4)  # [n, p, j, i]: weight 16p + 4j + i
    lo, hi = g & 15, g >> 4
    low = lo[:, :, 0::2, :] | (lo[:, :, 1::2, :] << 4)  # [n, p, a, i]
    high = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    return np.concatenate([low, high[:, :, None, :]], axis=2).astype(np.uint8).reshape(n, -1)


def _unpack6(b: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_pack6`: ``uint8[N, 3K/4]`` -> ``int32[N, K]``."""
    n = b.shape[0]
    r = b.reshape(n, -1, 3, 4).astype(np.int32)  # [n, p, row, i]
    low, high = r[:, :, :2, :], r[:, :, 2, :]
    lo = np.stack([low[:, :, 0] & 15, low[:, :, 0] >> 4, low[:, :, 1] & 15, low[:, :, 1] >> 4], 2)
    hi = np.stack([(high >> (2 * j)) & 3 for j in range(4)], axis=2)
    return (lo | (hi << 4)).reshape(n, -1)


@dataclass(frozen=True)
class Q8Weight:
    """One GGUF tensor in this kernel's layout (module docstring).

    Attributes:
        fmt: ``"<type>@q8"``.
        ops: ``{"c": uint8[N/tile, K * bits / 32, 4*tile], ...}`` (:func:`code_rows`), then
            the float path's scales (and sub-scales) as they are, the sub-scales by pairs of
            groups where :func:`paired`.
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
        return int(nt * t4 // 4), int(kk * 32 // stored_bits(self.fmt))

    def codes(self) -> np.ndarray:
        """``int32[N, K]``: the integer codes ``u - z`` (equal to the float path's codes)."""
        n, k = self.shape
        c = self.ops["c"]
        nt, kk, t4 = c.shape
        tile = t4 // 4
        b = c.reshape(nt, kk, tile, 4).transpose(0, 2, 1, 3).reshape(n, kk, 4).astype(np.int32)
        bits = stored_bits(self.fmt)
        if bits == 4:
            b = np.concatenate([b & 15, b >> 4], axis=2)
        elif bits == 6:
            b = _unpack6(b.reshape(n, -1))
        return b.reshape(n, k) - zero_of(self.fmt)

    def scales(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``(d, m)`` as ``float32[N, K/32]`` (``m`` None when not affine)."""
        m = self.ops.get("m")
        d = untile(self.ops["d"]).astype(np.float32)
        return d, None if m is None else untile(m).astype(np.float32)


def convert(w: PackedQWeight) -> Q8Weight:
    """``w`` (the float path's layout, a type in :data:`FORMATS`) in this kernel's layout."""
    fmt = q8_format(w.fmt)
    if fmt is None:
        raise EdgespecError(f"no int8-activation kernel for {w.fmt}; supported: {FORMATS}")
    n, k = w.shape
    tile = tile_for(n)
    if w.ops["c"].shape[2] != tile:
        raise EdgespecError(f"{w.fmt} weight tiled by {w.ops['c'].shape[2]}, expected {tile}")
    code = w.codes() + zero_of(fmt)  # [N, K]
    bits = stored_bits(fmt)
    if code.min() < 0 or code.max() >= 1 << bits:  # the types' code ranges rule this out
        raise EdgespecError(f"{w.fmt} codes outside the {bits}-bit range of {fmt}")
    u = code.astype(np.uint8)
    if bits == 4:
        g = u.reshape(n, k // 8, 2, 4)
        u = (g[:, :, 0, :] | (g[:, :, 1, :] << 4)).astype(np.uint8).reshape(n, -1)  # [N, K/2]
    elif bits == 6:
        u = _pack6(u)  # [N, 3K/4]
    c = u.reshape(n // tile, tile, -1, 4).transpose(0, 2, 1, 3).reshape(n // tile, -1, 4 * tile)
    ops = {"c": np.ascontiguousarray(c)} | {p: a for p, a in w.ops.items() if p != "c"}
    if paired(fmt):
        ops |= {p: _pairs(ops[p]) for p in PAIRED_PARTS}
    return Q8Weight(fmt, ops)


def operand_names(fmt: str) -> list[str]:
    """The graph parameter suffixes of a matrix in ``fmt``: the float path's
    (:meth:`~edgespec.kernels.qlinear.Layout.parts`)."""
    return ["." + p for p in get_layout(base_format(fmt)).parts()]


def operand_types(fmt: str, K: int, N: int) -> list[tuple[tuple[int, ...], str]]:
    """``(shape, dtype)`` of the operands of an ``N x K`` matrix in ``fmt``."""
    from edgespec.kernels import qlinear

    base = base_format(fmt)
    tile = tile_for(N)
    c = ((N // tile, code_rows(fmt, K), 4 * tile), "uint8")
    lay = get_layout(base)
    rest = qlinear.operand_types(base, K, N)[1:]
    if paired(fmt):
        pairs = (N // tile, K // (2 * lay.group), 2 * tile)
        rest = [
            (pairs if part in PAIRED_PARTS else shape, dt)
            for part, (shape, dt) in zip(lay.parts()[1:], rest, strict=True)
        ]
    return [c, *rest]


def _vnni(acc: Any, w: Any, q: Any) -> Any:
    """``acc int32x16 + vpdpbusd(w uint8x64, q int8x64)``: per lane, the sum of 4 products of
    an unsigned weight byte and a signed activation byte, in the instructions of
    :func:`int8_isa` (or the :func:`building_with` override): :data:`DOTS`."""
    return DOTS[building_isa()](acc, w, q)


def _dot_vnni(acc: Any, w: Any, q: Any) -> Any:
    """AVX512-VNNI: one 512-bit ``vpdpbusd``."""
    from tvm.script import tirx as T

    return T.call_llvm_pure_intrin(
        "int32x16", "llvm.x86.avx512.vpdpbusd.512", acc, T.reinterpret("int8x64", w), q
    )


def _dot_avxvnni(acc: Any, w: Any, q: Any) -> Any:
    """AVX-VNNI: the same per 32-byte half, two 256-bit (VEX-encoded) ``vpdpbusd``."""
    from tvm import tirx
    from tvm.script import tirx as T

    w8 = T.reinterpret("int8x64", w)
    halves = [
        T.call_llvm_pure_intrin(
            "int32x8", "llvm.x86.avx512.vpdpbusd.256", _lanes(acc, h), _half(w8, h), _half(q, h)
        )
        for h in range(2)
    ]
    return tirx.Shuffle(halves, [T.int32(i) for i in range(LANES)])


def _dot_avx2(acc: Any, w: Any, q: Any) -> Any:
    """AVX2: ``vpmaddubsw`` per 32-byte half, then ``vpmaddwd`` by ones
    (:func:`_maddubs_run`; exact for stored codes below 128)."""
    return acc + _maddubs_run([(w, q)])


def _dot_generic(acc: Any, w: Any, q: Any) -> Any:
    """Plain int32 vector ops, any CPU: byte i of each lane, unsigned weight times signed
    activation."""
    from tvm.script import tirx as T

    w32, q32 = T.reinterpret("int32x16", w), T.reinterpret("int32x16", q)

    def c(v: int) -> Any:
        return T.broadcast(T.int32(v), LANES)

    for i in range(4):
        acc = acc + ((w32 >> c(8 * i)) & c(255)) * ((q32 << c(24 - 8 * i)) >> c(24))
    return acc


#: the dot product each of :data:`ISAS` builds ``vpdpbusd``'s sums with
DOTS: dict[str, Callable[[Any, Any, Any], Any]] = {
    "vnni": _dot_vnni,
    "avxvnni": _dot_avxvnni,
    "avx2": _dot_avx2,
    "generic": _dot_generic,
}


def vector_loop(n: int, rolled: bool) -> Any:
    """``T.serial(n)`` where ``rolled``, else ``T.unroll(n)``: the loop over a tile's vectors
    (:data:`ROLLED`)."""
    from tvm.script import tirx as T

    return T.serial(n) if rolled else T.unroll(n)


def madd16(acc: Any, a: Any, b: Any) -> Any:
    """``acc int32x16`` plus, per lane, the products of ``a``'s and ``b``'s two int16 halves
    (each ``int32x16`` holding an int16 pair a lane: low half times low half plus high times
    high), ``vpdpwssd``'s sum, in the instructions of :func:`int8_isa` (or the
    :func:`building_with` override): :data:`MADDS`. Exact: no product or sum here reaches
    2^31 (the callers' bounds)."""
    return MADDS[building_isa()](acc, a, b)


def _madd_vnni(acc: Any, a: Any, b: Any) -> Any:
    """AVX512-VNNI: one 512-bit ``vpdpwssd``."""
    from tvm.script import tirx as T

    return T.call_llvm_pure_intrin(
        "int32x16", "llvm.x86.avx512.vpdpwssd.512", acc,
        T.reinterpret("int16x32", a), T.reinterpret("int16x32", b),
    )  # fmt: skip


def _madd_halves(acc: Any, a: Any, b: Any, vnni: bool) -> Any:
    """Per 256-bit half: AVX-VNNI's (VEX) ``vpdpwssd``, or AVX2's ``vpmaddwd`` then an add."""
    from tvm import tirx
    from tvm.script import tirx as T

    a16, b16 = T.reinterpret("int16x32", a), T.reinterpret("int16x32", b)

    def half(h: int) -> Any:
        if vnni:
            return T.call_llvm_pure_intrin(
                "int32x8", "llvm.x86.avx512.vpdpwssd.256", _lanes(acc, h), _half16(a16, h),
                _half16(b16, h),
            )  # fmt: skip
        return T.call_llvm_pure_intrin(
            "int32x8", "llvm.x86.avx2.pmadd.wd", _half16(a16, h), _half16(b16, h)
        )

    halves = [half(h) for h in range(2)]
    both = tirx.Shuffle(halves, [T.int32(i) for i in range(LANES)])
    return both if vnni else acc + both


def _madd_generic(acc: Any, a: Any, b: Any) -> Any:
    """Plain int32 vector ops: each half sign-extended by shifts."""
    from tvm.script import tirx as T

    c16 = T.broadcast(T.int32(16), LANES)
    return acc + ((a << c16) >> c16) * ((b << c16) >> c16) + (a >> c16) * (b >> c16)


#: the int16 pair products each of :data:`ISAS` builds :func:`madd16` with
MADDS: dict[str, Callable[[Any, Any, Any], Any]] = {
    "vnni": _madd_vnni,
    "avxvnni": lambda acc, a, b: _madd_halves(acc, a, b, True),
    "avx2": lambda acc, a, b: _madd_halves(acc, a, b, False),
    "generic": _madd_generic,
}


def _six(low: Any, high: Any, j: int) -> Any:
    """``uint8x64``: the 6-bit codes of weights ``4j .. 4j+3`` of a chunk of 16 (16 features
    x 4 weights, ``vpdpbusd``'s operand) from its low-nibble row ``low`` (row ``j // 2``) and
    its high-bit row ``high`` (module docstring)."""
    from tvm.script import tirx as T

    def c(v: int) -> Any:
        return T.broadcast(T.uint8(v), 64)

    lo = low & c(15) if j % 2 == 0 else low >> c(4)
    hi = [high << c(4), high << c(2), high, high >> c(2)][j]
    return lo | (hi & c(0x30))


def _run16(bits: int) -> int:
    """How many ``vpmaddubsw`` results of ``bits``-bit stored codes (``u < 2^bits``) times
    activations (``|q| <= 127``) add in int16 without overflow: each is at most ``2 * u * 127``
    in magnitude, so 8 for 4-bit codes (30,480), 2 for 6-bit (32,004), 1 for 8-bit."""
    return max(1, 32767 // (2 * ((1 << bits) - 1) * 127))


def dot_sum(acc: Any, pairs: list[tuple[Any, Any]], bits: int) -> Any:
    """``acc int32x16`` plus ``vpdpbusd(w, q)`` summed over ``pairs`` of ``w uint8x64`` stored
    ``bits``-bit codes (16 features x 4 weights) and ``q int8x64`` activations. On AVX2 the
    ``vpmaddubsw`` products of :func:`_run16` pairs add in int16 before one ``vpmaddwd``
    (where one at a time widens each to int32): a 4-bit block of 32 weights costs 2
    ``vpmaddwd`` per vector instead of 16. The sums are exact either way, so every dot product
    gives the same int32 values."""
    if building_isa() != "avx2":
        for w, q in pairs:
            acc = _vnni(acc, w, q)
        return acc
    if signed_codes(bits):
        pairs = [_sign_pair(w, q) for w, q in pairs]
    run = _run16(bits)
    for i in range(0, len(pairs), run):
        acc = acc + _maddubs_run(pairs[i : i + run])
    return acc


def signed_codes(bits: int) -> bool:
    """Whether the kernels being built multiply ``bits``-bit stored codes as signed bytes
    (``u - 128``, one XOR away), not as ``u`` less ``z`` times the activations' sum: 8-bit
    codes (Q8_0) on AVX2, whose ``vpmaddubsw`` would saturate on ``u`` up to 255 times 127
    twice, but not on ``|u - 128| <= 128`` times ``+-127`` twice (32,512), llama.cpp's
    ``vpsignb`` way (:func:`_sign_pair`)."""
    return bits == 8 and building_isa() == "avx2"


def _sign_pair(w: Any, q: Any) -> tuple[Any, Any]:
    """``(|c|, q * sign(c))`` for the signed codes ``c = w ^ 128`` (``int8x64``) of 8-bit
    stored codes ``w``: ``vpabsb`` and ``vpsignb``, whose ``vpmaddubsw`` products are ``c *
    q``."""
    from tvm import tirx
    from tvm.script import tirx as T

    c = T.reinterpret("int8x64", w ^ T.broadcast(T.uint8(OFFSET8), 64))
    a = T.reinterpret("uint8x64", T.max(c, T.broadcast(T.int8(0), 64) - c))  # -128 -> 128
    halves = [
        T.call_llvm_pure_intrin("int8x32", "llvm.x86.avx2.psign.b", _half(q, h), _half(c, h))
        for h in range(2)
    ]
    return a, tirx.Shuffle(halves, [T.int32(i) for i in range(64)])


def _half(v: Any, h: int) -> Any:
    """Bytes ``32h .. 32h + 31`` of the ``int8x64`` ``v``."""
    from tvm import tirx
    from tvm.script import tirx as T

    return tirx.Shuffle([v], [T.int32(32 * h + i) for i in range(32)])


def _lanes(v: Any, h: int) -> Any:
    """Lanes ``8h .. 8h + 7`` of the ``int32x16`` ``v`` (the sums of :func:`_half` ``h``)."""
    from tvm import tirx
    from tvm.script import tirx as T

    return tirx.Shuffle([v], [T.int32(8 * h + i) for i in range(8)])


def _maddubs_run(pairs: list[tuple[Any, Any]]) -> Any:
    """``int32x16``: per 32-byte half, the ``vpmaddubsw`` products of ``pairs`` summed in
    int16 (the caller keeps them in range: :func:`_run16`), then ``vpmaddwd`` by ones."""
    from tvm import tirx
    from tvm.script import tirx as T

    halves = []
    for h in range(2):
        p16 = None
        for w, q in pairs:
            w8 = T.reinterpret("int8x64", w)
            p = T.call_llvm_pure_intrin(
                "int16x16", "llvm.x86.avx2.pmadd.ub.sw", _half(w8, h), _half(q, h)
            )
            p16 = p if p16 is None else p16 + p
        ones = T.broadcast(T.int16(1), 16)
        halves.append(T.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", p16, ones))
    return tirx.Shuffle(halves, [T.int32(i) for i in range(LANES)])


def _q(q4: Any, i: Any) -> Any:
    """``int8x64``: the 4 activations ``int8`` at ``q4[i]`` (an ``int32`` view) in all 16
    lanes."""
    from tvm.script import tirx as T

    return T.reinterpret("int8x64", T.broadcast(q4[i], 16))


def six_pairs(c0: Any, c1: Any, c2: Any, q4: Any, at: Any) -> list[tuple[Any, Any]]:
    """The 4 :func:`dot_sum` pairs of one chunk of 16 weights of the 6-bit layout (rows
    ``c0, c1, c2``, each ``uint8x64``) and the 16 activations at ``q4[at .. at+3]``."""
    return [(_six(c0 if j < 2 else c1, c2, j), _q(q4, at + j)) for j in range(4)]


def code_pairs(w: Any, q4: Any, at: Any, four: bool) -> list[tuple[Any, Any]]:
    """The :func:`dot_sum` pairs of 64 stored code bytes ``w`` (``uint8x64``) and the
    activations they multiply: 4-bit, both nibbles (low: the 4 words at ``q4[at]``, high:
    ``q4[at + 1]``); a byte a code, ``q4[at]``."""
    from tvm.script import tirx as T

    if not four:
        return [(w, _q(q4, at))]
    lo, hi = w & T.broadcast(T.uint8(15), 64), w >> T.broadcast(T.uint8(4), 64)
    return [(lo, _q(q4, at)), (hi, _q(q4, at + 1))]


def prefetch_line(addr: Any) -> None:
    """Emit, into the TVMScript function being parsed, a prefetch hint for the cache line at
    ``addr`` into all cache levels (a hint past the end of a buffer is harmless: x86
    prefetches never fault)."""
    from tvm.script import tirx as T

    T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", addr, 0, 3, 1))


def prefetch_rows(c: Any, tile: Any, row0: Any, nrows: int, width: int, line: Any = None) -> None:
    """Emit, into the TVMScript function being parsed, a prefetch hint (into all cache levels)
    for each 64-byte line of rows ``row0 .. row0 + nrows - 1`` of tile ``tile`` of ``c``
    (``uint8[tiles, rows, 4*width]``), or only for line ``line`` of each (a pass over one
    vector of the tile hinting its own lines). At T = 1 the kernels stream their codes once, and a
    loaded AVX2 VM read a cold Q4_K matrix at 5.1 GB/s without hints and 5.8 with them
    (quiet: 12.7 and 12.3; ``benchmarks/tvm_q8_stream.py``); a hint past the end of ``c`` is
    harmless (x86 prefetches never fault)."""
    from tvm.script import tirx as T

    lines = range(4 * width // 64) if line is None else [line]
    for r in range(nrows):
        for i in lines:
            prefetch_line(T.address_of(c[tile, row0 + r, i * 64]))


def dot_flat(dot: Any, u: Any, start: Any, step: Any, n: int, q4: Any, at: Any, bits: int) -> Any:
    """``dot`` plus ``n`` unpacked code vectors of the flat buffer ``u`` (``uint8``, 64 bytes
    from ``start + i * step``) times the activations at ``q4[at + i]``, in one
    :func:`dot_sum` of ``bits``-bit codes."""
    from tvm import tirx
    from tvm.script import tirx as T

    pairs = [
        (tirx.BufferLoad(u, [T.ramp(start + i * step, 1, 64)]), _q(q4, at + i)) for i in range(n)
    ]
    return dot_sum(dot, pairs, bits)


def dot_rows(
    dot: Any, c: Any, tile: Any, row0: Any, nrows: int, col: Any, q4: Any, at: Any, bits: int
) -> Any:
    """``dot`` plus the codes in rows ``row0 .. row0 + nrows - 1`` of tile ``tile`` of ``c``
    (``uint8[tiles, rows, 4*tile]``, the 64 bytes from ``col``) times their activations from
    ``q4[at]`` on, in one :func:`dot_sum`: a block's (or group's) whole dot product, so that
    AVX2 keeps as many products in int16 as it can."""
    from tvm import tirx
    from tvm.script import tirx as T

    def row(r: int) -> Any:
        return tirx.BufferLoad(c, [tile, row0 + r, T.ramp(col, 1, 64)])

    pairs: list[tuple[Any, Any]] = []
    if bits == 6:
        for p in range(nrows // 3):
            pairs += six_pairs(row(3 * p), row(3 * p + 1), row(3 * p + 2), q4, at + 4 * p)
    else:
        four = bits == 4
        for r in range(nrows):
            pairs += code_pairs(row(r), q4, at + (2 if four else 1) * r, four)
    return dot_sum(dot, pairs, bits)


def interleaved(bits: int) -> bool:
    """Whether :func:`dot_rows_each` interleaves its rows for ``bits``-bit codes in the
    kernels being built: 4-bit codes on AVX2, whose unpacking (a mask and a shift) it does once
    for all rows."""
    return bits == 4 and building_isa() == "avx2"


def dot_rows_each(
    dot: Any, p16: Any, R: int, c: Any, tile: Any, row0: Any, nrows: int, col: Any, q4: Any,
    ats: list[Any], bits: int, scales: Any = None,
) -> None:  # fmt: skip
    """Emit, into the TVMScript function being parsed, ``dot[r] += `` :func:`dot_rows` ``(...,
    ats[r])`` for the ``R`` rows of activations starting at ``q4[ats[r]]``: ``dot`` a local
    ``int32[R * 16]``. Where :func:`interleaved`, code row by code row: each row of codes is
    loaded and unpacked once, and its ``vpmaddubsw`` products with each of the R rows' added
    to that row's int16 sums in ``p16`` (a local ``int16[R * 32]``, registers after LLVM's
    SROA; as many products as :func:`_run16` allows, then one ``vpmaddwd`` into ``dot``).
    With the rows' :func:`dot_rows` one after the other instead, a Q4_K matrix's T = 9 call
    took 1.15x as long (warm; 1.75x cold: ``benchmarks/tvm_q8_stream.py``). Otherwise (VNNI,
    other code widths) the rows' :func:`dot_rows` one after the other, whose identical loads
    LLVM merges. The same exact sums as :func:`dot_rows` either way. ``scales`` (interleaved
    loop only; an ``int16x32``, each feature's multiplier in both halves of its lane): the
    int16 sums go into ``dot`` times it, in the ``vpmaddwd`` that widens them (instead of
    times 1), the sub-scale of a K-quant group for free (:mod:`~edgespec.kernels.qlinear_q8k`)."""
    from tvm import tirx
    from tvm.script import tirx as T

    def lanes(r: int, w: int) -> Any:
        return T.ramp(r * w, 1, w)

    if scales is not None and not interleaved(bits):
        raise ValueError("scales are for the interleaved loop")
    if not interleaved(bits):
        for r in range(R):
            T.buffer_store(
                dot, dot_rows(dot[lanes(r, LANES)], c, tile, row0, nrows, col, q4, ats[r], bits),
                [lanes(r, LANES)],
            )  # fmt: skip
        return
    run, done = _run16(bits), 0
    ones = T.broadcast(T.int16(1), 16)

    def flush() -> None:
        for r in range(R):
            halves = [
                T.call_llvm_pure_intrin(
                    "int32x8",
                    "llvm.x86.avx2.pmadd.wd",
                    _half16(p16[lanes(r, 32)], h),
                    ones if scales is None else _half16(scales, h),
                )  # fmt: skip
                for h in range(2)
            ]
            wide = tirx.Shuffle(halves, [T.int32(i) for i in range(LANES)])
            T.buffer_store(dot, dot[lanes(r, LANES)] + wide, [lanes(r, LANES)])

    for k in range(nrows):
        w = tirx.BufferLoad(c, [tile, row0 + k, T.ramp(col, 1, 64)])
        pairs = [code_pairs(w, q4, at + 2 * k, True) for at in ats]
        for i in range(2):
            if done == run:
                flush()
                done = 0
            for r in range(R):
                wk, qk = pairs[r][i]
                prod = _maddubs16(wk, qk)
                T.buffer_store(p16, prod if done == 0 else p16[lanes(r, 32)] + prod, [lanes(r, 32)])
            done += 1
    flush()


def _half16(v: Any, h: int) -> Any:
    """Lanes ``16h .. 16h + 15`` of the ``int16x32`` ``v``."""
    from tvm import tirx
    from tvm.script import tirx as T

    return tirx.Shuffle([v], [T.int32(16 * h + i) for i in range(16)])


def _maddubs16(w: Any, q: Any) -> Any:
    """``int16x32``: ``vpmaddubsw`` of the unsigned bytes ``w`` (``uint8x64``) and the signed
    ``q`` (``int8x64``), per 32-byte half."""
    from tvm import tirx
    from tvm.script import tirx as T

    w8 = T.reinterpret("int8x64", w)
    halves = [
        T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", _half(w8, h), _half(q, h))
        for h in range(2)
    ]
    return tirx.Shuffle(halves, [T.int32(i) for i in range(32)])


def amax_of(xf: Any, base: Any, nvec: int) -> Any:
    """The largest magnitude of ``xf[base .. base + nvec * LANES - 1]`` (float32), from
    vectors of :data:`LANES`: a max is exact in any order, so this is the scalar loop's.

    Taken on the bit patterns: a magnitude's (the sign bit cleared) orders as an integer as
    the float does, so a tree of integer maxima (``vpmaxsd``) finds it. LLVM expands a float
    ``reduce.fmax`` without fast-math flags into 15 dependent scalar maxima, each with a NaN
    test: about a sixth of a 576 x 576 matrix's 9-row call."""
    from tvm.script import tirx as T

    def magnitude(j: int) -> Any:
        bits = T.reinterpret("int32x16", xf[T.ramp(base + j * LANES, 1, LANES)])
        return bits & T.broadcast(T.int32(0x7FFFFFFF), LANES)

    m = magnitude(0)
    for j in range(1, nvec):
        m = T.max(m, magnitude(j))
    top = T.call_llvm_pure_intrin("int32", "llvm.vector.reduce.smax.v16i32", m)
    return T.reinterpret("float32", top)


def first_at(xf: Any, base: Any, nvec: int, amax: Any) -> Any:
    """The offset from ``base`` of the first of those values whose magnitude is ``amax``
    (int32; ``nvec * LANES`` where none is): the one a scalar loop keeping the first strictly
    larger magnitude ends on."""
    from tvm.script import tirx as T

    none = T.broadcast(T.int32(nvec * LANES), LANES)
    idx = none
    for j in range(nvec):
        hit = T.fabs(xf[T.ramp(base + j * LANES, 1, LANES)]) == T.broadcast(amax, LANES)
        idx = T.min(idx, T.Select(hit, T.ramp(T.int32(j * LANES), 1, LANES), none))
    return T.call_llvm_pure_intrin("int32", "llvm.vector.reduce.smin.v16i32", idx)


def kernel(fmt: str, K: int, N: int) -> PrimFunc:
    """``qlinear(x f32[T, K], c, d[, m], y f32[T, N])`` for symbolic T, private (to be added
    to a Relax module); the loops: rows quantized once (from T = :data:`ROWS` on in a
    parallel loop of their own), then output tiles in parallel; below
    T = :data:`ROWS` blocks in order, rows, the tile's vectors (unrolled, or a loop where
    :data:`ROLLED`: ``rows_each``); from
    it on, chunks of :data:`CHUNK` blocks, and in each, blocks of ROWS rows with the tile's
    vectors outer (``rows_block``), the rows left over as below. The chunks keep a cold
    matrix's streaming beside the arithmetic: each chunk's first pass prefetches the codes
    about :data:`PREFETCH_BYTES` on, which arrive while the passes between run from L1
    (the last chunks' hints reach into the next tile, where this thread goes on). With whole tiles
    instead (the first pass streaming the tile while the rest waited), a cold matrix's T = 9
    call cost warm T = 9 plus most of a cold T = 1; chunks of 2 blocks took 0.75-0.86x that
    time (SmolLM2's ffn_up, ffn_down and head: ``benchmarks/tvm_q8_stream.py``, docs/tvm.md
    "Chunks"), chunks of 3, 4, 6 and 8 less off it (ad hoc). A dot product not in
    :data:`BLOCKED` (AVX2) runs every T as below T = ROWS."""
    from tvm.script import tirx as T

    lay = get_layout(base_format(fmt))
    if not exact_with(fmt):
        raise EdgespecError(f"{fmt} codes overflow this CPU's int8 dot product; use {fmt[:-3]}")
    if lay.sub:
        from edgespec.kernels import qlinear_q8k

        return qlinear_q8k.kernel(fmt, K, N)
    if K % 32:
        raise EdgespecError(f"K must be a multiple of 32 for {fmt}; got {K}")
    tile = tile_for(N)
    bits = stored_bits(fmt)
    nvec, nb = tile // LANES, K // 32
    rows = bits  # byte rows of the codes per block of 32 (code_rows)
    z = 0 if signed_codes(bits) else zero_of(fmt)
    affine = lay.affine
    ahead = max(1, PREFETCH_BYTES // (CHUNK * rows * 4 * tile))  # chunks
    spread = rows * nvec > SPREAD_LINES
    blocked, rolled = BLOCKED[building_isa()], building_isa() in ROLLED

    def update(
        Df: Any, Mf: Any, XD: Any, XS: Any, jo: Any, b: Any, t: Any, v: Any, acc: Any, y: Any
    ) -> Any:
        # y + d * dx * float(acc) (+ m * sx): row t's block b, vector v of tile jo
        dd = T.Cast("float32x16", Df[T.ramp((jo * nb + b) * tile + v * LANES, 1, LANES)])
        dx = dd * T.broadcast(XD[t * nb + b], LANES)
        yv = T.call_llvm_pure_intrin(
            "float32x16", "llvm.fma.v16f32", dx, T.Cast("float32x16", acc), y
        )
        if not affine:
            return yv
        mm = T.Cast("float32x16", Mf[T.ramp((jo * nb + b) * tile + v * LANES, 1, LANES)])
        return T.call_llvm_pure_intrin(
            "float32x16", "llvm.fma.v16f32", mm, T.broadcast(XS[t * nb + b], LANES), yv
        )

    @T.macro
    def rows_each(
        C: Any, Q4: Any, QS: Any, XD: Any, XS: Any, Df: Any, Mf: Any, Yf: Any, jo: Any,
        t_lo: Any, t_hi: Any, b_lo: Any, b_hi: Any, rolled: bool,
    ) -> None:  # fmt: skip
        # rows t_lo .. t_hi - 1 of tile jo one at a time, blocks b_lo .. b_hi - 1: blocks in
        # order, rows, the tile's vectors (unrolled unless `rolled`: ROLLED), y summed in place
        # (zeroed before)
        for b in range(b_lo, b_hi):
            if t_lo == 0:
                prefetch_rows(C, jo, (b + AHEAD) * rows, rows, tile)
            for t in range(t_lo, t_hi):
                for v in vector_loop(nvec, rolled):
                    acc = stack_buffer((LANES,), "int32")
                    acc[T.ramp(0, 1, LANES)] = T.broadcast(-z * QS[t * nb + b], LANES)
                    acc[T.ramp(0, 1, LANES)] = dot_rows(
                        acc[T.ramp(0, 1, LANES)], C, jo, b * rows, rows, v * 64, Q4,
                        t * (K // 4) + b * 8, bits,
                    )  # fmt: skip
                    Yf[T.ramp(t * N + jo * tile + v * LANES, 1, LANES)] = update(
                        Df, Mf, XD, XS, jo, b, t, v, acc[T.ramp(0, 1, LANES)],
                        Yf[T.ramp(t * N + jo * tile + v * LANES, 1, LANES)],
                    )  # fmt: skip

    @T.macro
    def rows_block(
        C: Any, Q4: Any, QS: Any, XD: Any, XS: Any, Df: Any, Mf: Any, Yf: Any, jo: Any,
        t0: Any, b_lo: Any, b_hi: Any,
    ) -> None:  # fmt: skip
        # rows t0 .. t0 + ROWS - 1 of tile jo, blocks b_lo .. b_hi - 1: the tile's vectors outer
        # (unrolled), blocks in order, the rows innermost, so that each block's codes are
        # loaded and unpacked once for the ROWS rows (dot_rows_each) and their y vectors stay
        # in registers over the chunk; each y element still sums its blocks in order, so the
        # output is the same bit for bit
        # workspace ("local"), not stack_buffer: on the stack LLVM keeps these in registers
        # and SmolLM2's 9-token forward took 1.10x as long (benchmarks/tvm_profile.py
        # --against-kernels, two runs); the one-row loop above is faster on the stack
        y = T.alloc_local((ROWS * LANES,), "float32")
        dot = T.alloc_local((ROWS * LANES,), "int32")
        P16 = T.alloc_local((ROWS * 32,), "int16")  # dot_rows_each's int16 sums
        for v in T.unroll(nvec):
            for r in T.unroll(ROWS):
                y[T.ramp(r * LANES, 1, LANES)] = Yf[
                    T.ramp((t0 + r) * N + jo * tile + v * LANES, 1, LANES)
                ]
            for b in range(b_lo, b_hi):
                # codes chunks ahead, as the first rows' passes go: the first pass all of a
                # block's lines, or each vector's pass its own (SPREAD_LINES)
                if t0 == 0:
                    if spread:
                        prefetch_rows(C, jo, (b + CHUNK * ahead) * rows, rows, tile, v)
                    elif v == 0:
                        prefetch_rows(C, jo, (b + CHUNK * ahead) * rows, rows, tile)
                for r in T.unroll(ROWS):
                    dot[T.ramp(r * LANES, 1, LANES)] = T.broadcast(
                        -z * QS[(t0 + r) * nb + b], LANES
                    )
                dot_rows_each(
                    dot, P16, ROWS, C, jo, b * rows, rows, v * 64, Q4,
                    [(t0 + r) * (K // 4) + b * 8 for r in range(ROWS)], bits,
                )  # fmt: skip
                for r in T.unroll(ROWS):
                    y[T.ramp(r * LANES, 1, LANES)] = update(
                        Df, Mf, XD, XS, jo, b, t0 + r, v, dot[T.ramp(r * LANES, 1, LANES)],
                        y[T.ramp(r * LANES, 1, LANES)],
                    )  # fmt: skip
            for r in T.unroll(ROWS):
                Yf[T.ramp((t0 + r) * N + jo * tile + v * LANES, 1, LANES)] = y[
                    T.ramp(r * LANES, 1, LANES)
                ]

    @T.macro
    def chunk(
        C: Any, Q4: Any, QS: Any, XD: Any, XS: Any, Df: Any, Mf: Any, Yf: Any, jo: Any, n: Any,
        b_lo: Any, b_hi: Any,
    ) -> None:  # fmt: skip
        # blocks b_lo .. b_hi - 1 of tile jo for all n >= ROWS rows: ROWS rows at a time, then
        # the rows left over one at a time
        for tb in range(n // ROWS):
            rows_block(C, Q4, QS, XD, XS, Df, Mf, Yf, jo, tb * ROWS, b_lo, b_hi)
        rows_each(C, Q4, QS, XD, XS, Df, Mf, Yf, jo, n // ROWS * ROWS, n, b_lo, b_hi, False)

    @T.macro
    def one_row_passes(
        C: Any, Q4: Any, QS: Any, XD: Any, XS: Any, Df: Any, Mf: Any, Yf: Any, n: Any,
        rolled: bool,
    ) -> None:  # fmt: skip
        # all n rows of every tile one at a time (rows_each), tiles in parallel
        for jo in T.parallel(N // tile):
            for t in range(n):
                Yf[T.ramp(t * N + jo * tile, 1, tile)] = T.broadcast(T.float32(0), tile)
            rows_each(C, Q4, QS, XD, XS, Df, Mf, Yf, jo, 0, n, 0, nb, rolled)

    @T.macro
    def quantize(Xf: Any, Q: Any, QS: Any, XD: Any, XS: Any, t: Any, b: Any) -> None:
        # block b of row t as two vectors of 16: the largest magnitude (a max is exact in any
        # order), the codes and their sum, as the scalar loop computed them (T.let: a plain
        # assignment would be a mutable variable, a workspace buffer)
        at: T.let = t * K + b * 32
        lo: T.let = Xf[T.ramp(at, 1, LANES)]
        hi: T.let = Xf[T.ramp(at + LANES, 1, LANES)]
        amax: T.let = amax_of(Xf, at, 2)
        inv: T.let = T.if_then_else(amax > T.float32(0), T.float32(127) / amax, T.float32(0))
        qlo: T.let = T.Cast("int32x16", T.nearbyint(lo * T.broadcast(inv, LANES)))
        qhi: T.let = T.Cast("int32x16", T.nearbyint(hi * T.broadcast(inv, LANES)))
        Q[T.ramp(at, 1, LANES)] = T.Cast("int8x16", qlo)
        Q[T.ramp(at + LANES, 1, LANES)] = T.Cast("int8x16", qhi)
        qsum: T.let = T.call_llvm_pure_intrin("int32", "llvm.vector.reduce.add.v16i32", qlo + qhi)
        d32: T.let = amax / T.float32(127)
        XD[t * nb + b] = T.Cast("float32", T.Cast("float16", d32))
        XS[t * nb + b] = T.Cast("float32", T.Cast("float16", d32 * T.Cast("float32", qsum)))
        QS[t * nb + b] = qsum

    @T.macro
    def body(X: Any, C: Any, D: Any, M: Any, Y: Any, n: Any) -> None:
        # one workspace for the quantized rows and their block terms (one allocation a call,
        # not four): codes Q (int8, read as int32 words Q4), then QS, XD, XS
        W = T.alloc_buffer((n * (K // 4) + 3 * n * nb,), "int32")
        Q = T.decl_buffer((n * K,), "int8", data=W.data)
        Q4 = T.decl_buffer((n * (K // 4),), "int32", data=W.data)
        QS = T.decl_buffer((n * nb,), "int32", data=W.data, elem_offset=n * (K // 4))
        XD = T.decl_buffer((n * nb,), "float32", data=W.data, elem_offset=n * (K // 4) + n * nb)
        XS = T.decl_buffer((n * nb,), "float32", data=W.data, elem_offset=n * (K // 4) + 2 * n * nb)
        Yf = T.decl_buffer((n * N,), "float32", data=Y.data)  # flat: contiguous vectors
        Df = T.decl_buffer((N * nb,), "float16", data=D.data)
        Mf = T.decl_buffer((N * nb,), "float16", data=M.data)
        Xf = T.decl_buffer((n * K,), "float32", data=X.data)
        # the activations' blocks, one at a time below ROWS rows; from ROWS rows on in a
        # parallel loop of their own (on the calling thread alone they kept the other threads
        # waiting: benchmarks/tvm_perf_sample.py)
        if n < ROWS:
            for t in range(n):
                for b in range(nb):
                    quantize(Xf, Q, QS, XD, XS, t, b)
        else:
            for tb in T.parallel(n * nb):
                quantize(Xf, Q, QS, XD, XS, tb // nb, tb % nb)
        # a kernel (a parallel loop) for fewer than ROWS rows, another for more (as
        # qlinear_q8k's), so that T = 1 and 2 compile to the one-row loop alone; where the
        # dot product runs no blocks of rows (BLOCKED), the one-row loop for more too, its
        # vectors unrolled (ROLLED)
        if n < ROWS:
            one_row_passes(C, Q4, QS, XD, XS, Df, Mf, Yf, n, rolled)
        elif blocked:
            for jo in T.parallel(N // tile):
                for t in range(n):
                    Yf[T.ramp(t * N + jo * tile, 1, tile)] = T.broadcast(T.float32(0), tile)
                for c in range(nb // CHUNK):
                    chunk(C, Q4, QS, XD, XS, Df, Mf, Yf, jo, n, c * CHUNK, c * CHUNK + CHUNK)
                if nb % CHUNK != 0:  # the last blocks
                    chunk(C, Q4, QS, XD, XS, Df, Mf, Yf, jo, n, nb - nb % CHUNK, nb)
        else:
            one_row_passes(C, Q4, QS, XD, XS, Df, Mf, Yf, n, False)

    if affine:

        @T.prim_func(private=True)
        def qlinear(x_h: T.handle, c_h: T.handle, d_h: T.handle, m_h: T.handle, y_h: T.handle):
            T.func_attr({"tirx.noalias": True})
            n = T.int64()
            X = T.match_buffer(x_h, (n, K), "float32")
            C = T.match_buffer(c_h, (N // tile, nb * rows, 4 * tile), "uint8")
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
        C = T.match_buffer(c_h, (N // tile, nb * rows, 4 * tile), "uint8")
        D = T.match_buffer(d_h, (N // tile, nb, tile), "float16")
        Y = T.match_buffer(y_h, (n, N), "float32")
        body(X, C, D, D, Y, n)

    return qlinear_d


def _cpu_flags() -> frozenset[str]:
    """The CPU flags the kernels choose their dot product by
    (:func:`edgespec.kernels.tuning.cpu_flags`: this machine's, or those of the CPU being
    built for)."""
    from edgespec.kernels import tuning

    return tuning.cpu_flags()


#: the integer dot products the kernels are built with, best first: name -> the CPU flag it
#: needs and the widest stored code it sums exactly (AVX2's ``vpmaddubsw`` saturates int16:
#: exact for codes below 128, and for Q8_0's 8-bit codes taken as signed bytes,
#: :func:`signed_codes`). "avxvnni" is AVX-VNNI, the 256-bit, VEX-encoded ``vpdpbusd`` of
#: Intel's laptop and desktop cores since Alder Lake, which have no AVX-512: VNNI's loops, each
#: dot product in two halves. "generic" (plain int32 vector ops, several times slower) runs
#: anywhere; it is for tests, never chosen by :func:`int8_isa`.
ISAS: dict[str, tuple[str, int]] = {
    "vnni": ("avx512_vnni", 8),
    "avxvnni": ("avx_vnni", 8),
    "avx2": ("avx2", 8),
    "generic": ("", 8),
}


def int8_isa() -> str | None:
    """The dot product this CPU builds the kernels with: "vnni", else "avx2", else None (no
    gguf-q8act here)."""
    return next((i for i, (flag, _) in ISAS.items() if flag and flag in _cpu_flags()), None)


#: the dot product kernels built now use: :func:`int8_isa`'s, else "generic", unless a
#: ``building_with(isa)`` block overrides it (the same exact sums, so every variant is tested
#: bit for bit against the one reference)
DOT_CHOICE = BuildChoice("dot product", ISAS, lambda: int8_isa() or "generic")
building_isa = DOT_CHOICE.current
building_with = DOT_CHOICE.building_with


def cpu_has(isa: str) -> bool:
    """Whether this CPU runs the kernels built with ``isa``."""
    flag, _ = ISAS[isa]
    return not flag or flag in _cpu_flags()


def exact_with(fmt: str, isa: str | None = None) -> bool:
    """Whether ``fmt``'s (``"<type>@q8"``) codes are summed exactly by ``isa`` (default: the
    one kernels are built with now)."""
    _, widest = ISAS[isa or building_isa()]
    return stored_bits(fmt) <= widest


def prefer(w: PackedQWeight) -> PackedQWeight | Q8Weight:
    """``w`` on int8 activations where this module has its type and shape (N a multiple of
    16) and this CPU's dot product sums its codes exactly, else ``w`` itself (the
    float32-activation kernel)."""
    n, _ = w.shape
    fmt = q8_format(w.fmt)
    if fmt is None or n % LANES or not exact_with(fmt):
        return w
    return convert(w)
