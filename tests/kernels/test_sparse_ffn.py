"""The TVM chunk-sparse FFN (kernels/sparse_ffn.py) against the NumPy references
(kernels/reference.py ``sparse_ffn`` / ``dense_ffn``, evaluated in float64).

Tolerance: :func:`ffn_bound`, a first-order forward error bound of the float32 evaluation,
derived from the expression (Higham's ``gamma_n`` for each dot product, the activation's
largest slope for the error it carries forward, one unit roundoff per elementwise operation).
The error actually measured, as a fraction of it, is printed by
``python benchmarks/sparse_ffn_kernel.py`` (docs/sparsity.md).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

from edgespec.errors import EdgespecError  # noqa: E402
from edgespec.kernels import KERNELS, reference  # noqa: E402
from edgespec.kernels.sparse_ffn import (  # noqa: E402
    BUCKETS,
    OBJECTS,
    FFNKernels,
    FFNShape,
    QuantizedWeight,
    aligned_zeros,
    bucket_for,
    dense_ffn,
    dense_ffn_q8,
    ffn_bound,
    quantize_rows,
    sparse_ffn,
    sparse_ffn_q8,
)

D, F, S = 64, 256, 16  # width, FFN width, neurons per block (16 blocks)


def weights(rng: np.random.Generator, d: int = D, f: int = F) -> dict[str, np.ndarray]:
    """gate/up ``[F, d]`` and ``down_t [F, d]``, float32, 64-byte aligned (read in place)."""
    out = {}
    for name, fan_in in (("gate", d), ("up", d), ("down_t", f)):
        a = aligned_zeros((f, d), np.float32)
        a[...] = rng.standard_normal((f, d)) * fan_in**-0.5
        out[name] = a
    return out


@pytest.fixture(scope="module")
def kern() -> FFNKernels:
    """One compiled-kernel cache for the module (each shape compiles once, about a second)."""
    return FFNKernels()


def run(
    kern: FFNKernels,
    w: dict[str, np.ndarray],
    x: np.ndarray,
    rows: np.ndarray | None,
    *,
    gated: bool = True,
    act: str = "silu",
    scale: np.ndarray | None = None,
) -> np.ndarray:
    gate = w["gate"] if gated else None
    return kern.run(x, rows, gate, w["up"], w["down_t"].T, act=act, scale=scale)


def reference_masked(
    w: dict[str, np.ndarray],
    x: np.ndarray,
    rows: np.ndarray,
    *,
    gated: bool,
    act: str,
    scale: np.ndarray | None,
) -> np.ndarray:
    """The dense reference in float64 with every neuron outside ``rows`` weighted 0."""
    full = np.zeros((x.shape[0], F))
    full[:, rows] = 1.0 if scale is None else scale
    g = w["gate"].astype(np.float64) if gated else None
    return reference.dense_ffn(
        x.astype(np.float64),
        g,
        w["up"].astype(np.float64),
        w["down_t"].T.astype(np.float64),
        act=act,
        scale=full,
    )


def check_bound(
    y: np.ndarray,
    w: dict[str, np.ndarray],
    x: np.ndarray,
    rows: np.ndarray,
    *,
    gated: bool,
    act: str,
    scale: np.ndarray | None,
) -> None:
    exact = reference_masked(w, x, rows, gated=gated, act=act, scale=scale)
    gate = w["gate"] if gated else None
    bound = ffn_bound(x, rows, gate, w["up"], w["down_t"].T, act=act, scale=scale)
    err = np.abs(y - exact)
    assert (err <= bound).all(), (act, gated, float((err / bound).max()))


@pytest.mark.parametrize(
    ("act", "gated", "scaled"),
    [("silu", True, False), ("relu", False, True), ("gelu_tanh", True, True)],
)
def test_all_rows_active_equals_dense(
    kern: FFNKernels, act: str, gated: bool, scaled: bool
) -> None:
    """Every row listed: the sparse kernel gives the dense kernel's result bit for bit (same
    schedule, same summation order), and both are within the float32 bound of float64."""
    rng = np.random.default_rng(0)
    w = weights(rng)
    x = rng.standard_normal((3, D)).astype(np.float32)
    rows = np.arange(F)
    scale = rng.random((3, F)).astype(np.float32) if scaled else None
    y_sparse = run(kern, w, x, rows, gated=gated, act=act, scale=scale)
    y_dense = run(kern, w, x, None, gated=gated, act=act, scale=scale)
    assert y_sparse.shape == (3, D) and y_sparse.dtype == np.float32
    np.testing.assert_array_equal(y_sparse, y_dense)
    check_bound(y_sparse, w, x, rows, gated=gated, act=act, scale=scale)


@pytest.mark.parametrize("m_rows", BUCKETS)
def test_matches_masked_dense_at_every_row_count(kern: FFNKernels, m_rows: int) -> None:
    """Every M a kernel is compiled for (1 .. 16): sparse == dense reference of the masked
    FFN."""
    rng = np.random.default_rng(m_rows)
    w = weights(rng)
    x = rng.standard_normal((m_rows, D)).astype(np.float32)
    blocks = np.sort(rng.choice(F // S, 5, replace=False))
    rows = reference.block_rows(blocks, S)
    scale = rng.random((m_rows, rows.size)).astype(np.float32)
    y = run(kern, w, x, rows, scale=scale)
    assert y.shape == (m_rows, D)
    check_bound(y, w, x, rows, gated=True, act="silu", scale=scale)


def test_a_chunk_runs_its_own_row_count() -> None:
    """A 9-row verify chunk runs a 9-row kernel, not 16 rows with 7 of them zero (the 16-row
    kernel took 3x the time: benchmarks/sparse_ffn_rows.py); padded buckets still give the
    same rows bit for bit."""
    rng = np.random.default_rng(9)
    w = weights(rng)
    x = rng.standard_normal((9, D)).astype(np.float32)
    rows = reference.block_rows(np.array([2, 3, 11]), S)
    kern = FFNKernels()
    y = run(kern, w, x, rows)
    assert [shape.m_rows for shape in kern._built] == [9]
    padded = FFNKernels(buckets=(16,))
    np.testing.assert_array_equal(run(padded, w, x, rows), y)


@pytest.mark.parametrize("n_rows", [1, S - 1, F - 1])
def test_active_row_counts_at_the_edges(kern: FFNKernels, n_rows: int) -> None:
    """One row, a part of a block, all but one row (A is a variable of one kernel)."""
    rng = np.random.default_rng(n_rows)
    w = weights(rng)
    x = rng.standard_normal((2, D)).astype(np.float32)
    rows = np.sort(rng.choice(F, n_rows, replace=False))
    check_bound(run(kern, w, x, rows), w, x, rows, gated=True, act="silu", scale=None)


def test_rows_not_listed_are_never_read(kern: FFNKernels) -> None:
    """NaN in every row of gate, up and down_t outside the list changes nothing."""
    rng = np.random.default_rng(7)
    w = weights(rng)
    x = rng.standard_normal((4, D)).astype(np.float32)
    rows = reference.block_rows(np.array([1, 2, 9, 15]), S)
    clean = run(kern, w, x, rows)
    poisoned = weights(np.random.default_rng(7))  # same values, other buffers
    off = np.setdiff1d(np.arange(F), rows)
    for a in poisoned.values():
        a[off] = np.nan
    np.testing.assert_array_equal(run(kern, poisoned, x, rows), clean)


def test_registry_entries_and_reference_signature() -> None:
    """KERNELS serves both entry points, called exactly like the NumPy ones (float64 inputs,
    ``down`` as a C-contiguous ``[d, F]``: converted once, result back in x's dtype)."""
    assert KERNELS.get("sparse_ffn:tvm") is sparse_ffn
    assert KERNELS.get("dense_ffn:tvm") is dense_ffn
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, D))
    gate, up = (rng.standard_normal((F, D)) * D**-0.5 for _ in range(2))
    down = np.ascontiguousarray(rng.standard_normal((D, F)) * F**-0.5)
    rows = reference.block_rows(np.array([0, 5]), S)
    y = sparse_ffn(x, rows, gate, up, down)
    assert y.dtype == np.float64
    want = reference.sparse_ffn(x, rows, gate, up, down)
    w = {"gate": gate, "up": up, "down_t": down.T}
    bound = ffn_bound(x, rows, gate, up, down, act="silu", scale=None)
    # the kernel rounds its inputs to float32 first: add that rounding's effect, measured
    x32 = x.astype(np.float32).astype(np.float64)
    w32 = {k: v.astype(np.float32).astype(np.float64) for k, v in w.items()}
    rounding = np.abs(
        reference.sparse_ffn(x32, rows, w32["gate"], w32["up"], w32["down_t"].T) - want
    )
    assert (np.abs(y - want) <= bound + rounding).all()


