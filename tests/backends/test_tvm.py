"""The tvm backend against the NumPy reference on the same weights, and its cache contract.

Tolerances, measured with ``.venv/bin/python -m pytest tests/backends/test_tvm.py -q -s``
(each comparison prints its max |diff|; x86-64, llvm target, TVM 0.27):

- tiny random llama / qwen2 (logits up to ~2.6), tvm float32 vs numpy float64:
  max |logit diff| 0.9e-6 to 1.3e-6 for chains, trees, rollback and forks; 2.3e-6 to 2.7e-6
  for the tiny llamas with 6, 7 and 8 query heads (wider: 96 to 128 features); asserted 1e-5.
- batched vs one-token-at-a-time within tvm: bit-identical (the graph computes each row
  with the same loops whatever T is); asserted exactly.
- smollm2-135m (Q4_1 GGUF dequantized to float32, logits up to ~31), tvm vs numpy float32
  on 20 prompt positions: max |logit diff| 1.1e-4 (fp32 build), 8.3e-5 (gguf-exact build,
  the file's own blocks) (``-m slow``); asserted 1e-3, the bound of the NumPy reference's
  own float32 comparison with transformers; top-1 and 16 greedy tokens equal.
- the quantized build on tiny GGUF files: tests/backends/test_tvm_quant.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgespec.errors import EdgespecError, ModelLoadError
from edgespec.runtimes import BACKENDS
from edgespec.runtimes.base import LoadOptions, ModelSource
from edgespec.runtimes.numpy_ref import NumpyBackend

pytest.importorskip("tvm", reason="the tvm backend needs apache-tvm (pip install 'edgespec[tvm]')")
from edgespec.runtimes.tvm_backend import DEVICES, TvmBackend, TvmModel  # noqa: E402

pytestmark = [pytest.mark.backend]

IDS = [1, 17, 200, 33, 5, 99, 142, 7, 255, 64, 3, 128]
SMOL_IDS = [1, 504, 3458, 282, 4649, 314, 2411, 30, 378, 3458]
SMOL_IDS += [282, 7042, 314, 4570, 30, 378, 3458, 282, 5716, 314]
#: tvm float32 vs numpy float64 on the tiny models (measured 1.3e-6 at most; see above)
TINY_ATOL = 1e-5
#: the same with both caches in float16 (--kv-cache f16): a key or value whose float32 and
#: float64 values round to neighbouring float16s moves the logits (measured 5.0e-5 at most,
#: test_f16_kv_cache prints it)
F16_ATOL = 4e-4


def _close(got: np.ndarray, want: np.ndarray, atol: float, what: str) -> None:
    diff = float(np.abs(got.astype(np.float64) - want).max())
    print(f"{what}: max |diff| {diff:.3g}")
    assert got.shape == want.shape
    assert diff <= atol, f"{what}: max |diff| {diff} > {atol}"


@pytest.fixture(params=["llama", "qwen2"])
def tiny(request: pytest.FixtureRequest) -> ModelSource:
    path: Path = request.getfixturevalue(f"tiny_{request.param}_dir")
    return ModelSource("hf", path, path.name)


def _tvm(src: ModelSource, n_ctx: int = 64, **kw: Any) -> TvmModel:
    return TvmBackend.load(src, LoadOptions(n_ctx=n_ctx, progress=False, **kw))


def _ref(src: ModelSource, n_ctx: int = 64, dtype: str = "float64") -> Any:
    return NumpyBackend.load(src, LoadOptions(n_ctx=n_ctx, progress=False, dtype=dtype))


def test_registry_finds_tvm_backend() -> None:
    assert BACKENDS.get("tvm") is TvmBackend
    assert TvmBackend.available()
    assert set(TvmBackend.devices) == set(DEVICES) >= {"cpu", "opencl", "vulkan"}


def test_matches_reference_and_is_batch_invariant(tiny: ModelSource) -> None:
    model = _tvm(tiny)
    want = _ref(tiny).forward(IDS)
    got = model.forward(IDS)
    assert got.dtype == np.float32 and model.n_past == len(IDS)
    _close(got, want, TINY_ATOL, f"{tiny.name} chain")
    assert (got.argmax(-1) == want.argmax(-1)).all()
    model.reset()
    one = np.concatenate([model.forward([t]) for t in IDS])
    np.testing.assert_array_equal(one, got)  # bit for bit, whatever T is


def test_greedy_tokens_equal_reference(tiny_llama_dir: Path) -> None:
    src = ModelSource("hf", tiny_llama_dir, "tiny")
    out = []
    for model in (_tvm(src), _ref(src)):
        toks = [1, 17]
        logits = model.forward(toks)
        for _ in range(20):
            toks.append(int(logits[-1].argmax()))
            logits = model.forward(toks[-1:])
        out.append(toks)
    assert out[0] == out[1]


def test_rollback_then_continue_equals_fresh(tiny: ModelSource) -> None:
    a, b, c = IDS[:5], IDS[5:9], [11, 12, 13, 14, 15]
    model = _tvm(tiny)
    model.forward(a)
    model.forward(b)
    model.rollback(len(b))
    assert model.n_past == len(a)
    got = model.forward(c)
    fresh = _tvm(tiny).forward(a + c)[len(a) :]
    np.testing.assert_array_equal(got, fresh)


def test_all_logits_false_and_chunks(tiny_llama_dir: Path) -> None:
    src = ModelSource("hf", tiny_llama_dir, "tiny")
    full = _tvm(src).forward(IDS)
    model = _tvm(src)
    model.max_chunk = 5  # 12 tokens -> chunks of 5, 5, 2
    np.testing.assert_array_equal(model.forward(IDS), full)
    model.reset()
    last = model.forward(IDS, all_logits=False)
    assert last.shape == (1, 256)
    np.testing.assert_array_equal(last, full[-1:])


def test_tree_forward_and_commit(tiny: ModelSource) -> None:
    model, ref = _tvm(tiny), _ref(tiny)
    for m in (model, ref):
        m.forward(IDS[:4])
    tokens, parents = [5, 6, 7, 8, 9], [-1, 0, -1, 2, 2]
    got = model.forward_tree(tokens, parents)
    _close(got, ref.forward_tree(tokens, parents), TINY_ATOL, f"{tiny.name} tree")
    for m in (model, ref):
        m.commit_tree_path(4, [2, 4])
    assert model.n_past == 6
    _close(model.forward([10, 11]), ref.forward([10, 11]), TINY_ATOL, "after commit")
    # the kept path equals a chain that never saw the other branches
    chain = _tvm(tiny).forward(IDS[:4] + [7, 9, 10, 11])[-2:]
    model.truncate(6)
    np.testing.assert_allclose(model.forward([10, 11]), chain, rtol=0, atol=TINY_ATOL)


@pytest.mark.parametrize("heads", [(6, 2), (7, 1), (8, 2)], ids=["G3", "G7", "G4"])
def test_head_groups_and_a_capacity_off_the_key_blocks(
    heads: tuple[int, int], tiny_llama_with_heads: Callable[[int, int], Path]
) -> None:
    """The attention's tasks take 3, 1 and 4 heads of a key/value group (1 where the group
    size is a prime above 4); a capacity not a multiple of the 16-slot key blocks is filled
    to its last slot (the score loop reads whole blocks, past ``P + T``)."""
    path = tiny_llama_with_heads(*heads)
    src = ModelSource("hf", path, path.name)
    ids = (IDS * 3)[:21]
    model, ref = _tvm(src, n_ctx=21), _ref(src, n_ctx=21)
    got = np.concatenate([model.forward(ids[:13]), model.forward(ids[13:])])
    _close(got, ref.forward(ids), TINY_ATOL, f"{heads} heads, n_ctx 21")
    model.reset()
    one = np.concatenate([model.forward([t]) for t in ids])
    np.testing.assert_array_equal(one, got)  # bit for bit, whatever T is
    with pytest.raises(EdgespecError, match="context overflow"):
        model.forward([3])


@pytest.mark.parametrize("heads", [(6, 2, 32), (7, 1, 16), (8, 2, 64)], ids=["G3", "G7", "G4"])
def test_attention_register_plans_are_the_same_sums(
    heads: tuple[int, int, int],
    tiny_llama_with_heads: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attention built for AVX-512's registers ("512": a task's score vectors several at
    a time, its value sums over the whole head) and for AVX2's ("256": one score vector at a
    time, the values by parts of 16 head dimensions) gives the same logits bit for bit, one
    token at a time and in chunks, and the reference's greedy tokens (the float64
    reference's logits differ by up to 3.3e-5 at 8 heads of 64, wider than TINY_ATOL's
    models: printed); each plan builds its own library."""
    from edgespec.runtimes import tvm_backend
    from edgespec.runtimes.tvm_graph import ATTENTION_PLAN, ATTENTION_PLANS

    dirs: set[Path] = set()
    library_dir = tvm_backend.library_dir

    def recorded(*args: Any) -> Path:
        folder = library_dir(*args)
        dirs.add(folder)
        return folder

    monkeypatch.setattr(tvm_backend, "library_dir", recorded)
    path = tiny_llama_with_heads(*heads)
    src = ModelSource("hf", path, path.name)
    ids = (IDS * 3)[:21]
    got = {}
    for plan in ATTENTION_PLANS:
        with ATTENTION_PLAN.building_with(plan):
            model = _tvm(src, n_ctx=32)
        rows = [model.forward(ids[:1]), model.forward(ids[1:10]), model.forward(ids[10:13])]
        got[plan] = np.concatenate([*rows, *(model.forward([t]) for t in ids[13:])])
    assert len(dirs) == len(ATTENTION_PLANS)
    np.testing.assert_array_equal(got["256"], got["512"])
    want = _ref(src, n_ctx=32).forward(ids)
    _close(got["256"], want, 1.0, f"{heads} heads, plans (printed; greedy compared)")
    assert (got["256"].argmax(-1) == want.argmax(-1)).all()


