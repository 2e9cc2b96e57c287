"""Exact greedy losslessness of every proposer on backends where batching is exact:
the NumPy reference in float64 and ONNX Runtime fp32, on tiny random HF models."""

import json
import shutil

import pytest

from edgespec.losslessness import plain_reference
from edgespec.runtime import Runtime
from edgespec.runtimes import BACKENDS, LoadOptions, ModelSource
from edgespec.speculative.config import SpecConfig
from edgespec.testing import CharTokenizer, SequenceOracle, serve_proposer

pytestmark = [pytest.mark.backend]

ALPHABET = "".join(chr(0x100 + i) for i in range(256))
PROMPTS = [[5, 17, 3, 99, 42, 5, 17, 3], [200, 1, 2, 3, 4, 5, 6, 7, 8, 9, 200, 1, 2]]
N = 32


@pytest.fixture(scope="module", autouse=True)
def _home(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGESPEC_HOME", str(tmp_path_factory.mktemp("home")))
    yield
    mp.undo()


def build(backend, target_dir, draft_dir):
    opts = LoadOptions(n_ctx=256, dtype="float64", progress=False)
    load = BACKENDS.get(backend).load
    target = load(ModelSource("hf", target_dir, "tiny"), opts)
    draft = load(ModelSource("hf", draft_dir, "tiny-draft"), opts)
    return Runtime(
        CharTokenizer(ALPHABET), target, backend, ModelSource("hf", target_dir, "tiny"), opts, draft
    )


@pytest.fixture(scope="module", params=["numpy", "onnx"])
def rt(request, tiny_llama_dir, tiny_qwen2_dir):
    if request.param == "onnx":
        pytest.importorskip("onnxruntime")
    r = build(request.param, tiny_llama_dir, tiny_qwen2_dir)
    yield r
    r.close()


@pytest.fixture(scope="module")
def refs(rt):
    return [(p, plain_reference(rt.target, p, N).tokens) for p in PROMPTS]


@pytest.mark.parametrize(
    "proposers,k",
    [
        (("ngram",), 3),
        (("recycle",), 5),
        (("draft",), 4),
        (("tree",), 5),
        (("ngram", "recycle", "draft"), None),
    ],
)
@pytest.mark.parametrize("strategy", ["speculative", "auto"])
def test_every_proposer_exact(rt, refs, proposers, k, strategy):
    rt._sessions.clear()
    for prompt, ref in refs:
        cfg = SpecConfig(proposers=proposers, k=k, probe_every=3, min_confidence=0.0)
        res = rt.generate(prompt, max_new_tokens=N, strategy=strategy, config=cfg, ignore_eos=True)
        assert res.token_ids == ref, (proposers, prompt)


@pytest.mark.parametrize("correct", [0, 1, 2, None])
def test_oracle_acceptance_levels_exact(rt, refs, monkeypatch, correct):
    for prompt, ref in refs:
        oracle = SequenceOracle(prompt + ref, 256, correct)

        serve_proposer(monkeypatch, "seq-oracle", lambda runtime, o=oracle: o)
        rt._sessions.clear()
        res = rt.generate(
            prompt,
            max_new_tokens=N,
            strategy="speculative",
            ignore_eos=True,
            config=SpecConfig(proposers=("seq-oracle",), k=3),
        )
        assert res.token_ids == ref
        assert max(res.stats.accept_hist) == (3 if correct is None else min(correct, 3))


def test_sampling_is_seeded_and_differs_by_seed(rt):
    rt._sessions.clear()
    cfg = SpecConfig(proposers=("draft", "ngram"), k=3)
    runs = [
        rt.generate(
            PROMPTS[0],
            max_new_tokens=24,
            temperature=1.0,
            seed=s,
            strategy="speculative",
            config=cfg,
            ignore_eos=True,
        ).token_ids
        for s in (1, 1, 2)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_tree_verification_used_where_supported(rt, refs, monkeypatch):
    """Trees are verified in one forward wherever the backend can (the device-cost gate is
    lifted here: tiny models make timings meaningless), and the output stays lossless."""
    from edgespec.speculative import session as spec_session

    monkeypatch.setattr(spec_session, "TREE_OVERHEAD_LIMIT", float("inf"))
    rt._sessions.clear()
    prompt, want = refs[1]
    res = rt.generate(
        prompt,
        max_new_tokens=N,
        strategy="speculative",
        ignore_eos=True,
        config=SpecConfig(proposers=("tree",), k=5),
    )
    assert sum(res.stats.k_trace) > 0
    session = next(iter(rt._sessions.values()))
    assert session.tree_ok == rt.target.supports_tree
    assert res.token_ids == want
    rt._sessions.clear()


@pytest.mark.slow
@pytest.mark.parametrize(
    "backend,weights", [("onnx", "gguf-exact"), ("llamacpp", "auto")], ids=["onnx", "llamacpp"]
)
def test_exact_mode_makes_quantized_speculation_equal_plain(smollm2_path, backend, weights):
    """--exact: one-token forwards run padded to two tokens, so plain decoding and
    verification share the kernel path. Measured: the near-tie bound drops to 0 (chains and
    trees; it is > 0 without --exact, tests/backends), so speculation must equal plain greedy
    decoding token for token, with no near-tie allowance."""
    import edgespec
    from edgespec.losslessness import calibrate_near_tie_bound

    if not BACKENDS.get(backend).available():
        pytest.skip(f"the {backend} backend is not installed")
    rt = edgespec.load(
        str(smollm2_path), backend=backend, weights=weights, n_ctx=512, progress=False, exact=True
    )
    try:
        assert calibrate_near_tie_bound(rt.target, rt.tokenizer, positions=48) == 0.0
        for text in ("List three colours of the rainbow.", "def fibonacci(n):\n    "):
            ids = rt.encode_prompt(text)
            ref = plain_reference(rt.target, ids, N).tokens
            for proposers in (("ngram", "recycle"), ("tree",)):
                rt._sessions.clear()
                res = rt.generate(
                    ids,
                    max_new_tokens=N,
                    ignore_eos=True,
                    strategy="speculative",
                    config=SpecConfig(proposers=proposers, k=4),
                )
                assert res.token_ids == ref, (text, proposers)
    finally:
        rt.close()


def test_calibrate_stores_the_tree_overhead_sessions_load(tiny_llama_dir, tmp_path, capsys):
    """``edgespec calibrate`` times a tree forward against a chain on tree-capable backends
    and stores the ratio where sessions look it up (at ``max_k + 1`` nodes, at most 9)."""
    pytest.importorskip("tokenizers")
    from edgespec.cli import main
    from edgespec.speculative import cost_curves
    from edgespec.testing import add_byte_tokenizer

    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    add_byte_tokenizer(model)
    argv = ["calibrate", "-m", str(model), "-b", "numpy", "-t", "1", "-q", "--max-k", "3"]
    assert main([*argv, "--reps", "1", "--context", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tree_overhead"] == cost_curves.load_tree_overhead(out["key"], 4) > 0
    assert cost_curves.load_tree_overhead(out["key"], 9) is None  # another size: not stored