def test_empty_rows_give_zeros(kern: FFNKernels) -> None:
    w = weights(np.random.default_rng(1))
    y = run(kern, w, np.ones((2, D), np.float32), np.array([], dtype=np.int64))
    np.testing.assert_array_equal(y, np.zeros((2, D), np.float32))


def test_bad_input_is_one_line(kern: FFNKernels) -> None:
    w = weights(np.random.default_rng(2))
    x = np.ones((2, D), np.float32)
    with pytest.raises(EdgespecError, match=r"rows must lie in \[0, 256\)"):
        run(kern, w, x, np.array([3, F]))
    with pytest.raises(EdgespecError, match=r"rows must lie in \[0, 256\); got -1\.\.3"):
        run(kern, w, x, np.array([3, -1, 0]))  # negative: one check covers both bounds
    with pytest.raises(EdgespecError, match="exceed the largest"):
        bucket_for(max(BUCKETS) + 1)
    with pytest.raises(EdgespecError, match="shapes do not fit"):
        kern.run(x[:, :-1], np.array([0]), None, w["up"], w["down_t"].T, act="silu", scale=None)
    with pytest.raises(EdgespecError, match="scale must be"):
        run(kern, w, x, np.array([0, 1]), scale=np.ones((2, 3), np.float32))
    with pytest.raises(EdgespecError, match="unknown activation"):
        run(kern, w, x, np.array([0]), act="tanh")