@pytest.mark.parametrize("kv", ["f32", "f16"])
@pytest.mark.parametrize(
    "heads", [(6, 2, 32), (7, 1, 16), (8, 2, 64)], ids=["G3-hd32", "G7-hd16", "G4-hd64"]
)
def test_long_context_attention_by_parts(
    heads: tuple[int, int, int], kv: str, tiny_llama_with_heads: Callable[..., Path]
) -> None:
    """From ``LONG_SLOTS`` visible slots on, a forward of up to ``LONG_ROWS`` tokens (steps,
    verify chunks, trees) takes the attention by parts of the slots and of the head dimension
    (one part where the head dimension is one key block; 3, 1 and 4 heads a task; 16-vector
    parts that 3 do not divide). It computes the same sums in the same order as the one task
    a row that a longer forward takes: bit for bit the same rows, whatever T is, and the
    reference's greedy tokens."""
    from edgespec.runtimes.tvm_graph import LONG_ROWS, LONG_SLOTS

    path = tiny_llama_with_heads(*heads)
    src = ModelSource("hf", path, path.name)
    ids = [(7 * i + 3) % 256 for i in range(LONG_SLOTS + 40)]
    prompt, rest = ids[: LONG_SLOTS + 4], ids[LONG_SLOTS + 4 : LONG_SLOTS + 4 + LONG_ROWS]
    model = _tvm(src, n_ctx=len(ids), kv_cache=kv)
    model.forward(prompt)
    by_rows = model.forward([*rest, 3])[:-1]  # LONG_ROWS + 1 rows: a task a row
    model.truncate(len(prompt))
    got = model.forward(rest)  # LONG_ROWS rows past LONG_SLOTS: by parts
    np.testing.assert_array_equal(got, by_rows)
    model.truncate(len(prompt))
    one = np.concatenate([model.forward([t]) for t in rest])
    np.testing.assert_array_equal(one, got)
    ref = NumpyBackend.load(
        src, LoadOptions(n_ctx=len(ids), progress=False, dtype="float64", kv_cache=kv)
    )
    want = ref.forward(prompt + rest)[len(prompt) :]
    _close(got, want, 1.0, f"{heads} past LONG_SLOTS (printed; greedy compared)")
    assert (got.argmax(-1) == want.argmax(-1)).all()
    tokens, parents = list(range(5, 5 + LONG_ROWS + 1)), [-1, 0, -1, 2, 2, *range(4, 16)]
    model.truncate(len(prompt))
    tree = model.forward_tree(tokens, parents)  # a task a row
    model.truncate(len(prompt))
    np.testing.assert_array_equal(model.forward_tree(tokens[:5], parents[:5]), tree[:5])


