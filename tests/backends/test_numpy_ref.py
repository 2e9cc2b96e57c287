"""The NumPy reference backend against HF transformers, and its cache contract.

Tolerances (measured on x86-64, OpenBLAS; the asserted bounds leave headroom):

- tiny random llama / qwen2 / gemma3, NumPy float64 vs torch float64: max |logit diff|
  4e-7 to 6e-7 (logits up to ~2.6). HF computes rope cos/sin in float32 even for a float64
  model, which is what limits the agreement; asserted atol 1e-5.
- the same, NumPy float32 vs torch float32: 1.1e-6 to 1.5e-6; asserted atol 1e-4.
- batched vs one-token-at-a-time, and rollback vs fresh, in float64: at most 5e-15;
  asserted atol 1e-10.
- smollm2-135m Q4_1 GGUF, NumPy float32 vs transformers' own GGUF dequantization in
  float32, 20 prompt positions: top-1 agreement 100 %, max |logit diff| about 6e-5 (logits
  up to ~31); asserted >= 95 % and < 1e-3. Greedy continuations are identical.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgespec.errors import EdgespecError, ModelLoadError
from edgespec.runtimes import BACKENDS, numpy_ref
from edgespec.runtimes.base import LoadOptions, ModelSource
from edgespec.runtimes.numpy_ref import NumpyBackend, NumpyModel, matmul
from edgespec.runtimes.numpy_weights import read_safetensors, unpermute_rope_rows
from edgespec.testing import llamacpp_permute, write_tiny_gguf

pytestmark = [pytest.mark.backend]

#: 12 token ids < 256 (the tiny models' vocabulary)
IDS = [1, 17, 200, 33, 5, 99, 142, 7, 255, 64, 3, 128]
#: about 20 ids from SmolLM2's vocabulary (no tokenizer needed)
SMOL_IDS = [1, 504, 3458, 282, 4649, 314, 2411, 30, 378, 3458]
SMOL_IDS += [282, 7042, 314, 4570, 30, 378, 3458, 282, 5716, 314]


def _load(path: Path, kind: str = "hf", dtype: str = "float64", n_ctx: int = 64) -> NumpyModel:
    options = LoadOptions(n_ctx=n_ctx, dtype=dtype, progress=False)
    return NumpyBackend.load(ModelSource(kind, path, path.name), options)


def _hf_logits(folder: Path, ids: list[int], dtype: str = "float64") -> np.ndarray:
    """HF transformers' logits ``[T, V]`` for ``ids`` (eager attention)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=getattr(torch, dtype), attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.fixture(scope="module")
def tiny_gemma3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer random Gemma3ForCausalLM with a 4-token sliding window on layers 0 and 2."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_theta=10000.0,
        rope_local_base_freq=100.0,
        query_pre_attn_scalar=16,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = transformers.Gemma3ForCausalLM(cfg)
    with torch.no_grad():  # like conftest: larger weights, and norms away from zero
        for p in model.parameters():
            p.mul_(4.0) if p.dim() > 1 else p.add_(0.3 * torch.randn_like(p))
    out = tmp_path_factory.mktemp("tiny-gemma3")
    model.eval().save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(params=["llama", "qwen2", "gemma3"])
def tiny_dir(request: pytest.FixtureRequest) -> Path:
    name = {"llama": "tiny_llama_dir", "qwen2": "tiny_qwen2_dir", "gemma3": "tiny_gemma3_dir"}
    return request.getfixturevalue(name[request.param])


# --------------------------------------------------------------------------- GGUF writing


def _write_gguf(hf_dir: Path, out: Path, arch: str | None = None) -> Path:
    """Convert a tiny HF llama/qwen2 folder to an F32 GGUF the way convert_hf_to_gguf does."""
    pytest.importorskip("gguf")
    return write_tiny_gguf(hf_dir, out, arch=arch)


