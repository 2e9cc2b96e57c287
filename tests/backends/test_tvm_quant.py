"""The tvm backend's quantized build (``--weights gguf-exact``) on tiny quantized GGUF files.

The matrices run on the file's own blocks (kernels/qlinear.py); the NumPy reference loads the
same file dequantized by ``gguf.quants.dequantize``, so both compute with the same weight
values and differ only in float32 rounding (the kernel factors the block scale out of its
sums).

Tolerance, measured with ``.venv/bin/python -m pytest tests/backends/test_tvm_quant.py -q -s``
(each comparison prints its max |diff|; x86-64, llvm target, TVM 0.27): tiny random llama /
qwen2 (logits up to ~3), tvm gguf-exact float32 vs numpy float64: max |logit diff| 1.4e-6 to
2.4e-6 (chains and trees); asserted :data:`TINY_ATOL`, the fp32 build's tolerance
(tests/backends/test_tvm.py).
Batched and one-token forwards are bit for bit equal, so the near-tie bound is 0 (measured
below) and speculation equals plain greedy decoding token for token.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgespec.errors import EdgespecError
from edgespec.runtimes.base import LoadOptions, ModelSource
from edgespec.runtimes.numpy_ref import NumpyBackend
from edgespec.testing import write_tiny_gguf

pytest.importorskip("tvm", reason="the tvm backend needs apache-tvm (pip install 'edgespec[tvm]')")
gguf = pytest.importorskip("gguf")
from edgespec.runtimes.tvm_backend import TvmBackend, TvmModel, weights_choice  # noqa: E402

pytestmark = [pytest.mark.backend]

IDS = [1, 17, 200, 33, 5, 99, 142, 7, 255, 64, 3, 128]
#: see the module docstring (measured 2.4e-6 at most)
TINY_ATOL = 1e-5
#: GGUF type per tensor short name; the last layer's ffn_down is F16, which has no kernel
#: (float32)
TYPES = {
    "attn_q": "Q4_1",
    "attn_k": "Q4_1",
    "attn_v": "Q4_1",
    "attn_output": "Q4_0",
    "ffn_gate": "Q5_0",
    "ffn_up": "Q5_0",
    "ffn_down": "Q8_0",
    "output": "Q8_0",
}


def write_quantized_gguf(hf_dir: Path, out: Path) -> Path:
    """A tiny HF llama / qwen2 folder as a GGUF whose matrices are quantized per :data:`TYPES`."""
    n_layers = json.loads((hf_dir / "config.json").read_text())["num_hidden_layers"]

    def tensor_type(name: str, arr: np.ndarray) -> str | None:
        if arr.ndim != 2:
            return None
        return (
            "F16"
            if name == f"blk.{n_layers - 1}.ffn_down.weight"
            else TYPES.get(name.split(".")[-2])
        )

    return write_tiny_gguf(hf_dir, out, tensor_type=tensor_type)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny_q(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ModelSource:
    hf: Path = request.getfixturevalue(f"tiny_{request.param}_dir")
    out = tmp_path_factory.mktemp("tvm-quant") / f"tiny-{request.param}.gguf"
    return ModelSource("gguf", write_quantized_gguf(hf, out), out.stem)


def _tvm(src: ModelSource, n_ctx: int = 64, **kw: Any) -> TvmModel:
    kw.setdefault("progress", False)
    kw.setdefault("weights", "gguf-exact")
    return TvmBackend.load(src, LoadOptions(n_ctx=n_ctx, **kw))


def _ref(src: ModelSource, n_ctx: int = 64, kv_cache: str | None = None) -> Any:
    opts = LoadOptions(n_ctx=n_ctx, progress=False, dtype="float64", kv_cache=kv_cache)
    return NumpyBackend.load(src, opts)


def test_fused_qkv_of_q5_0_and_q8_0_runs_on_its_blocks(
    tiny_qwen2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Qwen2.5 0.5B's Q4_K_M layout: Q5_0 q/k rows and Q8_0 v rows in one fused QKV,
    multiplied as Q8_0 (kernels/qlinear.py: ``SYMMETRIC``) instead of in float32; the
    logits as the reference's on the file's values."""
    from edgespec.runtimes import tvm_backend

    types = TYPES | {"attn_q": "Q5_0", "attn_k": "Q5_0", "attn_v": "Q8_0"}

    def tensor_type(name: str, arr: np.ndarray) -> str | None:
        return types.get(name.split(".")[-2]) if arr.ndim == 2 else None

    path = write_tiny_gguf(tiny_qwen2_dir, tmp_path / "qkv-mixed.gguf", tensor_type=tensor_type)
    spec = tvm_backend.gguf_model(path)[2]
    packed, fallback = tvm_backend.gguf_matrices(path, spec, False)
    assert fallback == []
    assert {q.fmt for name, q in packed.items() if "qkv" in name} == {"Q8_0"}
    src = ModelSource("gguf", path, path.stem)
    model = _tvm(src, progress=True)
    assert "no quantized kernel" not in capsys.readouterr().err
    done, total = model.info.extra["quantized_matrices"].split("/")
    assert done == total
    got, want = model.forward(IDS), _ref(src).forward(IDS)
    diff = float(np.abs(got - want).max())
    print(f"qkv Q5_0 + Q8_0 gguf-exact chain: max |diff| {diff:.3g}")
    assert diff <= TINY_ATOL
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_matches_reference_on_the_dequantized_weights(tiny_q: ModelSource, capsys) -> None:
    model = _tvm(tiny_q, progress=True)
    assert "1 of 13 matrices (F16) have no quantized kernel" in capsys.readouterr().err
    assert model.info.extra["weights"] == "gguf-exact"
    assert model.info.extra["quantized_matrices"] == "12/13"
    ref = _ref(tiny_q)
    got, want = model.forward(IDS), ref.forward(IDS)
    diff = float(np.abs(got - want).max())
    print(f"{tiny_q.name} gguf-exact chain: max |diff| {diff:.3g}")
    assert diff <= TINY_ATOL
    assert (got.argmax(-1) == want.argmax(-1)).all()
    model.reset()
    one = np.concatenate([model.forward([t]) for t in IDS])
    np.testing.assert_array_equal(one, got)  # bit for bit, whatever T is
    # a tree's rows are its chains' rows
    model.reset(), ref.reset()
    model.forward(IDS[:4]), ref.forward(IDS[:4])
    tokens, parents = [9, 10, 11, 12, 13], [-1, 0, 0, 1, 2]
    tree = model.forward_tree(tokens, parents)
    diff = float(np.abs(tree - ref.forward_tree(tokens, parents)).max())
    print(f"{tiny_q.name} gguf-exact tree: max |diff| {diff:.3g}")
    assert diff <= TINY_ATOL


