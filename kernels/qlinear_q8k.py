"""The K-quant linear layer on int8 activations (Q4_K, Q5_K, Q6_K, mixed Q4_K/Q6_K; VNNI).

:mod:`edgespec.kernels.qlinear_q8`'s kernel for the super-block types: the activations are
quantized per 256 as llama.cpp's ``Q8_K`` does, and each group's integer dot product (32
weights, 16 for Q6_K and the mixed layout) is weighted by the group's integer sub-scale in
int32, so that a super-block costs one float scaling (two with offsets). Per row t and
super-block s (:func:`edgespec.kernels.reference.quantize_q8k`,
:func:`~edgespec.kernels.reference.qlinear_q8k`)::

    mx = the value of largest |x| (the first one);  e = -127 / mx  (0 if mx = 0)
    q[r] = min(127, round_half_even(e * x[r]))  int8;  dx = 1 / e  (0 if mx = 0)
    bs[h] = sum of q over the h-th 16 values (int32)
    acc[j]  = sum_g sd[j, g] * (sum_r u[j, r] q[r] - z * bsum_g)      exact int32
    accm[j] = sum_g sm[j, g] * bsum_g                                  exact int32
    y[t, j] = fma(m[j, s] * dx, float(accm), fma(d[j, s] * dx, float(acc), y[t, j]))

(``d * dx`` and ``m * dx`` are rounded float32 products, ``float()`` rounds to nearest;
``u - z`` is the weight's code as in qlinear_q8's layout, with the float path's sub-scales
``sd``/``sm`` and float16 ``d``/``m`` per 256.) Sums of at most 16 groups of 16 or 32 codes:
``|acc| < 2^28``, no overflow.

Q4_K (:func:`~edgespec.kernels.qlinear_q8.paired`) reaches the same int32 ``acc`` and
``accm`` in another order, with no int32 multiply (``vpmulld``: two uops on the port that
also runs ``vpdpbusd``): each group's dot product is taken with the codes less
:data:`CENTRE` (``dot' = sum_r (u - 8) q``, ``|dot'| <= 32 * 8 * 127 = 32512``, int16), so
that ``sd * dot'`` is one ``vpdpwssd`` (:func:`~edgespec.kernels.qlinear_q8.madd16`); per
super-block, ``acc = sum_g sd * dot' + 8 * sum_g sd * bsum_g`` and ``accm``, the two sums over
groups of a sub-scale times ``bsum_g`` (``|bsum_g| <= 4064``), by pairs of groups in one
``vpdpwssd`` each, from sub-scales stored by pairs. Measured: :data:`CENTRE`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgespec.errors import EdgespecError
from edgespec.kernels.compiled import stack_buffer
from edgespec.kernels.qlinear import SUPER, get_layout
from edgespec.kernels.qlinear_q8 import (
    LANES,
    ROLLED,
    _six,
    amax_of,
    base_format,
    building_isa,
    code_rows,
    dot_flat,
    dot_rows,
    dot_rows_each,
    first_at,
    interleaved,
    madd16,
    paired,
    prefetch_line,
    prefetch_rows,
    stored_bits,
    tile_for,
    vector_loop,
    zero_of,
)

if TYPE_CHECKING:
    from tvm.tirx import PrimFunc

#: how many groups ahead the codes are prefetched (6 KB of Q6_K, 8 of Q4_K)
AHEAD = 8
#: the dot products whose blocks of ROWS rows run a tile's vectors outer and the groups inner
#: for 4-bit codes (``rows_at``). The Qwen 1.5B's ffn_gate (Q4_K) at T = 9, one thread, on an
#: AVX512-VNNI Xeon, both orders on the same operands in one process, six processes: VNNI
#: 1050-1200 us vectors outer, 1040-1470 us groups outer (two modes between processes; the
#: ratio 0.78-0.93 in five, 1.05 in one); AVX-VNNI 0.95 and 1.35, AVX2 0.99 and 1.02 (where
#: identical code measured 0.94-1.02); Q6_K's unpacked codes 1.07-1.08 (docs/tvm.md)
VECTORS_OUTER = frozenset({"vnni"})
#: rows of x a pass over the codes serves (each group's codes loaded and unpacked once); 2 and 4
#: were slower than 3 at T = 9 in an earlier form of the loop (benchmarks/tvm_q8_layout.py)
ROWS = 3
#: the dot products whose T = 2 runs one block of two rows (each group's codes loaded,
#: unpacked and prefetched once for both) instead of the one-row loop twice. The Qwen 1.5B on
#: a Zen 3, same process against the one-row loop (benchmarks/tvm_q8_stream.py --against,
#: tvm_profile.py --against-kernels; docs/tvm.md "T = 2 in one block"): ffn_gate (Q4_K) at
#: T = 2 0.76x warm, 0.69x cold; ffn_down (Q6_K) 0.74-0.87x warm, 0.91-0.99x cold; the
#: 2-token forward at two threads 0.81x, logits bit for bit the same. Not measured with the
#: VNNI or AVX-VNNI dot products, which keep the one-row loop
PAIRED = frozenset({"avx2"})
#: what the 4-bit K-quant (Q4_K) kernel subtracts from each code before a group's dot product,
#: so that the group's sum fits int16 and its sub-scale multiplies it in one ``vpdpwssd``
#: (module docstring). The Qwen 1.5B at 2 threads, against the int32 multiplies in the same
#: process (``benchmarks/tvm_profile.py --against-kernels 824130a``, docs/tvm.md): the
#: 9-token forward 0.94x, the Q4_K gate/up product at T = 9 0.90x, T = 1 unchanged within
#: the runs' spread; logits bit for bit the same
CENTRE = 8


def kernel(fmt: str, K: int, N: int) -> PrimFunc:
    """``qlinear(x f32[T, K], c, d[, m], sd[, sm], y f32[T, N])`` for symbolic T, private;
    loops as qlinear_q8's, per super-block instead of per block. 6-bit codes (Q5_K, Q6_K,
    the mixed layout) are unpacked in registers as they stream at T = 1, and at T > 1 once
    per super-block and tile into a local buffer (16 KB, L1) that every row reads (unpacking
    per row made a Q6_K matrix's T = 9 call 1.2x slower than with byte-wide codes on AVX2:
    ``benchmarks/tvm_q8_layout.py``), prefetching the next super-block's codes as it goes
    at T = 2.
    One row at a time (``row_at``: T < :data:`ROWS`, and one row left over; ROWS - 1 rows
    left over go in a last block that overlaps the one before) the groups are
    the outer loop and the tile's vectors the inner one, so that each code row's ``4 * tile``
    bytes are read in one go, with prefetch hints :data:`AHEAD` groups on (at T = 1 on the
    AVX2 VM: a cold Q4_K or Q6_K matrix 0.57-0.86x the time of a vector-outer loop without
    hints). From T = :data:`ROWS` on, blocks of ROWS rows (``rows_at``) share each group's
    loads and unpacking (:func:`~edgespec.kernels.qlinear_q8.dot_rows_each`): on the AVX2 VM
    a Q4_K matrix's T = 9 call 0.79-0.88x (warm) and 0.74-0.84x (cold) the time of one row
    at a time, a Q6_K one 0.73x and 0.80x (``benchmarks/tvm_q8_stream.py``, docs/tvm.md).
    Their passes (ROWS rows, and a vector or a pair of groups) each prefetch an even share of
    the next super-block's codes (``prefetch_share``): with all of it prefetched in the first
    pass (or, 6-bit, while unpacking), a cold matrix's T = 9 call had cost its warm time plus
    most of a cold T = 1 (the prefetches queued behind each other while the other passes left
    memory idle); shared out, the Qwen 1.5B's ffn_gate (Q4_K) took 0.76x, ffn_down (Q6_K)
    0.79x and the mixed qkv 0.76x of that time (docs/tvm.md, "Chunks"). Both loops are in
    their own parallel kernel, chosen by T; from T = ROWS on the activations are quantized in
    a parallel loop before it (below, on the calling thread)."""
    from tvm.script import tirx as T

    lay = get_layout(base_format(fmt))
    if K % SUPER:
        raise EdgespecError(f"K must be a multiple of {SUPER} for {fmt}; got {K}")
    tile = tile_for(N)
    bits = stored_bits(fmt)
    nvec, ns, six = tile // LANES, K // SUPER, bits == 6
    g = lay.group  # weights per group (sub-scale)
    gps = SUPER // g  # groups per super-block
    rows = g * bits // 32  # byte rows of the codes per group
    z = zero_of(fmt)
    affine, sub = lay.affine, lay.sub or "int8"
    nbs = K // 16
    nt, codes = N // tile, code_rows(fmt, K)
    # 4-bit codes (Q4_K) taken less CENTRE: a group's dot product then lies within
    # 32 * 8 * 127 = 32512 (int16), and acc adds sd * dot by madd16 instead of an int32
    # multiply (two uops) and an add; the CENTRE * sd * gsum this takes off, and the offsets'
    # sm * gsum, are added per super-block in madd16 pairs of groups (finish). The int32 sums
    # are the same exactly
    centred = paired(fmt)
    rolled = building_isa() in ROLLED
    paired_rows = building_isa() in PAIRED
    lines = gps * rows * nvec  # the cache lines of a super-block's codes in a tile
    ng, npair = K // g, K // g // 2
    sub_shape = (nt, npair, 2 * tile) if centred else (nt, ng, tile)  # SD's, SM's

    def gsum_of(BS: Any, t: Any, s: Any, gi: Any) -> Any:
        # sum of row t's int8 activations over group gi of super-block s (BS: per 16)
        b16 = t * nbs + s * (SUPER // 16) + gi * (g // 16)
        return BS[b16] if g == 16 else BS[b16] + BS[b16 + 1]

    def dot_start(BS: Any, GN: Any, t: Any, s: Any, gi: Any) -> Any:
        # int32x16: what a group's dot product starts from, -z (centred: -(z + CENTRE)) times
        # its gsum (GN: that, per row and group, when centred)
        if centred:
            return T.broadcast(GN[t * ng + s * gps + gi], LANES)
        return T.broadcast(-z * gsum_of(BS, t, s, gi), LANES)

    def pair_of(S: Any, jo: Any, s: Any, p: Any, v: Any) -> Any:
        # int32x16: the sub-scales of groups 2p and 2p + 1 of super-block s for vector v of tile
        # jo, as each lane's int16 halves (centred: convert's paired layout, one 32-byte load)
        at = ((jo * ns + s) * (gps // 2) + p) * 2 * tile + 2 * v * LANES
        return T.reinterpret("int32x16", T.Cast("int16x32", S[T.ramp(at, 1, 2 * LANES)]))

    def sub_scale(S: Any, jo: Any, s: Any, gi: Any, v: Any) -> Any:
        # int32x16: group gi's sub-scales (zero-extended) for vector v of tile jo
        if not centred:
            at = ((jo * ns + s) * gps + gi) * tile + v * LANES
            return T.Cast("int32x16", S[T.ramp(at, 1, LANES)])
        pair = pair_of(S, jo, s, gi // 2, v)
        low = pair & T.broadcast(T.int32(65535), LANES)
        return T.if_then_else(gi % 2 == 0, low, pair >> T.broadcast(T.int32(16), LANES))

    def pair_sum(S: Any, GP: Any, jo: Any, s: Any, t: Any, v: Any) -> Any:
        # int32x16: sum over super-block s's groups gi of S[gi, lanes of vector v of tile jo]
        # times row t's gsum of gi, by madd16 over pairs of groups (GP: the pairs' gsums as
        # int16 halves)
        total = T.broadcast(T.int32(0), LANES)
        for p in range(gps // 2):
            gp = T.broadcast(GP[t * npair + s * (gps // 2) + p], LANES)
            total = madd16(total, pair_of(S, jo, s, p, v), gp)
        return total

    def settled(
        acc: Any, accm: Any, i: Any, SDf: Any, SMf: Any, GP: Any, jo: Any, s: Any, t: Any,
        v: Any, scaled: bool,
    ) -> tuple[Any, Any]:  # fmt: skip
        # (acc, accm) of super-block s at lanes i .., as the module docstring's: centred, the
        # CENTRE * sd * gsum the group sums were taken less added back (not when `scaled`:
        # those were never taken less), and accm's sm * gsum
        a, m = acc[T.ramp(i, 1, LANES)], accm[T.ramp(i, 1, LANES)]
        if not centred:
            return a, m
        m = pair_sum(SMf, GP, jo, s, t, v)
        if scaled:
            return a, m
        return a + pair_sum(SDf, GP, jo, s, t, v) * T.broadcast(T.int32(CENTRE), LANES), m

    # the blocks of rows' 4-bit groups on AVX2 (Q4_K) multiply their int16 sums by the
    # sub-scale in the vpmaddwd that widens them (dot_rows_each's scales: each sum of 8
    # products of codes 0..15 is within 30,480, so no CENTRE is taken off), instead of
    # widening by ones and then madd16 by the sub-scale: two instructions fewer a group, half
    # and row. The Qwen 1.5B's ffn_gate at T = 9, one thread, Zen 3: 0.89x warm, 0.88x cold;
    # its 9-token forward 0.93x at one thread, 0.95x at two (benchmarks/tvm_q8_stream.py,
    # tvm_profile.py, docs/tvm.md "A real AVX2 core"); the same int32 sums
    scaled_rows = centred and not six and interleaved(bits)

    def widening_scales(S: Any, jo: Any, s: Any, gi: Any, v: Any) -> Any:
        # dot_rows_each's scales: where scaled_rows, an int16x32 holding group gi's sub-scale
        # of each feature of vector v in both int16 halves of its lane (what vpmaddwd
        # multiplies a feature's two int16 sums by); else None (widened times 1)
        if not scaled_rows:
            return None
        one = sub_scale(S, jo, s, gi, v)
        return T.reinterpret("int16x32", one | (one << T.broadcast(T.int32(16), LANES)))

    @T.macro
    def accumulate(
        acc: Any, accm: Any, i: Any, dot: Any, j: Any, SDf: Any, SMf: Any, jo: Any, s: Any,
        gi: Any, v: Any, gsum: Any,
    ) -> None:  # fmt: skip
        # acc[i ..] += sd * dot[j ..] (and accm[i ..] += sm * gsum): group gi's sub-scales
        if centred:  # dot within int16, sd zero-extended: madd16's low halves alone
            acc[T.ramp(i, 1, LANES)] = madd16(
                acc[T.ramp(i, 1, LANES)], dot[T.ramp(j, 1, LANES)], sub_scale(SDf, jo, s, gi, v)
            )
        else:
            acc[T.ramp(i, 1, LANES)] = (
                acc[T.ramp(i, 1, LANES)] + sub_scale(SDf, jo, s, gi, v) * dot[T.ramp(j, 1, LANES)]
            )
        if affine and not centred:
            accm[T.ramp(i, 1, LANES)] = accm[T.ramp(i, 1, LANES)] + sub_scale(
                SMf, jo, s, gi, v
            ) * T.broadcast(gsum, LANES)

    def finish(
        Df: Any, Mf: Any, SDf: Any, SMf: Any, XD: Any, GP: Any, Yf: Any, acc: Any, accm: Any,
        i: Any, jo: Any, s: Any, t: Any, v: Any, scaled: bool = False,
    ) -> None:  # fmt: skip
        # emit y[t, vector v of tile jo] += d * dx * acc[i ..] (+ m * dx * accm[i ..]),
        # super-block s. A function, not a macro: a macro's names (the ramps) became let-bound
        # index vectors, and LLVM scattered and gathered y, d and m a lane at a time
        lanes = T.ramp(t * N + jo * tile + v * LANES, 1, LANES)
        xd = T.broadcast(XD[t * ns + s], LANES)
        at = T.ramp((jo * ns + s) * tile + v * LANES, 1, LANES)
        a, m = settled(acc, accm, i, SDf, SMf, GP, jo, s, t, v, scaled)
        y = T.call_llvm_pure_intrin(
            "float32x16", "llvm.fma.v16f32", T.Cast("float32x16", Df[at]) * xd,
            T.Cast("float32x16", a), Yf[lanes],
        )  # fmt: skip
        if affine:
            y = T.call_llvm_pure_intrin(
                "float32x16", "llvm.fma.v16f32", T.Cast("float32x16", Mf[at]) * xd,
                T.Cast("float32x16", m), y,
            )  # fmt: skip
        T.buffer_store(Yf, y, [lanes])

    @T.macro
    def group_rows(
        BS: Any, GN: Any, GP: Any, Q4: Any, U: Any, C: Any, SDf: Any, SMf: Any, acc: Any,
        accm: Any, dot: Any, P16: Any, jo: Any, s: Any, t0: Any, gi: Any, v: Any, R: int,
    ) -> None:  # fmt: skip
        # group gi of super-block s, vector v of tile jo, for rows t0 .. t0 + R - 1 (the rows
        # unrolled innermost: the group's codes loaded and unpacked once for them)
        for r in T.unroll(R):
            if scaled_rows:
                dot[T.ramp(r * LANES, 1, LANES)] = T.broadcast(T.int32(0), LANES)
            else:
                dot[T.ramp(r * LANES, 1, LANES)] = dot_start(BS, GN, t0 + r, s, gi)
            if six:  # rows of 4 weights, unpacked
                dot[T.ramp(r * LANES, 1, LANES)] = dot_flat(
                    dot[T.ramp(r * LANES, 1, LANES)], U, (gi * g // 4 * nvec + v) * 64,
                    nvec * 64, g // 4, Q4, ((t0 + r) * K + s * SUPER + gi * g) // 4, bits,
                )  # fmt: skip
        if not six:
            dot_rows_each(
                dot, P16, R, C, jo, (s * gps + gi) * rows, rows, v * 64, Q4,
                [((t0 + r) * K + s * SUPER + gi * g) // 4 for r in range(R)], bits,
                widening_scales(SDf, jo, s, gi, v),
            )  # fmt: skip
        if scaled_rows:
            for r in T.unroll(R):
                acc[T.ramp((r * nvec + v) * LANES, 1, LANES)] = (
                    acc[T.ramp((r * nvec + v) * LANES, 1, LANES)] + dot[T.ramp(r * LANES, 1, LANES)]
                )
        else:
            for r in T.unroll(R):
                accumulate(
                    acc, accm, (r * nvec + v) * LANES, dot, r * LANES, SDf, SMf, jo, s, gi, v,
                    gsum_of(BS, t0 + r, s, gi),
                )  # fmt: skip

    def next_line(C: Any, jo: Any, s: Any, i: Any) -> Any:
        # the address of cache line i (in address order: each code row's nvec lines, then the
        # next row's) of super-block s + 1's codes in tile jo (after the last, the next tile's
        # first)
        return T.address_of(C[jo, (s + 1) * gps * rows + i // nvec, i % nvec * 64])

    @T.macro
    def prefetch_share(C: Any, jo: Any, s: Any, k: Any, parts: Any) -> None:
        # the k-th of `parts` even shares of the next_line's of super-block s, one share a pass
        # of rows_at, so that the next super-block streams while this one's passes run
        for i in range(k * lines // parts, (k + 1) * lines // parts):
            prefetch_line(next_line(C, jo, s, i))

    @T.macro
    def prefetch_own(C: Any, jo: Any, s: Any, gi: Any, v: Any) -> None:
        # pass (gi, v)'s share of the next_line's of super-block s, when one block of rows
        # makes all the passes: the `rows` lines from line (gi * nvec + v) * rows on, as
        # prefetch_share splits them but without its divisions by the number of blocks.
        # Measured on the Qwen 1.5B's matrices, one thread, Zen 3, against the one-row loop
        # (T = 2) and the pair shares (T = 3, 4) before (benchmarks/tvm_q8_stream.py
        # --against, docs/tvm.md): ffn_gate (Q4_K) cold
        # at T = 2 0.69x, T = 3 0.69-0.74x, T = 4 0.82-0.88x; ffn_down (Q6_K) 0.91-0.99x,
        # 0.83-0.86x, 0.92-0.94x.
        # Each pass's own column of code rows instead (lines 4 * tile bytes apart): the Q6_K
        # call at T = 2 1.1x the one-row loop's time; the pair shares of several blocks at
        # T = 9 (cold 1.17x)
        for r in T.unroll(rows):
            i: T.let = (gi * nvec + v) * rows + r
            prefetch_line(next_line(C, jo, s, i))

    @T.macro
    def rows_at(
        C: Any, Q4: Any, BS: Any, GN: Any, GP: Any, XD: Any, U: Any, Df: Any, Mf: Any,
        SDf: Any, SMf: Any, Yf: Any, jo: Any, s: Any, t0: Any, n: Any, fresh: int, R: int,
        prefetch: bool,
    ) -> None:  # fmt: skip
        # rows t0 .. t0 + R - 1 of super-block s of tile jo (body's buffers; R = ROWS, or 2
        # where PAIRED: T = 2, and the two rows left over after blocks of ROWS), of which the
        # last `fresh` are written (fresh < R: the block that ends at row n, over rows that a
        # block before wrote already, which are computed again, the same bits, and left).
        # `prefetch`: whether the passes prefetch (where PAIRED, not the two rows left over:
        # the blocks of ROWS rows before them prefetched the next super-block). 4-bit codes:
        # the tile's vectors outer (unrolled) and the groups inner, so that a vector's ROWS
        # sums stay in registers over the super-block and each activation broadcast is used
        # once (groups outer, vectors inner, LLVM hoisted the broadcasts out of the vector
        # loop and spilled them: Q4_K at T = 9 0.78x, benchmarks/tvm_q8_layout.py); the
        # super-block's codes (8 KB a 64-wide tile) stay in L1 between the vectors' passes.
        # Only with the dot products in VECTORS_OUTER; 6-bit codes (unpacked in U before) and
        # the other dot products keep the groups outer, as measured faster or no slower there
        acc = stack_buffer((R * nvec * LANES,), "int32")
        accm = stack_buffer((R * nvec * LANES,), "int32")
        dot = stack_buffer((R * LANES,), "int32")
        P16 = stack_buffer((R * 32,), "int16")  # dot_rows_each's int16 sums
        for i in T.unroll(R * nvec):
            acc[T.ramp(i * LANES, 1, LANES)] = T.broadcast(0, LANES)
            accm[T.ramp(i * LANES, 1, LANES)] = T.broadcast(0, LANES)
        # each pass's share of the prefetch: this block is number (t0 + ROWS - fresh) // ROWS
        # of the (n + 1) // ROWS blocks of ROWS rows (the overlapping one, if any, last);
        # both orders issue it a pair of groups at a time: with a vector's whole share at
        # the start of its pass (32 lines at T = 3, more than the core's outstanding misses),
        # the Qwen 1.5B's ffn_gate (Q4_K) cold at T = 3 took 442 us, its cold T = 1 plus its
        # warm T = 3; a pair's share (8 lines) 293 (benchmarks/tvm_q8_stream.py, docs/tvm.md).
        # Where PAIRED: one block that prefetches (T < 2 * R) a group and vector's lines a
        # pass (prefetch_own); several, a pair's share of the n // R whole blocks' passes
        if six or building_isa() not in VECTORS_OUTER:  # the groups outer, vectors inner
            for gp in range(gps // 2):  # groups by pairs (of sub-scales, centred)
                if not paired_rows:
                    prefetch_share(
                        C, jo, s, (t0 + R - fresh) // R * (gps // 2) + gp,
                        (n + 1) // R * (gps // 2),
                    )  # fmt: skip
                elif prefetch and n >= 2 * R:
                    prefetch_share(C, jo, s, t0 // R * (gps // 2) + gp, n // R * (gps // 2))
                for h in T.unroll(2):
                    for v in range(nvec):
                        if paired_rows and prefetch and n < 2 * R:
                            prefetch_own(C, jo, s, gp * 2 + h, v)
                        group_rows(
                            BS, GN, GP, Q4, U, C, SDf, SMf, acc, accm, dot, P16, jo, s, t0,
                            gp * 2 + h, v, R,
                        )  # fmt: skip
        else:  # the tile's vectors outer: a vector's sums stay in registers over the groups
            for v in T.unroll(nvec):
                for gp in range(gps // 2):
                    prefetch_share(
                        C, jo, s, ((t0 + R - fresh) // R * nvec + v) * (gps // 2) + gp,
                        (n + 1) // R * nvec * (gps // 2),
                    )  # fmt: skip
                    for h in T.unroll(2):
                        group_rows(
                            BS, GN, GP, Q4, U, C, SDf, SMf, acc, accm, dot, P16, jo, s, t0,
                            gp * 2 + h, v, R,
                        )  # fmt: skip
        for v in T.unroll(nvec):
            for r in T.unroll(R - fresh, R):
                finish(
                    Df, Mf, SDf, SMf, XD, GP, Yf, acc, accm, (r * nvec + v) * LANES, jo, s,
                    t0 + r, v, scaled_rows,
                )  # fmt: skip

    @T.macro
    def row_at(
        C: Any, Q4: Any, BS: Any, GN: Any, GP: Any, XD: Any, U: Any, Df: Any, Mf: Any,
        SDf: Any, SMf: Any, Yf: Any, jo: Any, s: Any, n: Any, t: Any,
    ) -> None:  # fmt: skip
        # row t of super-block s of tile jo (body's buffers): the groups outer, the tile's
        # vectors inner (a loop where ROLLED, as qlinear_q8's one-row loop, for every row this
        # runs), so that each code row's 4 * tile bytes are read in one go (a vector a pass
        # read one cache line in 4 of each row: benchmarks/tvm_q8_stream.py, docs/tvm.md)
        acc = stack_buffer((nvec * LANES,), "int32")
        accm = stack_buffer((nvec * LANES,), "int32")
        dot = stack_buffer((LANES,), "int32")
        for v in T.unroll(nvec):
            acc[T.ramp(v * LANES, 1, LANES)] = T.broadcast(0, LANES)
            accm[T.ramp(v * LANES, 1, LANES)] = T.broadcast(0, LANES)
        for gp in range(gps // 2):  # groups by pairs (of sub-scales, centred)
            for h in T.unroll(2):
                # immutable bindings (T.let): a plain assignment in a loop is a mutable
                # variable, a 4-byte workspace buffer stored to every group
                gi: T.let = gp * 2 + h
                gsum: T.let = gsum_of(BS, t, s, gi)
                at: T.let = (t * K + s * SUPER + gi * g) // 4  # of the group's q
                # the codes AHEAD groups on, a cold matrix streaming: code row r by row r % n,
                # so that the rows' passes share them (with row 0's pass issuing all and the
                # others none, the Qwen 1.5B's ffn_gate (Q4_K) cold at T = 2 took 301 us, 248
                # shared; T = 1 the same: benchmarks/tvm_q8_stream.py, docs/tvm.md)
                for r in range(rows):
                    if r % n == t:
                        prefetch_rows(C, jo, (s * gps + gi + AHEAD) * rows + r, 1, tile)
                for v in vector_loop(nvec, rolled):
                    dot[T.ramp(0, 1, LANES)] = dot_start(BS, GN, t, s, gi)
                    if six and n > 1:  # rows of 4 weights, unpacked
                        dot[T.ramp(0, 1, LANES)] = dot_flat(
                            dot[T.ramp(0, 1, LANES)], U, (gi * g // 4 * nvec + v) * 64,
                            nvec * 64, g // 4, Q4, at, bits,
                        )  # fmt: skip
                    else:  # as stored (6-bit codes unpacked in registers)
                        dot[T.ramp(0, 1, LANES)] = dot_rows(
                            dot[T.ramp(0, 1, LANES)], C, jo, (s * gps + gi) * rows,
                            rows, v * 64, Q4, at, bits,
                        )  # fmt: skip
                    accumulate(acc, accm, v * LANES, dot, 0, SDf, SMf, jo, s, gi, v, gsum)
        for v in T.unroll(nvec):
            finish(Df, Mf, SDf, SMf, XD, GP, Yf, acc, accm, v * LANES, jo, s, t, v)

    @T.macro
    def tile_at(
        C: Any, Q4: Any, BS: Any, GN: Any, GP: Any, XD: Any, Df: Any, Mf: Any, SDf: Any,
        SMf: Any, Yf: Any, jo: Any, n: Any, R: int,
    ) -> None:  # fmt: skip
        # tile jo's outputs for all n rows: R = 1, one row at a time; R = 2, the two rows of
        # T = 2 in one block; R = ROWS, ROWS rows at a time, then one at a time
        for t in range(n):
            Yf[T.ramp(t * N + jo * tile, 1, tile)] = T.broadcast(T.float32(0), tile)
        for s in range(ns):
            U = T.alloc_buffer((SUPER // 4 * 4 * tile,), "uint8", scope="local")
            if six and n > 1:  # the super-block's codes unpacked once for all rows
                for p in range(SUPER // 16):
                    if R == 1:  # (in blocks of rows, rows_at's passes prefetch)
                        prefetch_rows(C, jo, ((s + 1) * SUPER // 16 + p) * 3, 3, tile)
                    for v in T.unroll(nvec):
                        base: T.let = (s * SUPER // 16 + p) * 3
                        c0: T.let = C[jo, base, T.ramp(v * 64, 1, 64)]
                        c1: T.let = C[jo, base + 1, T.ramp(v * 64, 1, 64)]
                        c2: T.let = C[jo, base + 2, T.ramp(v * 64, 1, 64)]
                        U[T.ramp(((4 * p) * nvec + v) * 64, 1, 64)] = _six(c0, c2, 0)
                        U[T.ramp(((4 * p + 1) * nvec + v) * 64, 1, 64)] = _six(c0, c2, 1)
                        U[T.ramp(((4 * p + 2) * nvec + v) * 64, 1, 64)] = _six(c1, c2, 2)
                        U[T.ramp(((4 * p + 3) * nvec + v) * 64, 1, 64)] = _six(c1, c2, 3)
            if R == 2:
                rows_at(C, Q4, BS, GN, GP, XD, U, Df, Mf, SDf, SMf, Yf, jo, s, 0, n, 2, 2, True)
            elif R == ROWS:
                for tb in range(n // ROWS):
                    rows_at(
                        C, Q4, BS, GN, GP, XD, U, Df, Mf, SDf, SMf, Yf, jo, s, tb * ROWS, n, ROWS,
                        ROWS, True,
                    )  # fmt: skip
                if n % ROWS == ROWS - 1:
                    if paired_rows:  # the last two rows in a block of their own
                        rows_at(
                            C, Q4, BS, GN, GP, XD, U, Df, Mf, SDf, SMf, Yf, jo, s, n - 2, n, 2, 2,
                            False,
                        )  # fmt: skip
                    else:  # the last rows in a block that overlaps the one before
                        rows_at(
                            C, Q4, BS, GN, GP, XD, U, Df, Mf, SDf, SMf, Yf, jo, s, n - ROWS, n,
                            ROWS - 1, ROWS, True,
                        )  # fmt: skip
                else:
                    for t in range(n // ROWS * ROWS, n):
                        row_at(C, Q4, BS, GN, GP, XD, U, Df, Mf, SDf, SMf, Yf, jo, s, n, t)
            else:
                for t in range(n):
                    row_at(C, Q4, BS, GN, GP, XD, U, Df, Mf, SDf, SMf, Yf, jo, s, n, t)

    @T.macro
    def tiles(
        C: Any, Q4: Any, BS: Any, GN: Any, GP: Any, XD: Any, Df: Any, Mf: Any, SDf: Any,
        SMf: Any, Yf: Any, n: Any, R: int,
    ) -> None:  # fmt: skip
        # every tile's outputs, in a parallel loop (a kernel of its own), with tile_at's R
        for jo in T.parallel(N // tile):
            tile_at(C, Q4, BS, GN, GP, XD, Df, Mf, SDf, SMf, Yf, jo, n, R)

    @T.macro
    def quantize(Xf: Any, Q: Any, BS: Any, GN: Any, GP: Any, XD: Any, t: Any, s: Any) -> None:
        # vectors of LANES: the largest magnitude and the first value that has it
        # (signed: its sign sets the codes'), then the codes and their sums of 16, as
        # the scalar loop (first strictly larger magnitude) computed them
        at: T.let = t * K + s * SUPER
        amax: T.let = amax_of(Xf, at, SUPER // LANES)
        mx: T.let = Xf[at + first_at(Xf, at, SUPER // LANES, amax) % SUPER]
        e: T.let = T.if_then_else(amax > T.float32(0), T.float32(-127) / mx, T.float32(0))
        for h in range(SUPER // 16):
            q: T.let = T.min(
                T.Cast(
                    "int32x16",
                    T.nearbyint(T.broadcast(e, LANES) * Xf[T.ramp(at + h * 16, 1, LANES)]),
                ),
                T.broadcast(T.int32(127), LANES),
            )
            Q[T.ramp(at + h * 16, 1, LANES)] = T.Cast("int8x16", q)
            BS[t * nbs + s * (SUPER // 16) + h] = T.call_llvm_pure_intrin(
                "int32", "llvm.vector.reduce.add.v16i32", q
            )
        if centred:
            for gi in range(gps):
                GN[t * ng + s * gps + gi] = -(z + CENTRE) * gsum_of(BS, t, s, gi)
            for p in range(gps // 2):
                GP[t * npair + s * (gps // 2) + p] = (gsum_of(BS, t, s, 2 * p) & 65535) | (
                    gsum_of(BS, t, s, 2 * p + 1) << 16
                )
        XD[t * ns + s] = T.if_then_else(amax > T.float32(0), T.float32(1) / e, T.float32(0))

    @T.macro
    def body(X: Any, C: Any, D: Any, M: Any, SD: Any, SM: Any, Y: Any, n: Any) -> None:
        Q = T.alloc_buffer((n * K,), "int8")
        Yf = T.decl_buffer((n * N,), "float32", data=Y.data)  # flat: contiguous vectors
        Df = T.decl_buffer((nt * ns * tile,), "float16", data=D.data)
        Mf = T.decl_buffer((nt * ns * tile,), "float16", data=M.data)
        SDf = T.decl_buffer((nt * (K // g) * tile,), sub, data=SD.data)
        SMf = T.decl_buffer((nt * (K // g) * tile,), sub, data=SM.data)
        Q4 = T.decl_buffer((n * (K // 4),), "int32", data=Q.data)
        XD = T.alloc_buffer((n * ns,), "float32")
        BS = T.alloc_buffer((n * nbs,), "int32")
        GN = T.alloc_buffer((n * ng,), "int32")  # centred: -(z + CENTRE) * each group's sum
        GP = T.alloc_buffer((n * npair,), "int32")  # centred: pairs of group sums, int16 halves
        Xf = T.decl_buffer((n * K,), "float32", data=X.data)
        # the activations' super-blocks, one at a time below ROWS rows; from ROWS rows on in a
        # parallel loop of their own (on the calling thread alone they kept the other threads
        # waiting: benchmarks/tvm_perf_sample.py)
        if n < ROWS:
            for t in range(n):
                for s in range(ns):
                    quantize(Xf, Q, BS, GN, GP, XD, t, s)
        else:
            for ts in T.parallel(n * ns):
                quantize(Xf, Q, BS, GN, GP, XD, ts // ns, ts % ns)
        # a kernel (a parallel loop) for one row, one for T = 2 where PAIRED (else the one-row
        # loop's), another for more, so that T = 1 compiles to the one-row loop alone, as
        # before; an early variant with both in one timed up to 1.2x slower at T = 1 in single
        # runs, but identical code moved 0.90-1.18x between runs of that benchmark
        # (benchmarks/tvm_q8_layout.py): not shown either way
        # (paired_rows is known when the kernel is built: the other dot products compile
        # no block of two at all)
        if paired_rows:
            if n == 1:
                tiles(C, Q4, BS, GN, GP, XD, Df, Mf, SDf, SMf, Yf, n, 1)
            elif n == 2:
                tiles(C, Q4, BS, GN, GP, XD, Df, Mf, SDf, SMf, Yf, n, 2)
            else:
                tiles(C, Q4, BS, GN, GP, XD, Df, Mf, SDf, SMf, Yf, n, ROWS)
        elif n < ROWS:
            tiles(C, Q4, BS, GN, GP, XD, Df, Mf, SDf, SMf, Yf, n, 1)
        else:
            tiles(C, Q4, BS, GN, GP, XD, Df, Mf, SDf, SMf, Yf, n, ROWS)

    if affine:

        @T.prim_func(private=True)
        def qlinear(
            x_h: T.handle, c_h: T.handle, d_h: T.handle, m_h: T.handle, sd_h: T.handle,
            sm_h: T.handle, y_h: T.handle,
        ) -> None:  # fmt: skip
            T.func_attr({"tirx.noalias": True})
            n = T.int64()
            X = T.match_buffer(x_h, (n, K), "float32")
            C = T.match_buffer(c_h, (nt, codes, 4 * tile), "uint8")
            D = T.match_buffer(d_h, (nt, ns, tile), "float16")
            M = T.match_buffer(m_h, (nt, ns, tile), "float16")
            SD = T.match_buffer(sd_h, sub_shape, sub)
            SM = T.match_buffer(sm_h, sub_shape, sub)
            Y = T.match_buffer(y_h, (n, N), "float32")
            body(X, C, D, M, SD, SM, Y, n)

        return qlinear

    @T.prim_func(private=True)
    def qlinear_d(x_h: T.handle, c_h: T.handle, d_h: T.handle, sd_h: T.handle, y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        X = T.match_buffer(x_h, (n, K), "float32")
        C = T.match_buffer(c_h, (nt, codes, 4 * tile), "uint8")
        D = T.match_buffer(d_h, (nt, ns, tile), "float16")
        SD = T.match_buffer(sd_h, sub_shape, sub)
        Y = T.match_buffer(y_h, (n, N), "float32")
        body(X, C, D, D, SD, SD, Y, n)

    return qlinear_d