def test_record_keys_name_the_shape() -> None:
    assert FFNShape(4, 576, 1536).key == "sparse_ffn-silu-gated-m4-d576-f1536"
    assert FFNShape(4, 576, 1536, quant="q8_0").key == "sparse_ffn-silu-gated-m4-d576-f1536-q8_0"
    assert (
        FFNShape(1, 8, 16, "relu", False, True, False).key
        == "dense_ffn-relu-plain-scaled-m1-d8-f16"
    )


def test_reused_buffers_and_weights_by_object(kern: FFNKernels) -> None:
    """The wrapper reuses its input and output rows between calls and recognises weights by
    object: a result is the caller's own (not the next call's buffer), weights edited in
    place are seen (used in place), an array whose shape was reassigned is not taken for its
    old self, and views made anew on every call (``down_t.T``) neither pile up nor go stale."""
    rng = np.random.default_rng(11)
    w = weights(rng)
    x1 = rng.standard_normal((3, D)).astype(np.float32)
    x2 = rng.standard_normal((3, D)).astype(np.float32)
    rows = reference.block_rows(np.array([0, 5, 11]), S)
    y1 = run(kern, w, x1, rows)
    keep = y1.copy()
    y2 = run(kern, w, x2, rows)
    np.testing.assert_array_equal(y1, keep)  # the second call wrote elsewhere
    assert not np.array_equal(y1, y2)
    w["up"][rows] *= 2  # in place: the cached tensor views the same memory
    check_bound(run(kern, w, x1, rows), w, x1, rows, gated=True, act="silu", scale=None)
    up = w["up"]
    (flat,) = kern.weight(up)
    up.shape = (F // 2, 2 * D)  # the same object, another layout: not the cached tensor
    assert tuple(kern.weight(up)[0].shape) == (F // 2, 2 * D)
    up.shape = (F, D)
    assert tuple(kern.weight(up)[0].shape) == tuple(flat.shape) == (F, D)
    before = len(kern._weights)
    for _ in range(3 * OBJECTS // 2):  # a new transposed view on every call
        kern.weight(w["down_t"].T.T)
    assert len(kern._by_object) <= OBJECTS
    assert len(kern._weights) <= before + 1  # one address, one tensor
    down = w["down_t"].T  # a caller's stable [d, F] view: known by object, transposed
    assert kern.weight(down, transposed=True)[0] is kern.weight(w["down_t"])[0]
    assert kern._by_object[(id(down), True)][0] is down


def test_reused_row_lists_and_scales(kern: FFNKernels) -> None:
    """The per-thread row list and scales serve every union size A and row count M of a
    bucket: a longer call after a shorter one, padding rows zeroed after a fuller call, int32
    rows, and more rows than F (repeated) through their own buffers."""
    rng = np.random.default_rng(12)
    w = weights(rng)
    calls = [  # (M, rows): M = 3 and 4 share bucket 4
        (4, reference.block_rows(np.array([0, 3, 7, 9, 15]), S)),
        (3, reference.block_rows(np.array([2]), S)),
        (4, reference.block_rows(np.array([1, 4, 5]), S).astype(np.int32)),
        (3, np.concatenate([np.arange(F), np.arange(S)])),  # F + S rows, some twice
        (3, reference.block_rows(np.array([6, 8]), S)),
    ]
    for m_rows, rows in calls:
        x = rng.standard_normal((m_rows, D)).astype(np.float32)
        scale = rng.uniform(0.5, 1.5, (m_rows, len(rows))).astype(np.float32)
        y = run(kern, w, x, rows, gated=False, act="relu", scale=scale)
        exact = reference.sparse_ffn(  # a repeated row counts twice, as in the kernel
            x.astype(np.float64),
            rows,
            None,
            w["up"].astype(np.float64),
            w["down_t"].T.astype(np.float64),
            act="relu",
            scale=scale.astype(np.float64),
        )
        bound = ffn_bound(x, rows, None, w["up"], w["down_t"].T, act="relu", scale=scale)
        assert (np.abs(y - exact) <= bound).all(), (m_rows, len(rows))


# --- Q8_0 weights (``sparse_ffn:tvm-q8``) ------------------------------------------------------


@pytest.fixture(scope="module")
def kern_q8() -> FFNKernels:
    return FFNKernels(quant="q8_0")


def dequantized(w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each weight through gguf-py's own Q8_0 quantizer and dequantizer (rows of d): the
    float32 weights the Q8_0 kernel computes with, found independently of it."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    q8 = GGMLQuantizationType.Q8_0
    out = {}
    for name, a in w.items():
        b = aligned_zeros(a.shape, np.float32)
        b[...] = dequantize(quantize(a, q8), q8)
        out[name] = b
    return out


def test_quantize_rows_is_gguf_q8_0() -> None:
    """codes x scales is exactly gguf-py's dequantization of its Q8_0 bytes; a row length
    that is not a multiple of 32 is one line."""
    w = weights(np.random.default_rng(20))
    codes, scales = quantize_rows(w["up"])
    assert codes.dtype == np.int8 and codes.shape == (F, D)
    assert scales.dtype == np.float16 and scales.shape == (F, D // 32)
    mine = codes.astype(np.float32) * np.repeat(scales.astype(np.float32), 32, axis=1)
    np.testing.assert_array_equal(mine, dequantized({"up": w["up"]})["up"])
    with pytest.raises(EdgespecError, match="multiple of 32"):
        quantize_rows(np.ones((4, 48), np.float32))


@pytest.mark.parametrize(
    ("m_rows", "act", "gated", "scaled"),
    [(1, "silu", True, False), (5, "relu", False, True), (16, "gelu_tanh", True, True)],
)
def test_q8_matches_the_reference_on_dequantized_weights(
    kern_q8: FFNKernels, m_rows: int, act: str, gated: bool, scaled: bool
) -> None:
    """The Q8_0 kernel, given float weights, computes the masked FFN of their Q8_0
    dequantization (gguf-py's) within the float32 bound of that evaluation."""
    rng = np.random.default_rng(21 + m_rows)
    w = weights(rng)
    x = rng.standard_normal((m_rows, D)).astype(np.float32)
    rows = reference.block_rows(np.array([0, 4, 5, 13]), S)
    scale = rng.uniform(0.5, 1.5, (m_rows, len(rows))).astype(np.float32) if scaled else None
    y = run(kern_q8, w, x, rows, gated=gated, act=act, scale=scale)
    check_bound(y, dequantized(w), x, rows, gated=gated, act=act, scale=scale)
    # and it is not the float32 weights' result: the quantization shows
    assert not np.allclose(y, run(FFNKernels(), w, x, rows, gated=gated, act=act, scale=scale))


def test_q8_all_rows_equal_dense_and_unlisted_rows_are_never_read(kern_q8: FFNKernels) -> None:
    """Every row listed gives the Q8_0 dense twin bit for bit; NaN in the scales of every
    row outside the list (the kernel's own quantized copy) changes nothing."""
    rng = np.random.default_rng(30)
    w = weights(rng)
    x = rng.standard_normal((3, D)).astype(np.float32)
    down = w["down_t"].T
    dense = kern_q8.run(x, None, w["gate"], w["up"], down, act="silu", scale=None)
    every = kern_q8.run(x, np.arange(F), w["gate"], w["up"], down, act="silu", scale=None)
    np.testing.assert_array_equal(every, dense)
    rows = reference.block_rows(np.array([2, 3, 11]), S)
    clean = kern_q8.run(x, rows, w["gate"], w["up"], down, act="silu", scale=None)
    off = np.setdiff1d(np.arange(F), rows)
    for name in ("gate", "up"):
        kern_q8.held(w[name])[1][off] = np.nan
    kern_q8.held(down, transposed=True)[1][off] = np.nan
    poisoned = kern_q8.run(x, rows, w["gate"], w["up"], down, act="silu", scale=None)
    np.testing.assert_array_equal(poisoned, clean)
    assert np.isnan(kern_q8.run(x, None, w["gate"], w["up"], down, act="silu", scale=None)).all()


def test_q8_registry_entries_are_lossy() -> None:
    """``sparse_ffn:tvm-q8`` and its dense twin are registered and say they are lossy (the
    model labels its output so); the float32 ones do not."""
    from edgespec.sparse.kernel import dense_kernel, is_lossy, sparse_kernel

    assert KERNELS.get("sparse_ffn:tvm-q8") is sparse_ffn_q8
    assert KERNELS.get("dense_ffn:tvm-q8") is dense_ffn_q8
    assert dense_kernel("tvm-q8") is dense_ffn_q8
    assert is_lossy(sparse_kernel("tvm-q8")) and is_lossy(dense_ffn_q8)
    assert not is_lossy(sparse_kernel("tvm")) and not is_lossy(sparse_kernel("numpy"))
    with pytest.raises(EdgespecError, match="unknown FFN weight form 'q4'"):
        FFNKernels(quant="q4")


def test_q8_weights_given_quantized(kern_q8: FFNKernels) -> None:
    """Weights given as QuantizedWeight (a model that dropped its floats) compute what the
    same weights given as floats do, bit for bit; a float32 kernel, another form or a down
    in the wrong orientation is one line."""
    rng = np.random.default_rng(40)
    w = weights(rng)
    x = rng.standard_normal((4, D)).astype(np.float32)
    rows = reference.block_rows(np.array([1, 6, 7]), S)
    floats = kern_q8.run(x, rows, w["gate"], w["up"], w["down_t"].T, act="silu", scale=None)
    q = {k: QuantizedWeight.of(v) for k, v in w.items()}
    down = q["down_t"].T
    assert down.shape == (D, F) and q["up"].shape == (F, D)
    given = kern_q8.run(x, rows, q["gate"], q["up"], down, act="silu", scale=None)
    np.testing.assert_array_equal(given, floats)
    np.testing.assert_array_equal(q["up"].dequantize(), dequantized({"up": w["up"]})["up"])
    with pytest.raises(EdgespecError, match="need a kernel on q8_0 weights"):
        FFNKernels().run(x, rows, q["gate"], q["up"], down, act="silu", scale=None)
    with pytest.raises(EdgespecError, match=r"passed as down_t\.T"):
        kern_q8.weight(q["down_t"], transposed=True)
    with pytest.raises(EdgespecError, match="no quantizer for FFN weights in 'q4_0'"):
        QuantizedWeight.of(w["up"], "q4_0")