# --------------------------------------------------------------------------- tiny models


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 9, 17])
def test_matmul_rows_one_at_a_time_up_to_three_then_padded(rows: int) -> None:
    """2 and 3 rows are each exactly a one-row product (what a one-token forward computes),
    not the GEMM's rows; more rows are the GEMM of the rows padded with zero rows to a
    multiple of 4; every row count agrees with ``x @ w`` to float32 rounding."""
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 96)).astype(np.float32)
    w = rng.standard_normal((96, 40)).astype(np.float32)
    y = matmul(x, w)
    assert y.shape == (rows, 40) and y.dtype == np.float32
    one_by_one = np.concatenate([x[t : t + 1] @ w for t in range(rows)])
    if 1 < rows <= numpy_ref.ROWS_ONE_BY_ONE:
        np.testing.assert_array_equal(y, one_by_one)
    elif 1 < rows <= numpy_ref.PAD_UP_TO:
        padded = np.zeros((-(-rows // numpy_ref.PAD_ROWS) * numpy_ref.PAD_ROWS, 96), np.float32)
        padded[:rows] = x
        np.testing.assert_array_equal(y, (padded @ w)[:rows])
    else:
        np.testing.assert_array_equal(y, x @ w)
    # float32 rounding of a 96-term dot product, from the magnitudes summed (Higham gamma_n)
    bound = 96 * np.finfo(np.float32).eps * (np.abs(x) @ np.abs(w))
    exact = x.astype(np.float64) @ w.astype(np.float64)
    assert (np.abs(y - exact) <= bound).all()


def test_matmul_leaves_other_weights_to_their_own_product() -> None:
    """A weight that is not a plain ndarray (the int8 reference's matrices) gets ``@``."""

    class Weight:
        shape = (8, 4)
        __array_ufunc__ = None  # (as Q8ActMatrix: ndarray @ Weight defers to __rmatmul__)

        def __rmatmul__(self, x: np.ndarray) -> str:
            return "own"

    assert matmul(np.ones((2, 8), np.float32), Weight()) == "own"


def test_registry_finds_numpy_backend() -> None:
    assert BACKENDS.get("numpy") is NumpyBackend
    assert NumpyBackend.available()
    assert NumpyBackend.accepts == ("gguf", "hf")


def test_tiny_hf_matches_transformers_float64(tiny_dir: Path) -> None:
    model = _load(tiny_dir)
    logits = model.forward(IDS)
    assert logits.shape == (len(IDS), 256) and logits.dtype == np.float64
    assert model.n_past == len(IDS)
    np.testing.assert_allclose(logits, _hf_logits(tiny_dir, IDS), rtol=0, atol=1e-5)


def test_tiny_hf_matches_transformers_float32(tiny_dir: Path) -> None:
    logits = _load(tiny_dir, dtype="float32").forward(IDS)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, _hf_logits(tiny_dir, IDS, "float32"), rtol=0, atol=1e-4)


def test_batched_equals_one_at_a_time(tiny_dir: Path) -> None:
    batched = _load(tiny_dir).forward(IDS)
    model = _load(tiny_dir)
    single = np.concatenate([model.forward([t]) for t in IDS])
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-10)


def test_chunked_prefill_equals_one_batch(tiny_dir: Path) -> None:
    model = _load(tiny_dir)
    model.max_chunk = 5  # 12 tokens -> chunks of 5, 5, 2
    np.testing.assert_allclose(model.forward(IDS), _load(tiny_dir).forward(IDS), atol=1e-10)
    model.reset()
    np.testing.assert_allclose(
        model.forward(IDS, all_logits=False), _load(tiny_dir).forward(IDS)[-1:], atol=1e-10
    )


def test_rollback_then_continue_equals_fresh(tiny_dir: Path) -> None:
    a, b, c = IDS[:5], IDS[5:9], [11, 12, 13, 14, 15]
    model = _load(tiny_dir)
    model.forward(a)
    model.forward(b)
    model.rollback(len(b))
    assert model.n_past == len(a)
    got = model.forward(c)
    want = _load(tiny_dir).forward(a + c)[len(a) :]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_all_logits_false_returns_last_row(tiny_llama_dir: Path) -> None:
    last = _load(tiny_llama_dir).forward(IDS, all_logits=False)
    assert last.shape == (1, 256)
    np.testing.assert_allclose(last, _load(tiny_llama_dir).forward(IDS)[-1:], atol=1e-12)


def test_truncate_and_reset(tiny_llama_dir: Path) -> None:
    model = _load(tiny_llama_dir)
    model.forward(IDS)
    model.truncate(3)
    assert model.n_past == 3
    with pytest.raises(ValueError):
        model.truncate(4)
    with pytest.raises(ValueError):
        model.rollback(4)
    model.reset()
    assert model.n_past == 0
    np.testing.assert_allclose(model.forward(IDS), _load(tiny_llama_dir).forward(IDS), atol=1e-12)


def test_fork_has_its_own_cache(tiny_qwen2_dir: Path) -> None:
    model = _load(tiny_qwen2_dir)
    model.forward(IDS[:6])
    child = model.fork()
    assert child.n_past == 6 and child.w is model.w
    child_logits = child.forward(IDS[6:])
    model.forward([9, 9])  # must not disturb the child's cache
    assert child.n_past == len(IDS) and model.n_past == 8
    np.testing.assert_allclose(child_logits, _load(tiny_qwen2_dir).forward(IDS)[6:], atol=1e-10)


def test_context_overflow_is_a_clear_error(tiny_llama_dir: Path) -> None:
    model = _load(tiny_llama_dir, n_ctx=8)
    model.forward(IDS[:5])
    with pytest.raises(EdgespecError, match="n_ctx 8"):
        model.forward(IDS[:4])
    assert model.n_past == 5  # nothing was written
    model.forward(IDS[:3])
    assert model.n_past == 8


def test_bad_tokens_are_rejected(tiny_llama_dir: Path) -> None:
    model = _load(tiny_llama_dir)
    with pytest.raises(ValueError):
        model.forward([])
    with pytest.raises(ValueError):
        model.forward([256])
    assert model.n_past == 0


def test_info_is_filled(tiny_qwen2_dir: Path) -> None:
    model = _load(tiny_qwen2_dir)
    assert model.backend == "numpy"
    info = model.info
    assert (info.arch, info.n_layers, info.hidden_size) == ("qwen2", 3, 64)
    assert (info.vocab_size, info.context_length) == (256, 512)
    assert info.extra["n_head_kv"] == 2 and info.extra["dtype"] == "float64"


def test_n_threads_option(tiny_llama_dir: Path) -> None:
    options = LoadOptions(n_ctx=64, dtype="float64", n_threads=1, progress=False)
    model = NumpyBackend.load(ModelSource("hf", tiny_llama_dir, "tiny"), options)
    applied = importlib.util.find_spec("threadpoolctl") is not None
    assert model.info.extra["n_threads"] == (1 if applied else None)
    np.testing.assert_allclose(model.forward(IDS), _load(tiny_llama_dir).forward(IDS), atol=1e-12)


def test_unknown_dtype_and_kind(tiny_llama_dir: Path) -> None:
    with pytest.raises(EdgespecError, match="float32"):
        _load(tiny_llama_dir, dtype="float16")
    with pytest.raises(EdgespecError, match="gguf, hf"):
        NumpyBackend.load(ModelSource("onnx", tiny_llama_dir, "x"), LoadOptions())


def test_unsupported_hf_arch(tiny_llama_dir: Path, tmp_path: Path) -> None:
    cfg = json.loads((tiny_llama_dir / "config.json").read_text())
    cfg["architectures"] = ["MistralForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    shutil.copy(tiny_llama_dir / "model.safetensors", tmp_path)
    with pytest.raises(ModelLoadError, match="LlamaForCausalLM, Qwen2ForCausalLM") as exc:
        _load(tmp_path)
    assert "\n" not in str(exc.value)


def test_hf_folder_without_safetensors(tiny_llama_dir: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_llama_dir / "config.json", tmp_path)
    with pytest.raises(ModelLoadError, match="safetensors"):
        _load(tmp_path)


# --------------------------------------------------------------------------- weight readers


def test_unpermute_invertsllamacpp_permute() -> None:
    w = np.random.default_rng(0).standard_normal((4 * 16, 8))
    np.testing.assert_array_equal(unpermute_rope_rows(llamacpp_permute(w, 4), 4), w)
    b = np.arange(2 * 16.0)
    np.testing.assert_array_equal(unpermute_rope_rows(llamacpp_permute(b, 2), 2), b)


def test_read_safetensors_decodes_bf16_and_f16(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    src = {
        "bf": torch.randn(3, 5, dtype=torch.bfloat16),
        "half": torch.randn(4, dtype=torch.float16),
        "full": torch.randn(2, 3, dtype=torch.float32),
    }
    st.save_file(src, tmp_path / "m.safetensors")
    got = read_safetensors(tmp_path / "m.safetensors")
    for name, t in src.items():
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], t.float().numpy())


def test_truncated_safetensors(tiny_llama_dir: Path, tmp_path: Path) -> None:
    data = (tiny_llama_dir / "model.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        read_safetensors(tmp_path / "m.safetensors")


# --------------------------------------------------------------------------- tiny GGUF


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_gguf_equals_hf_folder(arch: str, tmp_path: Path, request: pytest.FixtureRequest):
    """An F32 GGUF converted llama.cpp-style (llama Q/K permuted) computes what the HF folder
    does: this checks the un-permutation and the GGUF name mapping exactly."""
    hf_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    path = _write_gguf(hf_dir, tmp_path / f"tiny-{arch}.gguf")
    model = _load(path, kind="gguf")
    assert model.info.arch == arch and model.info.extra["format"] == "gguf"
    np.testing.assert_allclose(model.forward(IDS), _load(hf_dir).forward(IDS), atol=1e-12)


def test_truncated_tiny_gguf(tiny_llama_dir: Path, tmp_path: Path) -> None:
    path = _write_gguf(tiny_llama_dir, tmp_path / "full.gguf")
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelLoadError, match="truncated"):
        _load(cut, kind="gguf")


def test_unsupported_gguf_arch(tiny_llama_dir: Path, tmp_path: Path) -> None:
    path = _write_gguf(tiny_llama_dir, tmp_path / "phi.gguf", arch="phi3")
    with pytest.raises(ModelLoadError, match="supported: llama, qwen2, gemma3"):
        _load(path, kind="gguf")


# --------------------------------------------------------------------------- smollm2 (real)


@pytest.fixture(scope="module")
def smollm2(smollm2_path: Path) -> NumpyModel:
    return _load(smollm2_path, kind="gguf", dtype="float32", n_ctx=128)


@pytest.fixture(scope="module")
def smollm2_hf(smollm2_path: Path) -> Any:
    """transformers' own reading of the same GGUF (it dequantizes to float32)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    return transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_path.parent, gguf_file=smollm2_path.name, dtype=torch.float32
    ).eval()


def _greedy(model: NumpyModel, prompt: list[int], n: int) -> list[int]:
    model.reset()
    tok = int(model.forward(prompt, all_logits=False)[-1].argmax())
    out = [tok]
    for _ in range(n - 1):
        tok = int(model.forward([tok], all_logits=False)[-1].argmax())
        out.append(tok)
    return out


@pytest.mark.slow
def test_smollm2_gguf_logits_and_deterministic_greedy(smollm2: NumpyModel) -> None:
    info = smollm2.info
    assert (info.arch, info.n_layers, info.hidden_size, info.vocab_size) == (
        "llama",
        30,
        576,
        49152,
    )
    smollm2.reset()
    logits = smollm2.forward(SMOL_IDS)
    assert logits.shape == (len(SMOL_IDS), 49152) and logits.dtype == np.float32
    assert np.isfinite(logits).all()
    first = _greedy(smollm2, SMOL_IDS[:8], 16)
    assert len(first) == 16 and smollm2.n_past == 8 + 15
    assert _greedy(smollm2, SMOL_IDS[:8], 16) == first


@pytest.mark.slow
def test_smollm2_gguf_matches_transformers(smollm2: NumpyModel, smollm2_hf: Any) -> None:
    torch = pytest.importorskip("torch")
    smollm2.reset()
    ours = smollm2.forward(SMOL_IDS)
    with torch.no_grad():
        ref = smollm2_hf(torch.tensor([SMOL_IDS])).logits[0].float().numpy()
    agree = float((ours.argmax(-1) == ref.argmax(-1)).mean())
    diff = float(np.abs(ours - ref).max())
    assert agree >= 0.95, f"top-1 agreement {agree:.2%}"
    assert diff < 1e-3, f"max |logit diff| {diff:.3g}"
    # greedy continuation equals transformers' greedy search (measured: no near-ties here)
    with torch.no_grad():
        ids = torch.tensor([SMOL_IDS])
        gen = smollm2_hf.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False
        )
    assert _greedy(smollm2, SMOL_IDS, 16) == gen[0, len(SMOL_IDS) :].tolist()


@pytest.mark.slow
def test_truncated_smollm2_gguf(smollm2_path: Path, tmp_path: Path) -> None:
    cut = tmp_path / "smollm2-cut.gguf"
    with open(smollm2_path, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(smollm2_path.stat().st_size // 2))
    with pytest.raises(ModelLoadError, match="truncated"):
        _load(cut, kind="gguf")


# --------------------------------------------------------------------------- tree attention


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tree_forward_equals_linear_paths_and_commit(arch, tiny_llama_dir, tiny_qwen2_dir):
    """Every root-to-node path of a tree scores exactly like a linear forward of that path,
    and committing a path leaves the cache equal to a fresh forward of prefix + path."""
    from edgespec.runtimes import BACKENDS, LoadOptions, ModelSource

    folder = tiny_llama_dir if arch == "llama" else tiny_qwen2_dir
    opts = LoadOptions(n_ctx=64, dtype="float64", progress=False)
    load = BACKENDS.get("numpy").load
    m = load(ModelSource("hf", folder, arch), opts)
    prefix = [5, 17, 3, 99, 42]
    tokens = [7, 8, 9, 10, 11, 12]
    parents = [-1, 0, 0, 1, 3, 2]  # 7 -> (8 -> 10 -> 11), (9 -> 12)
    m.forward(prefix)
    tree_logits = m.forward_tree(tokens, parents)
    paths = {0: [0], 1: [0, 1], 2: [0, 2], 3: [0, 1, 3], 4: [0, 1, 3, 4], 5: [0, 2, 5]}
    ref = load(ModelSource("hf", folder, arch), opts)
    for node, path in paths.items():
        ref.reset()
        lin = ref.forward(prefix + [tokens[i] for i in path])
        np.testing.assert_allclose(tree_logits[node], lin[-1], atol=1e-10)
    m.commit_tree_path(len(prefix), [0, 1, 3])
    assert m.n_past == len(prefix) + 3
    nxt = m.forward([55])
    ref.reset()
    lin = ref.forward(prefix + [7, 8, 10, 55])
    np.testing.assert_allclose(nxt[-1], lin[-1], atol=1e-10)
