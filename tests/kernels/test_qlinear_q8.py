"""The int8-activation quantized linear layer (kernels/qlinear_q8.py, AVX512-VNNI).

Exactness: the kernel equals :func:`edgespec.kernels.reference.qlinear_q8` bit for bit (the
integer sums are exact; the float32 part is the same correctly rounded fused multiply-adds in
the same order, emulated exactly in NumPy by :func:`~edgespec.kernels.reference.fma32`), and
batched rows equal one-row calls bit for bit. Against float activations (``x @ W^T`` in
float64 with the file's dequantized weights) the error is within
:func:`~edgespec.kernels.reference.qlinear_q8_bound` (derived, not fitted; the test prints the
measured error as a fraction of it).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

from edgespec.errors import EdgespecError  # noqa: E402
from edgespec.kernels import qlinear, qlinear_q8, qlinear_q8k, reference  # noqa: E402

from .test_qlinear import random_blocks  # noqa: E402

#: the dot products the kernels are built with (kernels/qlinear_q8.py ISAS), each where this
#: CPU runs it: the same loops, layouts and exact sums, so every one is tested bit for bit
#: against the one reference ("generic" everywhere, "vnni" and "avx2" where the CPU has them)
ISAS = [
    pytest.param(i, marks=pytest.mark.skipif(not qlinear_q8.cpu_has(i), reason=f"needs {i}"))
    for i in qlinear_q8.ISAS
]
#: the instruction each puts in the assembly, with its register width (asserted: the variant
#: really is built; LLVM picks the generic one's)
MARKER = {"vnni": r"vpdpbusd\s.*zmm", "avxvnni": r"vpdpbusd\s.*ymm", "avx2": r"vpmaddubsw\s"}


def _compile(fmt: str, k: int, n: int, isa: str) -> Any:
    import tvm

    from edgespec.kernels.tuning import host_target

    with qlinear_q8.building_with(isa):
        func = qlinear.qlinear_kernel(fmt, k, n).with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target=host_target())
    if isa in MARKER:
        assert re.search(MARKER[isa], lib.mod.inspect_source("asm"))
    return lib


def _run(fn: Any, x: np.ndarray, w: qlinear_q8.Q8Weight) -> np.ndarray:
    import tvm

    dev = tvm.cpu(0)
    y = tvm.runtime.empty((x.shape[0], w.shape[0]), "float32", dev)
    ops = [tvm.runtime.tensor(a, dev) for a in w.operands()]
    fn(tvm.runtime.tensor(x.astype(np.float32), dev), *ops, y)
    return y.numpy()


def _same_rows_in_any_batch(
    fn: Any, x: np.ndarray, w: qlinear_q8.Q8Weight, got: np.ndarray, rows: int
) -> None:
    """Each row of ``x`` gives the bits of ``got`` (``fn`` on all of ``x``, a whole number of
    the kernel's ``rows``-row blocks) when run alone, in fewer rows than a block (the
    K-quant kernel's block of two at T = 2), and in one block with one or two rows left over
    (the one-row loop; a last block that overlaps the one before)."""
    assert len(x) % rows == 0 and len(x) >= rows + 3
    for t in range(len(x)):
        np.testing.assert_array_equal(_run(fn, x[t : t + 1], w), got[t : t + 1])
    for a, b in [(0, rows - 1), (2, 3 + rows), (1, 3 + rows)]:
        np.testing.assert_array_equal(_run(fn, x[a:b], w), got[a:b])


def _activations(t: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """LLM-like rows: unit normal with a few outliers, one all-zero block (amax = 0)."""
    x = rng.standard_normal((t, k)).astype(np.float32)
    x[:, 3] *= 20
    x[0, 32:64] = 0
    return x


#: the 32-weight-block types (activations as Q8_0 / Q8_1); the rest are K-quants (Q8_K)
BLOCK32 = [f for f in qlinear_q8.FORMATS if not qlinear.get_layout(f).sub]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", BLOCK32)
@pytest.mark.parametrize("n", [128, 48])  # tiles of 64, and of 16
def test_kernel_equals_reference_bit_for_bit(fmt: str, n: int, isa: str) -> None:
    if not qlinear_q8.exact_with(qlinear_q8.q8_format(fmt) or "", isa):
        with pytest.raises(EdgespecError, match="overflow"), qlinear_q8.building_with(isa):
            qlinear.qlinear_kernel(fmt + "@q8", 160, n)
        return
    rng = np.random.default_rng(3)
    k = 160
    packed = qlinear.from_gguf(random_blocks(fmt, n, k, rng), fmt)
    w = qlinear_q8.convert(packed)
    code, dper, mper = packed.parts()
    np.testing.assert_array_equal(w.codes(), code.astype(np.int32))  # the layout round-trips
    d, m = dper[:, ::32], mper[:, ::32] if packed.layout.affine else None
    lib = _compile(w.fmt, k, n, isa)
    x = _activations(9, k, rng)
    got = _run(lib["main"], x, w)
    want = reference.qlinear_q8(x, code.astype(np.int32), d, m)
    np.testing.assert_array_equal(got, want)
    _same_rows_in_any_batch(lib["main"], x, w, got, qlinear_q8k.ROWS)
    exact = x.astype(np.float64) @ packed.dequantize().astype(np.float64).T
    bound = reference.qlinear_q8_bound(x, code, d, m)
    err = np.abs(got - exact)
    print(f"{fmt} n={n}: max |err| {err.max():.2e}, max err/bound {(err / bound).max():.3f}")
    assert (err <= bound).all()


def test_fma32_is_one_rounding() -> None:
    a = np.float32(1 + 2.0**-12)
    c = np.float32(-(1 + 2.0**-11))
    # a*a = 1 + 2^-11 + 2^-24 exactly: one rounding keeps 2^-24, two would lose it
    assert reference.fma32(np.array([a]), np.array([a]), np.array([c]))[0] == np.float32(2.0**-24)
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal(10000).astype(np.float32) for _ in range(3))
    exact = a.astype(np.float64) * b + c  # exact in float64 here only when no cancellation
    assert np.abs(reference.fma32(a, b, c) - exact).max() <= np.abs(exact).max() * 2.0**-23


def test_bound_catches_swapped_nibbles() -> None:
    rng = np.random.default_rng(5)
    packed = qlinear.from_gguf(random_blocks("Q4_1", 64, 128, rng), "Q4_1")
    code, dper, mper = packed.parts()
    x = _activations(2, 128, rng)
    bad = code.reshape(64, -1, 2, 4)[:, :, ::-1, :].reshape(64, 128)
    got = reference.qlinear_q8(x, bad.astype(np.int32), dper[:, ::32], mper[:, ::32])
    exact = x.astype(np.float64) @ packed.dequantize().astype(np.float64).T
    assert (
        np.abs(got - exact) > reference.qlinear_q8_bound(x, code, dper[:, ::32], mper[:, ::32])
    ).any()


def test_unsupported_formats_say_so() -> None:
    assert qlinear_q8.q8_format("IQ2_XS") is None
    assert qlinear_q8.q8_format("Q4_1") == "Q4_1@q8"
    with pytest.raises(EdgespecError, match="no int8-activation kernel"):
        qlinear.qlinear_kernel("IQ2_XS@q8", 256, 64)
    with pytest.raises(EdgespecError, match="multiple of 16"):
        qlinear_q8.operand_types("Q4_1@q8", 64, 40)


def _k_packed(fmt: str, n: int, k: int, rng: np.random.Generator) -> qlinear.PackedQWeight:
    """A random K-quant tensor; for :data:`~edgespec.kernels.qlinear.MIXED_K`, Q4_K rows
    stacked on Q6_K rows as the fused QKV of a Q4_K_M file."""
    if fmt != qlinear.MIXED_K:
        return qlinear.from_gguf(random_blocks(fmt, n, k, rng), fmt)
    parts = [
        qlinear.QBlocks.from_gguf(random_blocks(t, n // 2, k, rng), t).to(fmt)
        for t in ("Q4_K", "Q6_K")
    ]
    return qlinear.pack(qlinear.concat(parts))


def _packed(fmt: str, n: int, k: int, rng: np.random.Generator) -> qlinear.PackedQWeight:
    """A random tensor of type ``fmt``: :func:`_k_packed` for the K-quants, else the file's
    blocks."""
    if qlinear.get_layout(fmt).sub:
        return _k_packed(fmt, n, k, rng)
    return qlinear.from_gguf(random_blocks(fmt, n, k, rng), fmt)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("fmt", ["Q4_K", "Q5_K", "Q6_K", qlinear.MIXED_K])
@pytest.mark.parametrize("n", [128, 48])
def test_k_quant_kernel_equals_reference_bit_for_bit(fmt: str, n: int, isa: str) -> None:
    rng = np.random.default_rng(4)
    k = 512
    packed = _k_packed(fmt, n, k, rng)
    w = qlinear_q8.convert(packed)
    code, dper, mper = packed.parts()
    np.testing.assert_array_equal(w.codes(), code.astype(np.int32))
    o = packed.ops
    d = qlinear.untile(o["d"]).astype(np.float32)
    m = qlinear.untile(o["m"]).astype(np.float32) if "m" in o else None
    sd = qlinear.untile(o["sd"]).astype(np.int32)
    sm = qlinear.untile(o["sm"]).astype(np.int32) if "sm" in o else None
    lib = _compile(w.fmt, k, n, isa)
    x = _activations(9, k, rng)
    x[1, 256:] = 0  # an all-zero super-block
    # the largest |x| twice, of both signs (the scale takes the first one's: mx)
    x[2, 5] = -x[2, 3]
    x[3, 2] = -x[3, 3]
    got = _run(lib["main"], x, w)
    want = reference.qlinear_q8k(x, code.astype(np.int32), d, m, sd, sm)
    np.testing.assert_array_equal(got, want)
    _same_rows_in_any_batch(lib["main"], x, w, got, qlinear_q8k.ROWS)
    exact = x.astype(np.float64) @ packed.dequantize().astype(np.float64).T
    bound = reference.qlinear_q8k_bound(x, dper * code, mper)
    err = np.abs(got - exact)
    print(f"{fmt} n={n}: max |err| {err.max():.2e}, max err/bound {(err / bound).max():.3f}")
    assert (err <= bound).all()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    ("fmt", "fill"),
    [(f, 255) for f in ["Q4_1", "Q4_0", "Q5_1", "Q4_K", "Q6_K", qlinear.MIXED_K, "Q8_0"]]
    + [("Q8_0", 0), ("Q4_K", 0)],
)
def test_exact_at_the_largest_codes_and_activations(fmt: str, fill: int, isa: str) -> None:
    """Every stored code at its largest (4-bit 15, 6-bit 63; Q8_0's 255 and 0, codes 127 and
    -128) times activations all +127 (row 0) or all -127 (rows 1 and 2, so that the K-quant
    kernel's blocks of rows run, of three and, on rows 0 and 1, of two): the most AVX2's int16 sums
    of ``vpmaddubsw`` products ever hold (a 4-bit block's 8 products: 30,480; two of 6-bit
    codes: 32,004; one pair of Q8_0's signed codes: 32,512), so a run one product longer, or
    a saturating step, would break the bit-for-bit equality. Q4_K's codes 0 and 15, less
    :data:`~edgespec.kernels.qlinear_q8k.CENTRE`, put a group's sum at the ends of the int16
    range its sub-scale is multiplied in (-32,512 and 28,448)."""
    rng = np.random.default_rng(8)
    n, k = 64, 512
    sub = qlinear.get_layout(fmt).sub
    packed = _packed(fmt, n, k, rng)
    w = qlinear_q8.convert(packed)
    w.ops["c"][:] = fill  # every stored code at one end of its range
    bits = qlinear_q8.stored_bits(w.fmt)
    assert np.unique(w.codes()).size == 1
    assert fmt == "Q4_K" and fill == 0 or np.abs(w.codes()).max() >= (1 << bits) // 2 - 1
    x = np.ones((qlinear_q8k.ROWS, k), np.float32)
    x[1:] = -1
    lib = _compile(w.fmt, k, n, isa)
    got = _run(lib["main"], x, w)
    code = w.codes()
    o = packed.ops
    if sub:
        d = qlinear.untile(o["d"]).astype(np.float32)
        m = qlinear.untile(o["m"]).astype(np.float32) if "m" in o else None
        sd = qlinear.untile(o["sd"]).astype(np.int32)
        sm = qlinear.untile(o["sm"]).astype(np.int32) if "sm" in o else None
        want = reference.qlinear_q8k(x, code, d, m, sd, sm)
    else:
        d, m = w.scales()
        want = reference.qlinear_q8(x, code, d, m)
    np.testing.assert_array_equal(got, want)
    # rows 0 and 1 alone: the K-quant kernel's block of two rows at T = 2
    np.testing.assert_array_equal(_run(lib["main"], x[:2], w), want[:2])


@pytest.mark.parametrize("fmt", list(qlinear_q8.FORMATS))
def test_codes_round_trip_in_the_files_bits(fmt: str) -> None:
    """Every type's codes survive the layout; Q5_x/Q6_K (and the mixed K layout) take 0.75
    bytes a weight (4 + 2 bit planes), 4-bit types 0.5, Q8_0 1."""
    rng = np.random.default_rng(6)
    n, k = 64, 512
    packed = _packed(fmt, n, k, rng)
    w = qlinear_q8.convert(packed)
    code = packed.codes()
    np.testing.assert_array_equal(w.codes(), code)
    bits = qlinear_q8.stored_bits(w.fmt)
    assert w.ops["c"].nbytes * 8 == n * k * bits
    assert bits == {"Q8_0": 8}.get(fmt, 4 if qlinear.get_layout(fmt).code_bits == 4 else 6)
    if bits == 6:  # every code of the 6-bit range is used here, so both planes are exercised
        assert code.min() <= -16 or code.max() >= 16
        assert len(np.unique(code)) >= 20


@pytest.mark.parametrize("fmt", ["Q4_K", "Q5_K", "Q6_K", qlinear.MIXED_K, "Q4_1"])
def test_operands_as_declared_and_sub_scales_paired_for_q4_k(fmt: str) -> None:
    """Each converted operand has the shape and type the graph declares for it; Q4_K's
    sub-scales and sub-offsets (alone) are stored by pairs of groups, byte ``2l + h`` of row
    ``p`` the float path's ``[2p + h, l]`` (``qlinear_q8.paired``)."""
    rng = np.random.default_rng(9)
    n, k = 128, 512
    packed = _packed(fmt, n, k, rng)
    w = qlinear_q8.convert(packed)
    declared = qlinear_q8.operand_types(w.fmt, k, n)
    assert [(o.shape, str(o.dtype)) for o in w.operands()] == [(s, str(d)) for s, d in declared]
    assert qlinear_q8.paired(w.fmt) == (fmt == "Q4_K")
    for part in ("sd", "sm") if fmt == "Q4_K" else ():
        flat = packed.ops[part]  # [N/tile, K/32, tile]
        nt, groups, tile = flat.shape
        got = w.ops[part].reshape(nt, groups // 2, tile, 2)
        for h in range(2):
            np.testing.assert_array_equal(got[:, :, :, h], flat[:, h::2, :])


def test_six_bit_layout_is_the_documented_one() -> None:
    """A known pattern: weight ``i`` of one feature has code ``u = i % 64`` (z = 32)."""
    u = (np.arange(32) % 64).astype(np.uint8)[None, :]
    b = qlinear_q8._pack6(u)[0]  # rows 3p, 3p + 1, 3p + 2 of 4 bytes each, p = 0, 1
    assert list(b[:4]) == [0 | 4 << 4, 1 | 5 << 4, 2 | 6 << 4, 3 | 7 << 4]
    assert list(b[4:8]) == [8 | 12 << 4, 9 | 13 << 4, 10 | 14 << 4, 11 | 15 << 4]
    assert list(b[8:12]) == [0, 0, 0, 0]  # codes < 16: no high bits
    hi = [(16 + 4 * j + i) >> 4 for j in range(4) for i in range(4)]  # 1 each
    assert list(b[20:24]) == [sum(hi[4 * j + i] << 2 * j for j in range(4)) for i in range(4)]
    np.testing.assert_array_equal(qlinear_q8._unpack6(b[None, :]), u.astype(np.int32))


def test_q8_0_takes_signed_codes_on_avx2() -> None:
    """AVX2's ``vpmaddubsw`` sums adjacent products in int16 with saturation: Q8_0's stored
    codes (up to 255) times 127 twice would overflow it, so with AVX2 the kernel takes them
    back as signed bytes (``|c| <= 128`` times ``+-127`` twice fits) and starts from ``z = 0``;
    VNNI keeps the stored codes. Both are int8 kernels; the bit-for-bit tests run Q8_0 on
    every dot product this CPU has."""
    rng = np.random.default_rng(7)
    packed = qlinear.from_gguf(random_blocks("Q8_0", 64, 64, rng), "Q8_0")
    with qlinear_q8.building_with("avx2"):
        assert isinstance(qlinear_q8.prefer(packed), qlinear_q8.Q8Weight)
        assert qlinear_q8.signed_codes(8) and not qlinear_q8.signed_codes(6)
    with qlinear_q8.building_with("vnni"):
        assert isinstance(qlinear_q8.prefer(packed), qlinear_q8.Q8Weight)
        assert not qlinear_q8.signed_codes(8)
    six = qlinear.from_gguf(random_blocks("Q6_K", 64, 256, rng), "Q6_K")
    with qlinear_q8.building_with("avx2"):  # 6-bit codes: 2 * 63 * 127 < 2^15, exact
        assert isinstance(qlinear_q8.prefer(six), qlinear_q8.Q8Weight)


def test_every_dot_product_has_its_instructions() -> None:
    assert set(qlinear_q8.DOTS) == set(qlinear_q8.ISAS)


@pytest.mark.parametrize(
    ("flags", "isa"),
    [
        ({"avx2", "avx_vnni", "avx512_vnni"}, "vnni"),
        ({"avx2", "avx_vnni"}, "avxvnni"),  # a laptop core since Alder Lake: no AVX-512
        ({"avx2"}, "avx2"),
        ({"sse4_2"}, None),
    ],
)
def test_the_cpus_best_dot_product_is_chosen(
    flags: set[str], isa: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(qlinear_q8, "_cpu_flags", lambda: frozenset(flags))
    assert qlinear_q8.int8_isa() == isa


@pytest.mark.parametrize("fmt", ["Q4_0", "Q8_0", "Q4_K", "Q6_K"])
def test_avx_vnni_kernels_build_for_a_cpu_without_avx512(fmt: str) -> None:
    """Compiled for Alder Lake (AVX-VNNI, no AVX-512), the avxvnni kernels use the VEX-encoded
    256-bit ``vpdpbusd`` and no 512-bit register, so they run on such a laptop (the
    bit-for-bit tests run them where this CPU has avx_vnni)."""
    import tvm
    from tvm.target import Target

    n, k = 64, 512
    with qlinear_q8.building_with("avxvnni"):
        func = qlinear.qlinear_kernel(fmt + "@q8", k, n).with_attr("global_symbol", "main")
    target = Target({"kind": "llvm", "mcpu": "alderlake", "mtriple": "x86_64-linux-gnu"})
    asm = tvm.compile(tvm.IRModule({"main": func}), target=target).mod.inspect_source("asm")
    assert re.search(r"\{vex\}\s*vpdpbusd\s.*ymm", asm)
    assert "zmm" not in asm


@pytest.mark.parametrize("fmt", ["Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K", qlinear.MIXED_K])
def test_numpy_emulation_equals_the_kernel(fmt: str) -> None:
    """:func:`edgespec.runtimes.numpy_q8act.int8_matmul` (the NumPy reference model's
    int8-activation matrices, what the gguf-q8act build is held to) computes what this CPU's
    kernel computes, bit for bit, on the packed weights the build loads: for the 32-block
    types and the K-quants (super-block scales and sub-scales untiled from the float path's
    layout); ``x @ W`` through :class:`~edgespec.runtimes.numpy_q8act.Q8ActMatrix` too."""
    from edgespec.runtimes.numpy_q8act import Q8ActMatrix, int8_matmul

    isa = qlinear_q8.int8_isa()
    if isa is None:
        pytest.skip("gguf-q8act needs avx512_vnni or avx2")
    rng = np.random.default_rng(11)
    n, k = 64, 512
    packed = _packed(fmt, n, k, rng)
    fn = int8_matmul(packed)
    assert fn is not None
    w = qlinear_q8.convert(packed)
    x = _activations(5, k, rng)
    want = _run(_compile(w.fmt, k, n, isa)["main"], x, w)
    np.testing.assert_array_equal(fn(x), want)
    xs = x.astype(np.float64).reshape(5, 1, k)  # any leading shape, the caller's dtype back
    got = xs @ Q8ActMatrix(fn, (k, n))
    assert got.dtype == np.float64 and got.shape == (5, 1, n)
    np.testing.assert_array_equal(got[:, 0], want.astype(np.float64))
