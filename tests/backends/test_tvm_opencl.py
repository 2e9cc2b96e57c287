"""``--backend tvm --device opencl``: the whole decoder as TVM-generated OpenCL kernels
launched by pyopencl (PoCL on the CPU here), against the NumPy reference and the llvm build.

Tolerances, measured with ``.venv/bin/python -m pytest tests/backends/test_tvm_opencl.py -q -s``
(each comparison prints its max |diff|; PoCL 5 on x86-64, TVM 0.27):

- tiny random llama / qwen2 (logits up to ~2.1), opencl float32 vs numpy float64: max |logit
  diff| 0.74e-6 to 1.31e-6 for chains, trees, a committed tree path and forks, the same as
  the llvm build's 0.77e-6 to 1.19e-6 in the same run: asserted with test_tvm.py's TINY_ATOL;
- smollm2-135m (logits up to ~31), opencl vs llvm over 10 prompt tokens: max |logit diff|
  6.1e-5 (fp32 build), 1.2e-4 (gguf-exact: the Q4_1/Q8_0 blocks; steps 2.8e-5 to 4.4e-5);
  asserted 1e-3, test_tvm.py's bound for the llvm build against the NumPy reference; top-1
  everywhere and 8 greedy tokens equal (the smallest top-2 margin on the way is 0.0074);
- a tiny Q4_K_M qwen2 (hidden 256, llama.cpp's quantizer; logits up to ~4.3), gguf-exact
  against numpy float64 on the file's dequantized weights: max |logit diff| 6.1e-6 to 7.1e-6
  on opencl (chains, a tree), 5.2e-6 to 7.4e-6 on llvm in the same run: asserted
  TINY_ATOL (K_QUANT_ATOL, the same value).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")
pytest.importorskip("pyopencl")

from edgespec.errors import EdgespecError  # noqa: E402
from edgespec.runtimes.base import LoadOptions, ModelSource  # noqa: E402
from edgespec.runtimes.numpy_ref import NumpyBackend  # noqa: E402
from edgespec.runtimes.tvm_backend import TvmBackend  # noqa: E402
from edgespec.runtimes.tvm_opencl import ClModel  # noqa: E402

pytestmark = [pytest.mark.backend]

IDS = [1, 17, 200, 33, 5, 99, 142, 7, 255, 64, 3, 128]
#: opencl float32 vs numpy float64 on the tiny models (as test_tvm.py's for llvm)
TINY_ATOL = 1e-5
#: smollm2's fp32 build, opencl vs llvm (test_tvm.py's llvm-vs-NumPy float32 bound)
SMOL_ATOL = 1e-3
#: the tiny Q4_K_M model against numpy float64, both builds (module docstring: 7.4e-6 at most)
K_QUANT_ATOL = TINY_ATOL


@pytest.fixture(scope="module")
def device(opencl_device: object) -> object:
    return opencl_device


def _close(got: np.ndarray, want: np.ndarray, atol: float, what: str) -> None:
    diff = float(np.abs(got.astype(np.float64) - want).max())
    print(f"{what}: max |diff| {diff:.3g}")
    assert got.shape == want.shape
    assert diff <= atol, f"{what}: max |diff| {diff} > {atol}"


def _load(src: ModelSource, device: str, **kw: object) -> object:
    return TvmBackend.load(src, LoadOptions(n_ctx=64, progress=False, device=device, **kw))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_opencl_matches_reference_and_llvm(
    device: object, arch: str, request: pytest.FixtureRequest
) -> None:
    path: Path = request.getfixturevalue(f"tiny_{arch}_dir")
    src = ModelSource("hf", path, path.name)
    cl = _load(src, "opencl")
    assert isinstance(cl, ClModel) and cl.info.extra["device"] == "opencl"
    cpu = _load(src, "cpu")
    ref = NumpyBackend.load(src, LoadOptions(n_ctx=64, progress=False, dtype="float64"))
    for what, step in (("prompt", IDS[:8]), ("continuation", IDS[8:])):
        want = ref.forward(step)
        _close(cl.forward(step), want, TINY_ATOL, f"{arch} {what} opencl")
        _close(cpu.forward(step), want, TINY_ATOL, f"{arch} {what} llvm")
    for m in (cl, ref):
        m.truncate(8)
    parents, tree = [-1, 0, 0, 1, 2], [5, 6, 7, 8, 9]
    _close(cl.forward_tree(tree, parents), ref.forward_tree(tree, parents), TINY_ATOL, "tree")
    for m in (cl, ref):
        m.commit_tree_path(8, [0, 2, 4])  # slots 10 and 12 move down to 9 and 10
    assert cl.n_past == ref.n_past == 11
    last = cl.forward([11], all_logits=False)
    _close(last, ref.forward([11], all_logits=False), TINY_ATOL, "after the committed path")
    fork, ref_fork = cl.fork(), ref.fork()
    _close(fork.forward([12, 13]), ref_fork.forward([12, 13]), TINY_ATOL, "fork")
    _close(cl.forward([14]), ref.forward([14]), TINY_ATOL, "the original after its fork")


def test_k_quants_run_on_their_blocks(device: object, tiny_q4km_gguf: Path) -> None:
    """A Q4_K_M file (llama.cpp's quantizer: Q4_K, Q6_K, a fused Q4_K/Q6_K QKV, Q5_0, Q8_0)
    runs with every matrix on its own blocks on OpenCL (K-quants' sub-scales folded into
    per-group scales), against the NumPy reference on the file's dequantized weights and the
    llvm gguf-exact build: chains, a tree, greedy tokens."""
    from gguf import GGUFReader

    src = ModelSource("gguf", tiny_q4km_gguf, "tiny-q4km")
    types = {t.tensor_type.name for t in GGUFReader(str(tiny_q4km_gguf)).tensors}
    assert {"Q4_K", "Q6_K", "Q5_0", "Q8_0"} <= types
    cl = _load(src, "opencl", weights="gguf-exact")
    assert cl.info.extra["quantized_matrices"] == "13/13"  # 3 layers x 4 + the LM head
    assert dict(cl.spec.quant)["l2.wqkv"] == "Q4_K_Q6_K"
    # at most a byte of code and two float32 per 16 weights (Q6_K's groups, affine mixed):
    # 12 of the fp32 build's 32 bits a weight
    fp32 = _load(src, "opencl", weights="fp32")
    assert cl.weight_bytes() <= fp32.weight_bytes() * 12 / 32
    cpu = _load(src, "cpu", weights="gguf-exact")
    ref = NumpyBackend.load(src, LoadOptions(n_ctx=64, progress=False, dtype="float64"))
    for what, step in (("prompt", IDS[:8]), ("continuation", IDS[8:])):
        want = ref.forward(step)
        _close(cl.forward(step), want, K_QUANT_ATOL, f"q4km {what} opencl")
        _close(cpu.forward(step), want, K_QUANT_ATOL, f"q4km {what} llvm")
    parents, tree = [-1, 0, 0, 1, 2], [5, 6, 7, 8, 9]
    for m in (cl, cpu, ref):
        m.truncate(8)
    want = ref.forward_tree(tree, parents)
    _close(cl.forward_tree(tree, parents), want, K_QUANT_ATOL, "q4km tree opencl")
    for m in (cl, cpu):
        m.truncate(8)
    got, expect = [int(cl.forward([3])[0].argmax())], [int(cpu.forward([3])[0].argmax())]
    for _ in range(5):
        got.append(int(cl.forward([got[-1]], all_logits=False)[0].argmax()))
        expect.append(int(cpu.forward([expect[-1]], all_logits=False)[0].argmax()))
    assert got == expect


def test_q8act_is_refused_in_one_line(device: object, smollm2_path: Path) -> None:
    src = ModelSource("gguf", smollm2_path, "smollm2-135m")
    with pytest.raises(EdgespecError, match="--device opencl runs --weights fp32 or") as err:
        _load(src, "opencl", weights="gguf-q8act")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("weights", ["fp32", "auto"])
def test_smollm2_on_opencl_equals_llvm(device: object, smollm2_path: Path, weights: str) -> None:
    """The real model, both builds (auto on OpenCL is gguf-exact, whatever the CPU's "auto":
    Q4_1 and Q8_0 blocks multiplied as they are) against the same build on llvm: logits
    within the fp32 bound of the llvm build's, top-1 everywhere and 8 greedy tokens equal."""
    src = ModelSource("gguf", smollm2_path, "smollm2-135m")
    cl = _load(src, "opencl", weights=weights)
    assert cl.info.extra["weights"] == {"auto": "gguf-exact"}.get(weights, weights)
    cpu = _load(src, "cpu", weights=cl.info.extra["weights"])
    assert cl.info.extra.get("quantized_matrices", "121/121") == "121/121"
    prompt = [1, 504, 3458, 282, 4649, 314, 2411, 30, 378, 3458]
    a, b = cl.forward(prompt), cpu.forward(prompt)
    _close(a, b, SMOL_ATOL, f"smollm2 {weights} prompt opencl vs llvm")
    assert (a.argmax(-1) == b.argmax(-1)).all()
    got, want = [int(a[-1].argmax())], [int(b[-1].argmax())]
    for _ in range(7):
        got.append(int(cl.forward([got[-1]], all_logits=False)[0].argmax()))
        want.append(int(cpu.forward([want[-1]], all_logits=False)[0].argmax()))
    assert got == want


def test_cli_without_an_opencl_driver_is_one_line(tmp_path: Path, smollm2_path: Path) -> None:
    """``generate --device opencl`` with no ICD registered: exit 2, one line, no traceback."""
    env = {**os.environ, "OCL_ICD_VENDORS": str(tmp_path)}
    cmd = [sys.executable, "-m", "edgespec", "generate", "-m", str(smollm2_path)]
    cmd += ["--backend", "tvm", "--device", "opencl", "--weights", "fp32", "-n", "2", "Hi"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "no OpenCL device" in lines[0], out.stderr
