"""The quantized linear layer of the tvm backend's graph (kernels/qlinear.py) against the
GGUF file's dequantized weights (``gguf.quants.dequantize``, float64 matmul).

Tolerance: :func:`edgespec.kernels.qlinear.qlinear_bound`, the float32 forward error bound of
the kernel's factored sums (derived in its docstring, not fitted); the test prints the error
measured as a fraction of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

from edgespec.errors import EdgespecError  # noqa: E402
from edgespec.kernels import qlinear, reference  # noqa: E402
from edgespec.kernels.qmatmul import QWeight  # noqa: E402

FORMATS = [f for f, lay in qlinear.LAYOUTS.items() if lay.type_size]  # file types
#: types gguf-py cannot quantize: random blocks (random codes and sub-scales, LLM-like scales)
K_QUANTS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208, None)}


def random_blocks(qtype: str, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``uint8[N, K/block * type_size]``: ``gguf.quants.quantize`` of weights of LLM-like size,
    or (K-quants) random bytes with float16 scales of that size (d ~ 1e-3, dmin = |d|)."""
    from gguf import GGMLQuantizationType, quants

    if qtype not in K_QUANTS:
        w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
        return quants.quantize(w, GGMLQuantizationType[qtype])
    size = qlinear.get_layout(qtype).type_size
    raw = rng.integers(0, 256, (n * k // qlinear.SUPER, size), dtype=np.uint8)
    d = (rng.standard_normal(len(raw)) * 1e-3).astype(np.float16)
    at, at_min = K_QUANTS[qtype]
    raw[:, at : at + 2] = d.view(np.uint8).reshape(-1, 2)
    if at_min is not None:
        raw[:, at_min : at_min + 2] = np.abs(d).view(np.uint8).reshape(-1, 2)
    return raw.reshape(n, -1)


def _compile(fmt: str, k: int, n: int) -> Any:
    import tvm

    from edgespec.kernels.tuning import host_target

    func = qlinear.qlinear_kernel(fmt, k, n).with_attr("global_symbol", "main")
    return tvm.compile(tvm.IRModule({"main": func}), target=host_target())["main"]


def _run(fn: Any, x: np.ndarray, w: qlinear.PackedQWeight) -> np.ndarray:
    import tvm

    dev = tvm.cpu(0)
    y = tvm.runtime.empty((x.shape[0], w.shape[0]), "float32", dev)
    ops = [tvm.runtime.tensor(a, dev) for a in w.operands()]
    fn(tvm.runtime.tensor(x.astype(np.float32), dev), *ops, y)
    return y.numpy()


@pytest.mark.parametrize("fmt", FORMATS)
def test_packed_weights_are_the_files_values(fmt: str) -> None:
    from gguf import GGMLQuantizationType, quants

    k = 96 if fmt not in K_QUANTS else 512
    raw = random_blocks(fmt, 128, k, np.random.default_rng(1))
    w = qlinear.from_gguf(raw, fmt)
    want = quants.dequantize(raw, GGMLQuantizationType[fmt])
    np.testing.assert_array_equal(w.dequantize(), want)  # bit for bit
    nbytes = sum(a.nbytes for a in w.operands())
    if qlinear.get_layout(fmt).code_bits == 4 or fmt == "Q8_0":  # the file's bytes (Q4_K: +3%)
        assert raw.size <= nbytes <= raw.size * 1.03
    assert w.shape == (128, k)


@pytest.mark.parametrize("fmt", ["Q4_K", "Q6_K"])
def test_real_tensors_are_the_files_values(fmt: str, qwen15b_path: Path) -> None:
    """One real tensor of each K-quant type of the Qwen 1.5B file, bit for bit."""
    from gguf import GGMLQuantizationType, GGUFReader, quants

    t = next(t for t in GGUFReader(qwen15b_path).tensors if t.tensor_type.name == fmt)
    raw = np.asarray(t.data)[:256]
    w = qlinear.from_gguf(raw, fmt)
    want = quants.dequantize(raw, GGMLQuantizationType[fmt])
    np.testing.assert_array_equal(w.dequantize(), want)
    x = np.random.default_rng(5).standard_normal((3, w.shape[1])).astype(np.float32)
    got = _run(_compile(fmt, w.shape[1], w.shape[0]), x, w)
    err = np.abs(got - reference.qmatmul(x, raw, fmt))
    bound = qlinear.qlinear_bound(x, w)
    print(f"{t.name} ({fmt}): max err / bound {float((err / bound).max()):.3g}")
    assert (err <= bound).all()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n", [128, 48])  # tile 64; tile 16
def test_kernel_within_bound_and_rows_independent(fmt: str, n: int) -> None:
    rng = np.random.default_rng(2)
    k = 160 if fmt not in K_QUANTS else 512
    raw = random_blocks(fmt, n, k, rng)
    w = qlinear.from_gguf(raw, fmt)
    fn = _compile(fmt, k, n)
    x = rng.standard_normal((9, k)).astype(np.float32)
    got = _run(fn, x, w)
    err = np.abs(got - reference.qmatmul(x, raw, fmt))
    bound = qlinear.qlinear_bound(x, w)
    print(f"{fmt} n={n}: max err / bound {float((err / bound).max()):.3g}")
    assert (err <= bound).all()
    # every row sums in the same order whatever T is: one row at a time is bit for bit equal
    one = np.concatenate([_run(fn, x[i : i + 1], w) for i in range(len(x))])
    np.testing.assert_array_equal(one, got)


def test_bound_catches_swapped_nibbles() -> None:
    rng = np.random.default_rng(3)
    raw = random_blocks("Q4_1", 64, 64, rng)
    q = QWeight.from_gguf(raw, "Q4_1")
    swapped = QWeight(q.fmt, (q.qs >> 4) | (q.qs << 4), q.d, q.m)
    w = qlinear.pack(swapped)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    err = np.abs(_run(_compile("Q4_1", 64, 64), x, w) - reference.qmatmul(x, raw, "Q4_1"))
    assert (err > qlinear.qlinear_bound(x, qlinear.from_gguf(raw, "Q4_1"))).any()


@pytest.mark.parametrize(
    ("parts", "fmt"),
    [
        (("Q4_K", "Q6_K"), qlinear.MIXED_K),
        (("Q5_0", "Q8_0"), "Q8_0"),
        (("Q4_0", "Q5_0"), "Q5_0"),
        (("Q4_0", "Q8_0"), "Q8_0"),
    ],
)
def test_mixed_fused_matrix(parts: tuple[str, str], fmt: str) -> None:
    """A fused QKV whose parts differ in type, as Q4_K_M files make them: the Qwen 1.5B's
    Q4_K q/k and Q6_K v rows in one kernel (MIXED_K), the Qwen 0.5B's Q5_0 q/k and Q8_0 v
    rows, and the other mixes of one-scale 32-blocks, in the widest type. The file's values
    bit for bit, the kernel within its bound of the reference, each row alone as in the
    batch."""
    from gguf import GGMLQuantizationType, quants

    rng = np.random.default_rng(7)
    raws = {t: random_blocks(t, 64, 512, rng) for t in parts}
    assert qlinear.common_format(set(raws)) == fmt
    w = qlinear.pack(
        qlinear.concat([qlinear.QBlocks.from_gguf(r, t).to(fmt) for t, r in raws.items()])
    )
    want = np.concatenate([quants.dequantize(r, GGMLQuantizationType[t]) for t, r in raws.items()])
    np.testing.assert_array_equal(w.dequantize(), want)
    x = rng.standard_normal((9, 512)).astype(np.float32)
    fn = _compile(fmt, 512, 128)
    got = _run(fn, x, w)
    ref = np.concatenate([reference.qmatmul(x, r, t) for t, r in raws.items()], axis=1)
    err = np.abs(got - ref)
    bound = qlinear.qlinear_bound(x, w)
    print(f"{fmt}: max err / bound {float((err / bound).max()):.3g}")
    assert (err <= bound).all()
    one = np.concatenate([_run(fn, x[i : i + 1], w) for i in range(len(x))])
    np.testing.assert_array_equal(one, got)


def test_mixed_formats_that_have_no_layout() -> None:
    """A mix with no common layout runs in float32 (None); MIXED_K is not a file type; a
    one-scale type is not narrowed."""
    rng = np.random.default_rng(9)
    assert qlinear.common_format({"Q4_K", "Q5_0"}) is None
    assert qlinear.common_format({"Q4_1", "Q8_0"}) is None
    with pytest.raises(EdgespecError, match="not a GGUF type"):
        qlinear.QBlocks.from_gguf(random_blocks("Q4_K", 16, 256, rng), qlinear.MIXED_K)
    with pytest.raises(EdgespecError, match="cannot multiply"):
        qlinear.QBlocks.from_gguf(random_blocks("Q8_0", 16, 256, rng), "Q8_0").to("Q5_0")


def test_bound_catches_misplaced_sub_scales() -> None:
    rng = np.random.default_rng(6)
    raw = random_blocks("Q6_K", 64, 512, rng)
    w = qlinear.from_gguf(raw, "Q6_K")
    shifted = qlinear.PackedQWeight("Q6_K", w.ops | {"sd": np.roll(w.ops["sd"], 1, axis=1)})
    x = rng.standard_normal((2, 512)).astype(np.float32)
    err = np.abs(_run(_compile("Q6_K", 512, 64), x, shifted) - reference.qmatmul(x, raw, "Q6_K"))
    assert (err > qlinear.qlinear_bound(x, w)).any()


def test_fused_weights_and_bad_input() -> None:
    rng = np.random.default_rng(4)
    a, b = random_blocks("Q8_0", 64, 64, rng), random_blocks("Q8_0", 32, 64, rng)
    fused = qlinear.pack(
        qlinear.concat([QWeight.from_gguf(a, "Q8_0"), QWeight.from_gguf(b, "Q8_0")])
    )
    want = np.concatenate(
        [
            qlinear.from_gguf(a, "Q8_0").dequantize(),
            qlinear.pack(QWeight.from_gguf(b, "Q8_0"), 32).dequantize(),
        ]
    )
    np.testing.assert_array_equal(fused.dequantize(), want)
    with pytest.raises(EdgespecError, match="one GGUF type"):
        qlinear.concat(
            [
                QWeight.from_gguf(a, "Q8_0"),
                QWeight.from_gguf(random_blocks("Q4_0", 32, 64, rng), "Q4_0"),
            ]
        )
    with pytest.raises(EdgespecError, match="multiple of 32"):
        qlinear.qlinear_kernel("Q4_0", 48, 64)
    with pytest.raises(EdgespecError, match="multiple of 256 for Q6_K"):
        qlinear.qlinear_kernel("Q6_K", 128, 64)
    with pytest.raises(EdgespecError, match="no quantized matmul kernel"):
        qlinear.qlinear_kernel("Q2_K", 256, 64)
