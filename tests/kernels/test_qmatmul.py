"""The TVM block-quantized matmul (kernels/qmatmul.py) against the NumPy reference
(kernels/reference.py: ``gguf.quants.dequantize`` then a float64 matmul).

Tolerance: :func:`edgespec.kernels.reference.qmatmul_bound`, the forward error bound of a
float32 dot product of length K (Higham). The error actually measured, as a fraction of that
bound, is printed by ``python benchmarks/tvm_qmatmul.py`` (docs/tvm.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

from edgespec.errors import EdgespecError  # noqa: E402
from edgespec.kernels import KERNELS, reference  # noqa: E402
from edgespec.kernels.qmatmul import (  # noqa: E402
    FORMATS,
    QMatmul,
    QWeight,
    bucket_for,
    schedule_cpu_lanes,
)


def random_blocks(qtype: str, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``uint8[N, K/32 * type_size]``: random codes, float16 scales of LLM-like size."""
    fmt = FORMATS[qtype]
    blocks = rng.integers(0, 256, (n, k // 32, fmt.type_size), dtype=np.uint8)
    d = (rng.standard_normal((n, k // 32)) * 0.01).astype(np.float16)
    blocks[:, :, 0:2] = d[..., None].view(np.uint8)
    if fmt.affine:
        m = (rng.standard_normal((n, k // 32)) * 0.05).astype(np.float16)
        blocks[:, :, 2:4] = m[..., None].view(np.uint8)
    return blocks.reshape(n, -1)


@pytest.mark.parametrize("qtype", sorted(FORMATS))
def test_random_blocks_match_reference(qtype: str) -> None:
    rng = np.random.default_rng(0)
    n, k = 96, 256
    raw = random_blocks(qtype, n, k, rng)
    kernel = QMatmul(QWeight.from_gguf(raw, qtype), buckets=(1, 4, 16))
    for m_rows in (1, 3, 9, 16):
        x = rng.standard_normal((m_rows, k)).astype(np.float32)
        y = kernel(x)
        assert y.shape == (m_rows, n) and y.dtype == np.float32
        err = np.abs(y - reference.qmatmul(x, raw, qtype))
        assert (err <= reference.qmatmul_bound(x, raw, qtype)).all(), (qtype, m_rows, err.max())


def test_lanes_schedule_for_several_rows() -> None:
    """schedule_cpu_lanes (the M = 1 default) is also correct with several rows."""
    rng = np.random.default_rng(4)
    raw = random_blocks("Q4_1", 40, 96, rng)
    kernel = QMatmul(
        QWeight.from_gguf(raw, "Q4_1"),
        scheduler=lambda f, t, k: schedule_cpu_lanes(f),
        buckets=(1, 3),
    )
    for m_rows in (1, 3):
        x = rng.standard_normal((m_rows, 96)).astype(np.float32)
        err = np.abs(kernel(x) - reference.qmatmul(x, raw, "Q4_1"))
        assert (err <= reference.qmatmul_bound(x, raw, "Q4_1")).all()


def test_wrong_nibble_order_is_caught() -> None:
    """The bound is tight enough to see a swapped nibble (the test can fail)."""
    rng = np.random.default_rng(1)
    raw = random_blocks("Q4_0", 32, 64, rng)
    w = QWeight.from_gguf(raw, "Q4_0")
    swapped = QWeight(w.fmt, ((w.qs >> 4) | (w.qs << 4)).astype(np.uint8), w.d, None)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    err = np.abs(QMatmul(swapped, buckets=(2,))(x) - reference.qmatmul(x, raw, "Q4_0"))
    assert (err > reference.qmatmul_bound(x, raw, "Q4_0")).any()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "rows"), [("blk.0.ffn_down.weight", None), ("token_embd.weight", 8192)]
)
def test_smollm2_tensor_matches_reference(smollm2_path: Path, name: str, rows: int | None) -> None:
    """A real Q4_1 projection and the Q8_0 embedding / tied LM head (first ``rows`` rows)."""
    from gguf import GGUFReader

    tensor = next(t for t in GGUFReader(smollm2_path).tensors if t.name == name)
    raw = np.asarray(tensor.data)[:rows]
    qtype = tensor.tensor_type.name
    kernel = QMatmul(QWeight.from_gguf(raw, qtype), buckets=(1, 16))
    rng = np.random.default_rng(2)
    k = kernel.weight.shape[1]
    for m_rows in (1, 16):
        x = rng.standard_normal((m_rows, k)).astype(np.float32)
        err = np.abs(kernel(x) - reference.qmatmul(x, raw, qtype))
        assert (err <= reference.qmatmul_bound(x, raw, qtype)).all(), (name, m_rows, err.max())


def test_registered_and_bad_input() -> None:
    assert KERNELS.get("qmatmul:tvm") is QMatmul
    assert KERNELS.get("qmatmul:numpy") is reference.qmatmul
    with pytest.raises(EdgespecError, match="supported: Q4_0, Q4_1, Q8_0"):
        QWeight.from_gguf(np.zeros((2, 22), np.uint8), "Q5_0")
    with pytest.raises(EdgespecError, match="exceed the largest kernel bucket"):
        bucket_for(17)
    w = QWeight.from_gguf(random_blocks("Q8_0", 4, 32, np.random.default_rng(3)), "Q8_0")
    with pytest.raises(EdgespecError, match="expects 32"):
        QMatmul(w, buckets=(1,))(np.zeros((1, 64), np.float32))