def test_f16_kv_cache(tiny: ModelSource) -> None:
    """``--kv-cache f16``: keys and values rounded to float16 when written (llama.cpp's default
    cache type). The NumPy reference with the same cache type gives the same greedy tokens
    and logits within F16_ATOL, the float32 cache's logits differ (the rounding happens),
    and batched forwards equal one-token ones bit for bit."""
    model = _tvm(tiny, kv_cache="f16")
    assert model.k_cache.dtype == "float16" and model.info.extra["kv_cache"] == "f16"
    assert model.info.extra["variant"].endswith("kv-f16")
    ref = NumpyBackend.load(
        tiny, LoadOptions(n_ctx=64, progress=False, dtype="float64", kv_cache="f16")
    )
    got, want = model.forward(IDS), ref.forward(IDS)
    _close(got, want, F16_ATOL, f"{tiny.name} f16 cache")
    assert (got.argmax(-1) == want.argmax(-1)).all()
    assert not np.array_equal(got, _tvm(tiny).forward(IDS))
    model.reset()
    one = np.concatenate([model.forward([t]) for t in IDS])
    np.testing.assert_array_equal(one, got)


def test_f16_kv_cache_is_cpu_only(tiny_llama_dir: Path) -> None:
    src = ModelSource("hf", tiny_llama_dir, "tiny")
    with pytest.raises(EdgespecError, match="no f16 KV cache on --device opencl") as e:
        _tvm(src, kv_cache="f16", device="opencl")
    assert "\n" not in str(e.value)


