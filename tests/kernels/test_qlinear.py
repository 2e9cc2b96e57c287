"""The quantized linear layer of the tvm backend's graph (kernels/qlinear.py) against the
GGUF file's dequantized weights (``gguf.quants.dequantize``, float64 matmul).

Tolerance: :func:`edgespec.kernels.qlinear.qlinear_bound`, the float32 forward error bound of
the kernel's factored sums (derived in its docstring, not fitted); the test prints the error
measured as a fraction of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

from edgespec.errors import EdgespecError  # noqa: E402
from edgespec.kernels import qlinear, reference  # noqa: E402
from edgespec.kernels.qmatmul import QWeight  # noqa: E402

FORMATS = ["Q4_0", "Q4_1", "Q8_0"]


def random_blocks(qtype: str, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``uint8[N, K/32 * type_size]``: ``gguf.quants.quantize`` of weights of LLM-like size."""
    from gguf import GGMLQuantizationType, quants

    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    return quants.quantize(w, GGMLQuantizationType[qtype])


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

    raw = random_blocks(fmt, 128, 96, np.random.default_rng(1))
    w = qlinear.from_gguf(raw, fmt)
    want = quants.dequantize(raw, GGMLQuantizationType[fmt])
    np.testing.assert_array_equal(w.dequantize(), want)  # bit for bit
    assert [a.nbytes for a in w.operands()] and sum(a.nbytes for a in w.operands()) == raw.size
    assert w.shape == (128, 96)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n", [128, 48])  # tile 64; tile 16
def test_kernel_within_bound_and_rows_independent(fmt: str, n: int) -> None:
    rng = np.random.default_rng(2)
    k = 160
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
    with pytest.raises(EdgespecError, match="no quantized matmul kernel"):
        qlinear.qlinear_kernel("Q6_K", 64, 64)