def test_greedy_tokens_equal_reference(tiny_q: ModelSource) -> None:
    model, ref = _tvm(tiny_q), _ref(tiny_q)
    tokens, want = [], []
    lg, lw = model.forward(IDS[:5]), ref.forward(IDS[:5])
    for _ in range(20):
        tokens.append(int(lg[-1].argmax()))
        want.append(int(lw[-1].argmax()))
        lg, lw = model.forward([tokens[-1]]), ref.forward([want[-1]])
    assert tokens == want


def _needs(weights: str) -> None:
    """Skip the int8-activation build on a CPU without a dot product it is built on."""
    from edgespec.kernels.qlinear_q8 import int8_isa

    if weights == "gguf-q8act" and int8_isa() is None:
        pytest.skip("gguf-q8act needs a CPU with avx512_vnni or avx2")


#: the quantized builds: the file's blocks times float32 or int8 activations
QUANTIZED = ["gguf-exact", "gguf-q8act"]


@pytest.mark.parametrize("weights", QUANTIZED)
def test_near_tie_bound_is_measured_zero(tiny_q: ModelSource, weights: str) -> None:
    from edgespec.losslessness import measure_near_tie_bound, verify_chunk_sizes

    _needs(weights)
    model = _tvm(tiny_q, n_ctx=128, weights=weights)
    ids = [1 + (i * 37) % 250 for i in range(48)]
    assert measure_near_tie_bound(model, ids, verify_chunk_sizes(8), start=8) == 0.0


@pytest.mark.parametrize("weights", QUANTIZED)
def test_speculation_equals_plain_decoding(tiny_q: ModelSource, weights: str) -> None:
    from edgespec.losslessness import plain_reference
    from edgespec.runtime import Runtime
    from edgespec.speculative.config import SpecConfig
    from edgespec.testing import CharTokenizer

    _needs(weights)
    opts = LoadOptions(n_ctx=256, progress=False, weights=weights)
    target = TvmBackend.load(tiny_q, opts)
    rt = Runtime(
        CharTokenizer("".join(chr(0x100 + i) for i in range(256))), target, "tvm", tiny_q, opts
    )
    prompt = [5, 17, 3, 99, 42, 5, 17, 3, 99, 42]
    ref = plain_reference(target, prompt, 24).tokens
    for proposers, k in ((("ngram",), 3), (("tree",), 5)):
        rt._sessions.clear()
        res = rt.generate(
            prompt,
            max_new_tokens=24,
            strategy="speculative",
            ignore_eos=True,
            config=SpecConfig(proposers=proposers, k=k),
        )
        assert res.token_ids == ref, proposers