def test_logits_outlive_later_forwards(tiny_llama_dir: Path) -> None:
    """The logits are the output tensor's memory (no copy) and the inputs of short forwards
    are kept between calls: neither may change what an earlier forward returned."""
    model = _tvm(ModelSource("hf", tiny_llama_dir, "tiny"))
    first = model.forward([5])
    kept = first.copy()
    chunk = model.forward([6, 7])
    for _ in range(3):
        model.forward([8])
        model.forward([9, 10])
    np.testing.assert_array_equal(first, kept)
    assert not np.array_equal(chunk[:1], first)


def test_fork_has_its_own_cache(tiny_qwen2_dir: Path) -> None:
    src = ModelSource("hf", tiny_qwen2_dir, "tiny")
    model = _tvm(src)
    model.forward(IDS[:6])
    child = model.fork()
    assert child.n_past == 6 and child.weights is model.weights
    got = child.forward(IDS[6:])
    model.forward([9, 9])  # must not disturb the child's cache
    assert child.n_past == len(IDS) and model.n_past == 8
    np.testing.assert_array_equal(got, _tvm(src).forward(IDS)[6:])


def test_bad_input_is_rejected(tiny_llama_dir: Path) -> None:
    model = _tvm(ModelSource("hf", tiny_llama_dir, "tiny"), n_ctx=8)
    with pytest.raises(ValueError):
        model.forward([])
    with pytest.raises(ValueError):
        model.forward([256])
    model.forward(IDS[:5])
    with pytest.raises(EdgespecError, match="n_ctx 8"):
        model.forward(IDS[:4])
    assert model.n_past == 5
    with pytest.raises(ValueError):
        model.truncate(6)


