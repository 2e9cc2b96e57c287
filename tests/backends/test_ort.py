"""The ONNX Runtime backend: export fidelity, batched/sequential agreement and KV rollback.

Tolerances (measured with ORT 1.32 on 2 cores, then given about 10x headroom):

- ORT fp32 vs HF transformers (torch fp32), tiny random models, 10 tokens: max |logit diff|
  1.3e-6 (llama) and 1.1e-6 (qwen2), logits up to 2.4 -> ``HF_ATOL = 2e-5``. Graph fusions
  reorder float32 sums, so the two are close but not bit-identical.
- batched vs one-token-at-a-time ORT: max 1.4e-6 -> ``BATCH_ATOL = 2e-5``; greedy argmax equal.

Every test of the tiny models runs on both graph styles (``gqa``: onnxruntime-genai's builder
with a shared KV buffer; ``optimum``: KV copied in and out).
- ORT fp32 vs the NumPy reference on smollm2 (the same dequantized Q4_1 weights), 16 greedy
  steps: max 4.6e-5 (float32 reference) and 5.0e-5 (float64), logits up to 31, smallest
  top-1/top-2 margin 0.09 -> ``REF_ATOL = 5e-4``; the 16 greedy tokens are equal.

The tiny models are converted once per session into a temporary ``$EDGESPEC_HOME``; the
smollm2 conversion goes to the real cache so that later runs reuse it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")

from edgespec.errors import EdgespecError, ModelLoadError  # noqa: E402
from edgespec.export import hf_onnx  # noqa: E402
from edgespec.runtimes import BACKENDS, LoadOptions, ModelSource  # noqa: E402
from edgespec.runtimes.ort import OnnxModel, load_onnx_dir  # noqa: E402

pytestmark = [pytest.mark.backend]

HF_ATOL = 2e-5
BATCH_ATOL = 2e-5
REF_ATOL = 5e-4

PROMPT = [5, 17, 42, 99, 3, 250, 128, 7, 64, 200]


@contextlib.contextmanager
def _home(path: Path) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGESPEC_HOME", str(path))
        yield


def _convert(hf_dir: Path, name: str, home: Path, graph: str) -> Path:
    with _home(home):
        return hf_onnx.ensure_onnx(ModelSource("hf", hf_dir, name), progress=False, graph=graph)


@pytest.fixture(scope="session", params=sorted(hf_onnx.ONNX_GRAPHS))
def graph(request: pytest.FixtureRequest) -> str:
    """An ONNX graph style (a key of ONNX_GRAPHS)."""
    return str(request.param)


@pytest.fixture(scope="session")
def tiny_llama_onnx(tiny_llama_dir: Path, onnx_home: Path, graph: str) -> Path:
    return _convert(tiny_llama_dir, "tiny-llama", onnx_home, graph)


@pytest.fixture(scope="session")
def tiny_qwen2_onnx(tiny_qwen2_dir: Path, onnx_home: Path, graph: str) -> Path:
    return _convert(tiny_qwen2_dir, "tiny-qwen2", onnx_home, graph)


@pytest.fixture(params=["llama", "qwen2"])
def tiny(request: pytest.FixtureRequest, onnx_home: Path, graph: str) -> tuple[Path, Path]:
    """(HF folder, converted ONNX folder) of one tiny random model, in one graph style."""
    arch = request.param
    hf_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    return hf_dir, _convert(hf_dir, f"tiny-{arch}", onnx_home, graph)


def _open(onnx_dir: Path, n_ctx: int = 512) -> OnnxModel:
    return load_onnx_dir(onnx_dir, LoadOptions(n_ctx=n_ctx, n_threads=2, progress=False))


def _hf_logits(hf_dir: Path, tokens: list[int]) -> np.ndarray:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        out = model(torch.tensor([tokens]), use_cache=False)
    return out.logits[0].numpy()


def test_graph_io(tiny_llama_onnx: Path, graph: str) -> None:
    inputs, outputs = hf_onnx.graph_io(tiny_llama_onnx / "model.onnx")
    expected_in = ["input_ids", "attention_mask", "position_ids"]
    expected_in += ["attention_bias"] if graph == "gqa" else []  # tree inputs (add_tree_inputs)
    expected_in += ["use_embeds", "inputs_embeds"]  # export.embeds_inputs.add_embeds_inputs
    expected_in += [f"past_key_values.{i}.{kv}" for i in range(3) for kv in ("key", "value")]
    expected_out = ["logits"] + [f"present.{i}.{kv}" for i in range(3) for kv in ("key", "value")]
    expected_out += ["hidden_states"]  # export.embeds_inputs.add_hidden_output
    assert sorted(inputs) == sorted(expected_in)  # the builder groups keys before values
    assert sorted(outputs) == sorted(expected_out)


def test_logits_match_transformers(tiny: tuple[Path, Path]) -> None:
    hf_dir, onnx_dir = tiny
    ref = _hf_logits(hf_dir, PROMPT)
    model = _open(onnx_dir)
    got = model.forward(PROMPT)
    assert got.shape == ref.shape == (len(PROMPT), 256)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=0, atol=HF_ATOL)
    assert model.n_past == len(PROMPT)


def test_batched_equals_sequential(tiny: tuple[Path, Path]) -> None:
    _, onnx_dir = tiny
    tokens = PROMPT + [11, 12, 13]
    batched = _open(onnx_dir).forward(tokens)
    seq_model = _open(onnx_dir)
    sequential = np.concatenate([seq_model.forward([t]) for t in tokens])
    np.testing.assert_allclose(batched, sequential, rtol=0, atol=BATCH_ATOL)
    assert (batched.argmax(-1) == sequential.argmax(-1)).all()
    # a prefix, then a chunk, then single tokens: the mixed shape speculative decoding uses
    mixed_model = _open(onnx_dir)
    mixed = np.concatenate(
        [mixed_model.forward(tokens[:4]), mixed_model.forward(tokens[4:9])]
        + [mixed_model.forward([t]) for t in tokens[9:]]
    )
    np.testing.assert_allclose(mixed, batched, rtol=0, atol=BATCH_ATOL)


def test_rollback_then_continue_matches_fresh(tiny: tuple[Path, Path]) -> None:
    _, onnx_dir = tiny
    a, b, c = PROMPT[:6], [77, 78, 79, 80], [150, 151, 152]
    model = _open(onnx_dir)
    model.forward(a)
    model.forward(b)
    assert model.n_past == len(a) + len(b)
    model.rollback(len(b))
    assert model.n_past == len(a)
    after = model.forward(c)
    fresh = _open(onnx_dir).forward(a + c)[len(a) :]
    np.testing.assert_allclose(after, fresh, rtol=0, atol=BATCH_ATOL)
    assert (after.argmax(-1) == fresh.argmax(-1)).all()
    # reset empties the cache; the model is then as good as new
    model.reset()
    assert model.n_past == 0
    np.testing.assert_allclose(model.forward(a + c)[len(a) :], fresh, rtol=0, atol=BATCH_ATOL)


def test_all_logits_false_and_fork(tiny_llama_onnx: Path) -> None:
    model = _open(tiny_llama_onnx)
    full = _open(tiny_llama_onnx).forward(PROMPT)
    last = model.forward(PROMPT, all_logits=False)
    assert last.shape == (1, 256)
    np.testing.assert_allclose(last[0], full[-1], rtol=0, atol=BATCH_ATOL)
    twin = model.fork()
    x = model.forward([9])
    assert twin.n_past == len(PROMPT)
    np.testing.assert_allclose(twin.forward([9]), x, rtol=0, atol=0)


def test_bad_arguments(tiny_llama_onnx: Path) -> None:
    model = _open(tiny_llama_onnx, n_ctx=12)
    with pytest.raises(ValueError):
        model.forward([])
    with pytest.raises(ValueError, match="vocabulary"):
        model.forward([256])
    model.forward(PROMPT)
    with pytest.raises(EdgespecError, match="n_ctx=12"):
        model.forward([1, 2, 3])
    assert model.n_past == len(PROMPT)  # a refused forward leaves the cache alone
    model.forward([1, 2])
    with pytest.raises(ValueError):
        model.truncate(13)
    with pytest.raises(ValueError):
        model.rollback(-1)


def test_layout_follows_graph(tiny_llama_onnx: Path, graph: str) -> None:
    expected = {"gqa": "shared", "optimum": "copied"}[graph]
    assert _open(tiny_llama_onnx).layout == expected


def test_backend_load_reuses_cache(
    tiny_llama_dir: Path, onnx_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _convert(tiny_llama_dir, "tiny-llama", onnx_home, hf_onnx.DEFAULT_GRAPH)

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached conversion should have been reused")

    monkeypatch.setattr(hf_onnx, "hf_to_onnx", no_export)
    backend = BACKENDS.get("onnx")
    assert backend.name == "onnx" and backend.available()
    with _home(onnx_home):
        model = backend.load(
            ModelSource("hf", tiny_llama_dir, "tiny-llama"), LoadOptions(n_ctx=64, progress=False)
        )
    assert model.backend == "onnx"
    assert isinstance(model, OnnxModel) and model.layout == "shared"  # the faster default
    assert (model.info.arch, model.info.n_layers, model.info.hidden_size) == ("llama", 3, 64)
    assert (model.info.vocab_size, model.info.context_length) == (256, 512)
    assert model.info.source == "tiny-llama"
    assert model.n_past == 0
    assert model.forward(PROMPT[:3]).shape == (3, 256)


def test_weights_choice(tiny_llama_dir: Path, onnx_home: Path) -> None:
    """HF folders convert to fp32 (auto); gguf-exact needs a GGUF; unknown names are listed."""
    backend = BACKENDS.get("onnx")
    source = ModelSource("hf", tiny_llama_dir, "tiny-llama")
    with _home(onnx_home):
        model = backend.load(source, LoadOptions(n_ctx=64, progress=False, weights="auto"))
        assert model.info.extra["variant"] == "shared-float32"
        with pytest.raises(EdgespecError, match="needs a gguf source") as info:
            backend.load(source, LoadOptions(n_ctx=64, progress=False, weights="gguf-exact"))
        assert "\n" not in str(info.value)
        with pytest.raises(EdgespecError, match="known: auto, fp32, gguf-exact"):
            backend.load(source, LoadOptions(n_ctx=64, progress=False, weights="int3"))


def test_spin_setting_reaches_the_session(tiny_llama_onnx: Path) -> None:
    key = "session.intra_op.allow_spinning"
    for spin, want in ((True, "1"), (False, "0")):
        opts = LoadOptions(n_ctx=64, n_threads=2, progress=False, spin=spin)
        model = load_onnx_dir(tiny_llama_onnx, opts)
        assert model.session.get_session_options().get_session_config_entry(key) == want
        assert model.info.extra["variant"].endswith("-nospin") is (not spin)
        assert model.forward(PROMPT[:3]).shape == (3, 256)


def test_qwen2_info(tiny_qwen2_onnx: Path) -> None:
    assert _open(tiny_qwen2_onnx).info.arch == "qwen2"


@pytest.mark.parametrize("exc", [RuntimeError("boom\nsecond line"), KeyboardInterrupt()])
def test_interrupted_conversion_leaves_nothing(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    def broken(hf_dir: Path, out_dir: Path, *, progress: bool = False, graph: str = "") -> Path:
        (Path(out_dir) / "model.onnx").write_bytes(b"half")
        raise exc

    monkeypatch.setattr(hf_onnx, "hf_to_onnx", broken)
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path))
    source = ModelSource("hf", tiny_llama_dir, "tiny-llama")
    expected = EdgespecError if isinstance(exc, Exception) else KeyboardInterrupt
    with pytest.raises(expected) as info:
        hf_onnx.ensure_onnx(source, progress=False)
    if expected is EdgespecError:
        assert "\n" not in str(info.value) and "boom" in str(info.value)
    converted = tmp_path / "converted"
    assert not converted.exists() or list(converted.rglob("*")) == []


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="config.json"):
        hf_onnx.ensure_onnx(ModelSource("hf", tmp_path, "empty"), progress=False)
    with pytest.raises(ModelLoadError, match="does not exist"):
        hf_onnx.ensure_onnx(ModelSource("gguf", tmp_path / "x.gguf", "x"), progress=False)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(ModelLoadError, match="not a valid GGUF"):
        hf_onnx.ensure_onnx(ModelSource("gguf", bad, "bad"), progress=False)
    with pytest.raises(EdgespecError):
        BACKENDS.get("onnx").load(ModelSource("bundle", tmp_path, "b"), LoadOptions())


def _greedy(model: object, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
    """Greedy-decode n tokens; return them and the logits that chose them, float32[n, V]."""
    rows = [model.forward(prompt)[-1]]  # type: ignore[attr-defined]
    tokens = [int(rows[-1].argmax())]
    while len(tokens) < n:
        rows.append(model.forward([tokens[-1]])[-1])  # type: ignore[attr-defined]
        tokens.append(int(rows[-1].argmax()))
    return tokens, np.stack(rows).astype(np.float32)


@pytest.mark.slow
def test_smollm2_matches_numpy_reference(smollm2_path: Path) -> None:
    if not BACKENDS.get("numpy").available():
        pytest.skip("the NumPy reference backend is not available")
    source = ModelSource("gguf", smollm2_path, "smollm2-135m")
    prompt = [1, 504, 3458, 282, 4649, 314, 253, 1345, 28, 357]
    opts = LoadOptions(n_ctx=64, progress=False, weights="fp32")  # the dequantized weights
    ort_model = BACKENDS.get("onnx").load(source, opts)
    assert ort_model.info.arch == "llama"
    assert (ort_model.info.n_layers, ort_model.info.vocab_size) == (30, 49152)
    ort_tokens, ort_logits = _greedy(ort_model, prompt, 16)
    ref_model = BACKENDS.get("numpy").load(source, LoadOptions(n_ctx=64, progress=False))
    ref_tokens, ref_logits = _greedy(ref_model, prompt, 16)
    assert ort_tokens == ref_tokens
    assert np.abs(ort_logits - ref_logits).max() < REF_ATOL


def test_tree_forward_and_commit(tiny: tuple[Path, Path], graph: str) -> None:
    """Each tree node's logits equal a linear forward of its root-to-node path, and committing
    a path leaves the cache equal to a fresh forward of prefix + path (gqa graphs only)."""
    _, onnx_dir = tiny
    m = _open(onnx_dir)
    if graph == "optimum":  # no per-node positions or mask: trees are refused
        assert not m.supports_tree
        with pytest.raises(NotImplementedError, match="re-convert"):
            m.forward_tree([7, 8], [-1, 0])
        return
    assert m.supports_tree
    prefix = [5, 17, 3, 99, 42]
    tokens = [7, 8, 9, 10, 11, 12]
    parents = [-1, 0, 0, 1, 3, 2]  # 7 -> (8 -> 10 -> 11), (9 -> 12)
    m.forward(prefix)
    tree_logits = m.forward_tree(tokens, parents)
    assert tree_logits.shape == (6, 256) and m.n_past == len(prefix) + 6
    paths = {0: [0], 1: [0, 1], 2: [0, 2], 3: [0, 1, 3], 4: [0, 1, 3, 4], 5: [0, 2, 5]}
    ref = _open(onnx_dir)
    for node, path in paths.items():
        ref.reset()
        lin = ref.forward(prefix + [tokens[i] for i in path])
        np.testing.assert_allclose(tree_logits[node], lin[-1], rtol=0, atol=BATCH_ATOL)
    m.commit_tree_path(len(prefix), [0, 2, 5])
    assert m.n_past == len(prefix) + 3
    nxt = m.forward([55, 56])
    ref.reset()
    lin = ref.forward(prefix + [7, 9, 12, 55, 56])
    np.testing.assert_allclose(nxt, lin[-2:], rtol=0, atol=BATCH_ATOL)
    with pytest.raises(ValueError, match="earlier node"):
        m.forward_tree([1, 2], [-1, 1])
    with pytest.raises(ValueError, match="outside"):
        m.commit_tree_path(m.n_past, [0])
