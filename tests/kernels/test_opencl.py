"""The OpenCL path executed: TVM's OpenCL C for qmatmul, launched with pyopencl (PoCL on the
CPU here), against the NumPy reference and the llvm build.

Tolerance: each build is within :func:`edgespec.kernels.reference.qmatmul_bound` of the exact
product, so the two builds are within twice that bound of each other.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")
pytest.importorskip("pyopencl")

from edgespec.kernels import (  # noqa: E402
    KERNELS,
    qlinear,  # noqa: E402
    reference,
)
from edgespec.kernels.opencl import OpenCLQMatmul, generate  # noqa: E402
from edgespec.kernels.opencl_graph import (  # noqa: E402
    CL_QUANT,
    ClProgram,
    _qlinear,
    cl_operands,
    qlinear_name,
)
from edgespec.kernels.qmatmul import FORMATS, QMatmul, QWeight  # noqa: E402

from .test_qlinear import random_blocks  # noqa: E402


@pytest.fixture(scope="module")
def device(opencl_device: object) -> object:
    return opencl_device


def _raw(qtype: str, n: int, k: int, seed: int) -> np.ndarray:
    fmt = FORMATS[qtype]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (n, k // 32, fmt.type_size), dtype=np.uint8)
    blocks[:, :, 0:2] = (
        (rng.standard_normal((n, k // 32)) * 0.01).astype(np.float16)[..., None].view(np.uint8)
    )
    if fmt.affine:
        blocks[:, :, 2:4] = (
            (rng.standard_normal((n, k // 32)) * 0.05).astype(np.float16)[..., None].view(np.uint8)
        )
    return blocks.reshape(n, -1)


@pytest.mark.parametrize("qtype", sorted(FORMATS))
def test_opencl_matches_reference_and_llvm(device: object, qtype: str) -> None:
    n, k = 100, 128  # N not a multiple of the 64-thread groups: the bounds check runs too
    raw = _raw(qtype, n, k, 0)
    weight = QWeight.from_gguf(raw, qtype)
    ocl = OpenCLQMatmul(weight, buckets=(1, 16), device=device)
    cpu = QMatmul(weight, buckets=(1, 16))
    rng = np.random.default_rng(1)
    for m_rows in (1, 9):
        x = rng.standard_normal((m_rows, k)).astype(np.float32)
        y_ocl, y_cpu = ocl(x), cpu(x)
        bound = reference.qmatmul_bound(x, raw, qtype)
        assert (np.abs(y_ocl - reference.qmatmul(x, raw, qtype)) <= bound).all()
        assert (np.abs(y_ocl - y_cpu) <= 2 * bound).all()


def test_generated_source_is_opencl(device: object) -> None:
    gen = generate(QWeight.from_gguf(_raw("Q4_1", 64, 64, 2), "Q4_1"), 2)
    assert "__kernel void" in gen.source and "get_local_id(0)" in gen.source
    assert sorted(gen.params) == ["d", "m", "qs", "x", "y"]
    assert (gen.global_size, gen.local_size) == (64, 64)
    assert KERNELS.get("qmatmul:opencl") is OpenCLQMatmul


def test_missing_icd_is_one_clear_line(tmp_path: Path) -> None:
    """With no ICD registered (an empty vendors folder), one line names what is missing."""
    code = (
        "from edgespec.errors import EdgespecError\n"
        "from edgespec.kernels.opencl import cl_device\n"
        "try:\n    cl_device()\nexcept EdgespecError as e:\n    print(e)\n"
    )
    env = {**os.environ, "OCL_ICD_VENDORS": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and "no OpenCL device" in lines[0] and "pocl-opencl-icd" in lines[0]


#: (type, output features, with a bias): every type the OpenCL graph multiplies on its blocks,
#: tiles of 64 and of 16 (48 outputs: the launch's last group half idle); K-quants and the
#: mixed Q4_K/Q6_K format (Qwen's fused QKV) at K = 512, the others at K = 160
QCASES = [(f, n, False) for f in CL_QUANT for n in (128, 48)] + [("Q4_1", 128, True)]
QCASES += [(qlinear.MIXED_K, 128, True)]


def _k(fmt: str) -> int:
    return 512 if qlinear.get_layout(fmt).sub else 160


def _raw_packed(fmt: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, Any]:
    """``(the file's dequantized weights float32[N, K], the packed matrix)``; the mixed
    format as Qwen's QKV: Q4_K rows, then Q6_K rows."""
    from gguf import GGMLQuantizationType, quants

    k = _k(fmt)
    types = {"Q4_K": n // 2, "Q6_K": n - n // 2} if fmt == qlinear.MIXED_K else {fmt: n}
    raws = {t: random_blocks(t, rows, k, rng) for t, rows in types.items()}
    want = np.concatenate(
        [quants.dequantize(r, GGMLQuantizationType[t]) for t, r in raws.items()]
    ).astype(np.float32)
    blocks = [qlinear.QBlocks.from_gguf(r, t).to(fmt) for t, r in raws.items()]
    return want, qlinear.pack(qlinear.concat(blocks))


@pytest.fixture(scope="module")
def qprogram(device: object) -> ClProgram:
    """One OpenCL module holding the graph's quantized linear kernel for every case."""
    return ClProgram(
        {qlinear_name(f, _k(f), n, b): _qlinear(f, _k(f), n, b) for f, n, b in QCASES}, device
    )


@pytest.mark.parametrize(("fmt", "n", "bias"), QCASES)
def test_graph_qlinear_within_bound_and_rows_independent(
    qprogram: ClProgram, fmt: str, n: int, bias: bool
) -> None:
    """The OpenCL graph's ``qlinear`` on the CPU build's packed operands (float16 scales
    widened to float32, K-quants' integer sub-scales as they are) against the file's dequantized
    weights: within :func:`qlinear.qlinear_bound` (the kernel factors each group's sums as
    the CPU kernel does), and each row computed alone equal bit for bit."""
    rng = np.random.default_rng(3)
    k = _k(fmt)
    dense, w = _raw_packed(fmt, n, rng)
    np.testing.assert_array_equal(w.dequantize(), dense)  # the packing is the file's values
    b = rng.standard_normal(n).astype(np.float32)
    ops = {p: qprogram.buffer(a) for p, a in cl_operands(fmt, w.operands()).items()}
    assert set(ops) == set(qlinear.get_layout(fmt).parts())

    def run(x: np.ndarray) -> np.ndarray:
        y = qprogram.buffer(nbytes=x.shape[0] * n * 4)
        args = {"x": qprogram.buffer(x), "y": y, "n": x.shape[0], "b": qprogram.buffer(b)}
        qprogram.launch(qlinear_name(fmt, k, n, bias), n, **ops, **args)
        return qprogram.read(y, (x.shape[0], n))

    x = rng.standard_normal((9, k)).astype(np.float32)
    got = run(x)
    want = x.astype(np.float64) @ dense.astype(np.float64).T + (b if bias else 0)
    err = np.abs(got - want)
    bound = qlinear.qlinear_bound(x, w) + (np.abs(want) * 2.0**-24 if bias else 0)
    print(f"{fmt} n={n} bias={bias}: max err / bound {float((err / bound).max()):.3g}")
    assert (err <= bound).all()
    one = np.concatenate([run(x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_array_equal(one, got)


def test_misplaced_sub_scales_break_the_bound(qprogram: ClProgram) -> None:
    """The test above can fail: Q6_K's sub-scales shifted by one group (each group's
    scale applied to its neighbour's sums) leave the bound."""
    rng = np.random.default_rng(3)
    dense, w = _raw_packed("Q6_K", 128, rng)
    ops = cl_operands("Q6_K", w.operands())
    ops["sd"] = np.ascontiguousarray(np.roll(ops["sd"], 1, axis=1))
    bufs = {p: qprogram.buffer(a) for p, a in ops.items()}
    x = rng.standard_normal((2, 512)).astype(np.float32)
    y = qprogram.buffer(nbytes=2 * 128 * 4)
    args = {"x": qprogram.buffer(x), "y": y, "n": 2, "b": bufs["d"]}
    qprogram.launch(qlinear_name("Q6_K", 512, 128, False), 128, **bufs, **args)
    err = np.abs(qprogram.read(y, (2, 128)) - x.astype(np.float64) @ dense.T.astype(np.float64))
    assert (err > qlinear.qlinear_bound(x, w)).any()