@pytest.mark.parametrize("device", ["vulkan"])  # opencl runs: test_tvm_opencl.py
def test_absent_device_is_one_line(tiny_llama_dir: Path, device: str) -> None:
    import tvm

    if tvm.runtime.enabled(device):
        pytest.skip(f"this TVM build has a {device} runtime")
    with pytest.raises(EdgespecError, match=f"no {device} runtime") as err:
        _tvm(ModelSource("hf", tiny_llama_dir, "tiny"), device=device)
    assert "\n" not in str(err.value)


def test_unknown_device(tiny_llama_dir: Path) -> None:
    with pytest.raises(EdgespecError, match="known: cpu, opencl, vulkan"):
        _tvm(ModelSource("hf", tiny_llama_dir, "tiny"), device="npu9")


def test_library_is_cached_and_a_corrupt_one_is_one_line(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgespec.runtimes import tvm_backend

    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path))
    src = ModelSource("hf", tiny_llama_dir, "tiny")
    want = _tvm(src).forward(IDS)
    libs = list(tmp_path.glob("tvm/*/model-llama-*/lib.so"))
    assert len(libs) == 1
    assert not list(tmp_path.glob("tvm/*/.*partial"))  # nothing half-written left

    def no_compile(*a: Any) -> Any:
        raise AssertionError("compiled again")

    monkeypatch.setattr(tvm_backend, "compile_library", no_compile)
    np.testing.assert_array_equal(_tvm(src).forward(IDS), want)
    bad = libs[0].with_name("bad.so")
    bad.write_bytes(b"not a library")
    bad.replace(libs[0])  # a new inode: the library this process mapped stays intact
    with pytest.raises(ModelLoadError, match="corrupt; delete .* to recompile"):
        _tvm(src)


def test_unsupported_architecture_is_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        layer_types=["full_attention"],
    )
    transformers.Gemma3ForCausalLM(cfg).save_pretrained(tmp_path, safe_serialization=True)
    with pytest.raises(ModelLoadError, match="not supported by the tvm backend"):
        _tvm(ModelSource("hf", tmp_path, "gemma"))


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["fp32", "gguf-exact"])
def test_smollm2_matches_reference(smollm2_path: Path, weights: str) -> None:
    """The real GGUF (llama arch: permuted Q/K rows, tied head) against the reference, fp32
    and on the file's own blocks (Q4_1 layers, Q8_0 tied head: all 121 matrices quantized)."""
    src = ModelSource("gguf", smollm2_path, "smollm2-135m")
    model, ref = _tvm(src, n_ctx=128, weights=weights), _ref(src, n_ctx=128, dtype="float32")
    if weights == "gguf-exact":
        assert model.info.extra["quantized_matrices"] == "121/121"
    got, want = model.forward(SMOL_IDS), ref.forward(SMOL_IDS)
    _close(got, want, 1e-3, f"smollm2 {weights} prompt")
    assert (got.argmax(-1) == want.argmax(-1)).all()
    toks: list[list[int]] = [[], []]
    for out, m, logits in ((toks[0], model, got), (toks[1], ref, want)):
        for _ in range(16):
            out.append(int(logits[-1].argmax()))
            logits = m.forward(out[-1:])
    assert toks[0] == toks[1]


def test_other_backends_refuse_a_device(tiny_llama_dir: Path) -> None:
    from edgespec.runtime import load

    with pytest.raises(EdgespecError, match="cannot run on --device vulkan; use --backend tvm"):
        load(str(tiny_llama_dir), backend="numpy", device="vulkan", progress=False)
    with pytest.raises(EdgespecError, match="cannot run on --device npu; use --backend onnx"):
        load(str(tiny_llama_dir), backend="tvm", device="npu", progress=False)