def test_weights_choices(tiny_llama_dir: Path, tiny_q: ModelSource) -> None:
    hf = ModelSource("hf", tiny_llama_dir, "tiny")
    with pytest.raises(EdgespecError, match="--weights gguf-exact needs a gguf source"):
        TvmBackend.load(hf, LoadOptions(n_ctx=16, progress=False, weights="gguf-exact"))
    with pytest.raises(EdgespecError, match="unknown --weights 'int3'"):
        TvmBackend.load(hf, LoadOptions(n_ctx=16, progress=False, weights="int3"))
    auto = TvmBackend.load(tiny_q, LoadOptions(n_ctx=16, progress=False))
    built = weights_choice("gguf", "auto")  # gguf-q8act with VNNI, else gguf-exact (below)
    assert auto.info.extra["weights"] == built
    # gguf-q8act's default cache is float16: its own cost-curve variant
    assert auto.info.extra["variant"] == built + ("+kv-f16" if built == "gguf-q8act" else "")
    assert TvmBackend.stored_weights(tiny_q, LoadOptions()) == built
    fp32 = TvmBackend.load(tiny_q, LoadOptions(n_ctx=16, progress=False, weights="fp32"))
    assert fp32.info.extra["weights"] == "fp32" and "quantized_matrices" not in fp32.info.extra
    assert "variant" not in fp32.info.extra  # the fp32 build's cost curves keep their key


@pytest.mark.slow
def test_qwen15b_fully_quantized(qwen15b_path: Path) -> None:
    """qwen2.5-coder-1.5b Q4_K_M (Q4_K and Q6_K, mixed inside 14 of its 28 fused QKVs): every
    matrix on the file's own blocks, and batched == one-token bit for bit (27 s here with its
    packed matrices cached, 41 s without; docs/tvm.md, "Loading")."""
    model = _tvm(ModelSource("gguf", qwen15b_path, "qwen2.5-coder-1.5b"))
    assert model.info.extra["quantized_matrices"] == "113/113"
    got = model.forward(IDS)
    model.reset()
    np.testing.assert_array_equal(np.concatenate([model.forward([t]) for t in IDS]), got)
    model.close()


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs a CPU affinity mask of two or more cores",
)
def test_set_threads_keeps_the_callers_cpu_affinity(tiny_q: ModelSource) -> None:
    """TVM pins the thread that sizes its pool to one core; threads started afterwards
    (llama.cpp's, in the same process) would inherit it and share that core."""
    model = _tvm(tiny_q)
    before = os.sched_getaffinity(0)
    for n in (2, 1):
        assert model.set_threads(n)
        assert os.sched_getaffinity(0) == before
        model.reset()
        model.forward([1, 2, 3])


@pytest.mark.parametrize(
    ("flags", "gguf_auto"),
    [
        ({"avx512_vnni", "avx2"}, "gguf-q8act"),
        ({"avx_vnni", "avx2"}, "gguf-q8act"),
        ({"avx2"}, "gguf-q8act"),
        ({"sse4_2"}, "gguf-exact"),
    ],
)
def test_auto_weights_follow_the_cpus_int8_dot_product(
    flags: set[str], gguf_auto: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "auto" on a GGUF is int8 activations where the CPU has an int8 dot product the kernels
    build with, VNNI or AVX2 (faster than gguf-exact there: docs/tvm.md), the file's blocks on
    float activations elsewhere and on every GPU device; fp32 for an HF folder and inside a
    tvm bundle."""
    from edgespec.kernels import qlinear_q8

    monkeypatch.setattr(qlinear_q8, "_cpu_flags", lambda: frozenset(flags))
    assert weights_choice("gguf", "auto") == gguf_auto
    assert weights_choice("gguf", "auto", device="opencl") == "gguf-exact"
    assert weights_choice("gguf", "auto", bundled=True) == "fp32"
    assert weights_choice("hf", "auto") == "fp32"
    assert weights_choice("gguf", "gguf-exact") == "gguf-exact"  # a named build stays


def test_q8act_without_int8_dot_is_one_line_before_any_work(monkeypatch) -> None:
    """gguf-q8act on a CPU with neither AVX512-VNNI nor AVX2 is refused when the choice is
    resolved, before the file's matrices are unpacked."""
    from edgespec.kernels import qlinear_q8

    monkeypatch.setattr(qlinear_q8, "_cpu_flags", lambda: frozenset({"sse4_2"}))
    with pytest.raises(EdgespecError, match="needs a CPU with AVX512-VNNI, AVX-VNNI or AVX2") as e:
        weights_choice("gguf", "gguf-q8act")
    assert "\n" not in str(e.value)
    assert weights_choice("gguf", "gguf-exact") == "gguf-exact"
