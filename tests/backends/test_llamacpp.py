"""The llama.cpp backend against llama-cpp-python itself.

The key contract: edgespec's greedy decoding on this backend gives llama-cpp-python's own
greedy tokens, token for token. The other tests measure and pin the numerics that speculative
decoding relies on (rollback, all-position logits, batched vs one-token decodes, trees).

Measured on smollm2-135m Q4_1 (x86-64, AVX-512), for the record:

- last row of ``all_logits=True`` vs ``all_logits=False``: 0.0;
- rollback then new tokens vs a fresh cache with the same tokens: 0.0;
- one batched forward vs one token at a time: up to 1.02 on these prompts, 1.28 on other
  short prompts, 1.45 over 750 positions of longer text (absolute logit differences); what
  matters for losslessness is how far the top-2 gap moves, which the near-tie bound measures
  (``smollm2_near_tie_bound`` in conftest.py, what ``edgespec calibrate`` stores); argmax
  flips must happen within it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgespec.errors import EdgespecError, ModelLoadError
from edgespec.runtimes import BACKENDS, LoadOptions, ModelSource

llama_cpp = pytest.importorskip("llama_cpp")

from edgespec.runtimes.llamacpp import (  # noqa: E402 - after the importorskip
    MAX_TREE_LEAVES,
    LlamaCppBackend,
    LlamaCppModel,
    _context_params,
    _lib,
)

pytestmark = [pytest.mark.backend]

N_CTX = 1024
N_NEW = 40
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, there was a little girl who",
    '{"name": "Alice", "age": 30, "city":',
    "Photosynthesis is the process by which green plants",
]
# longer than n_batch (512 tokens): exercises the chunked prompt evaluation
LONG_PROMPT = (
    "Speculative decoding lets a small draft model propose several tokens that a large "
    "target model then checks in one forward pass. Accepted tokens cost one target pass "
    "between them, so the output comes faster while staying exactly what the target would "
    "have produced on its own. "
) * 12 + "In short, speculative decoding"


@pytest.fixture(scope="module")
def ref(smollm2_path: Path):
    """llama-cpp-python's own model: the reference every test compares against."""
    llm = llama_cpp.Llama(str(smollm2_path), n_ctx=N_CTX, verbose=False)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def model(smollm2_path: Path):
    m = BACKENDS.get("llamacpp").load(
        ModelSource("gguf", smollm2_path, "smollm2-135m"), LoadOptions(n_ctx=N_CTX)
    )
    yield m
    m.close()


@pytest.fixture()
def fresh(model: LlamaCppModel) -> LlamaCppModel:
    model.reset()
    return model


def tok(ref, text: str) -> list[int]:
    return ref.tokenize(text.encode(), add_bos=True, special=True)


def ref_greedy(ref, prompt_ids: list[int], n: int) -> list[int]:
    """llama-cpp-python's plain greedy generation (no prompt-cache reuse between prompts)."""
    ref.reset()
    out: list[int] = []
    for t in ref.generate(prompt_ids, top_k=1, temp=0.0, repeat_penalty=1.0):
        out.append(int(t))
        if len(out) == n:
            break
    return out


def our_greedy(model: LlamaCppModel, prompt_ids: list[int], n: int) -> list[int]:
    model.reset()
    logits = model.forward(prompt_ids, all_logits=False)
    out: list[int] = []
    while True:
        out.append(int(np.argmax(logits[-1])))
        if len(out) == n:
            return out
        logits = model.forward([out[-1]], all_logits=False)


def near_tie(row: np.ndarray, a: int, b: int, bound: float) -> bool:
    """Tokens a and b are within the measured near-tie bound of each other in ``row``."""
    return abs(float(row[a]) - float(row[b])) <= bound


def gap_change(ref_row: np.ndarray, row: np.ndarray) -> float:
    """How far ``row`` moves the top-2 gap of ``ref_row`` (the quantity the bound bounds)."""
    a, b = np.argsort(-ref_row, kind="stable")[:2]
    return abs(float(ref_row[a] - ref_row[b]) - float(row[a] - row[b]))


# -- registry and parameters ------------------------------------------------------------------


def test_registered():
    cls = BACKENDS.get("llamacpp")
    assert cls is LlamaCppBackend
    assert (cls.name, cls.accepts, cls.requires, cls.extra) == (
        "llamacpp",
        ("gguf",),
        ("llama_cpp",),
        "llamacpp",
    )
    assert cls.available()


def test_rejects_other_source_kinds(tmp_path: Path):
    with pytest.raises(EdgespecError, match="GGUF"):
        LlamaCppBackend.load(ModelSource("hf", tmp_path, "some/model"), LoadOptions())


@pytest.mark.slow
def test_context_params_mirror_llama(ref):
    """Our context is built as llama_cpp.Llama builds its own, except the tree sequences."""
    ours = _context_params(_lib(), N_CTX, None, MAX_TREE_LEAVES)
    theirs = ref.context_params
    for name, _ in type(theirs)._fields_:
        a, b = getattr(ours, name), getattr(theirs, name)
        if not isinstance(b, (int, float, bool)) or name in ("n_seq_max", "kv_unified"):
            continue
        assert a == b, name
    assert (ours.n_seq_max, ours.kv_unified) == (MAX_TREE_LEAVES, True)


@pytest.mark.slow
def test_info_and_sizes(model: LlamaCppModel, ref):
    assert model.backend == "llamacpp"
    assert model.info.arch == "llama"
    assert model.info.vocab_size == model.n_vocab == ref.n_vocab()
    assert model.n_ctx == N_CTX
    assert model.n_batch == ref.n_batch == 512


# -- the key test ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS + [LONG_PROMPT], ids=[*map(str, range(5)), "long"])
def test_greedy_matches_llama_cpp_python(model: LlamaCppModel, ref, prompt: str):
    ids = tok(ref, prompt)
    if prompt is LONG_PROMPT:
        assert len(ids) > model.n_batch
    expected = ref_greedy(ref, ids, N_NEW)
    got = our_greedy(model, ids, N_NEW)
    assert got == expected, ref.detokenize(got)
    assert model.n_past == len(ids) + N_NEW - 1


# -- logits: all positions, batching, rollback -----------------------------------------------


@pytest.mark.slow
def test_all_logits_rows(fresh: LlamaCppModel, smollm2_path: Path, ref):
    ids = tok(ref, PROMPTS[2])
    full = fresh.forward(ids, all_logits=True)
    assert full.shape == (len(ids), fresh.n_vocab) and full.dtype == np.float32
    assert fresh.n_past == len(ids)
    fresh.reset()
    last = fresh.forward(ids, all_logits=False)
    assert last.shape == (1, fresh.n_vocab) and last.dtype == np.float32
    # measured: logits flags do not change numerics, so the last rows are identical
    np.testing.assert_array_equal(full[-1], last[0])
    # and every row equals llama-cpp-python's logits_all evaluation
    llm = llama_cpp.Llama(str(smollm2_path), n_ctx=64, logits_all=True, verbose=False)
    try:
        llm.eval(ids)
        np.testing.assert_array_equal(full, llm.scores[: len(ids)])
    finally:
        llm.close()


@pytest.mark.slow
def test_long_input_is_chunked_like_llama_eval(fresh: LlamaCppModel, ref):
    ids = tok(ref, LONG_PROMPT)
    full = fresh.forward(ids)
    assert full.shape[0] == len(ids) > fresh.n_batch
    fresh.reset()
    a = fresh.forward(ids[:300])
    b = fresh.forward(ids[300:])
    # multi-token decodes agree whatever the chunking (measured 0.0)
    np.testing.assert_array_equal(np.concatenate([a, b]), full)


@pytest.mark.slow
def test_batched_vs_one_by_one(fresh: LlamaCppModel, ref, smollm2_near_tie_bound: float):
    bound = smollm2_near_tie_bound
    worst = worst_gap = 0.0
    for prompt in PROMPTS:
        ids = tok(ref, prompt)
        fresh.reset()
        batched = fresh.forward(ids)
        fresh.reset()
        single = np.concatenate([fresh.forward([t]) for t in ids])
        worst = max(worst, float(np.abs(batched - single).max()))
        worst_gap = max(
            worst_gap, *(gap_change(s, b) for s, b in zip(single, batched, strict=True))
        )
        for i in np.nonzero(batched.argmax(1) != single.argmax(1))[0]:
            assert near_tie(single[i], batched[i].argmax(), single[i].argmax(), bound)
    print(
        f"max |batched - one-by-one| logit difference: {worst:.3f}; top-2 gap change "
        f"{worst_gap:.3f} (measured near-tie bound {bound:.3f})"
    )
    assert worst > 0.0  # 1.02 measured; 0.0 would mean a backend change
    assert worst_gap <= bound


@pytest.mark.slow
def test_rollback_equals_fresh_cache(fresh: LlamaCppModel, smollm2_path: Path, ref):
    ids = tok(ref, PROMPTS[2] + " lived in a village near the forest.")
    a, b, c = ids[:8], ids[8:14], [617, 436, 253, 1838, 8180]
    fresh.forward(a + b)
    fresh.rollback(len(b))
    assert fresh.n_past == len(a)
    got = fresh.forward(c)
    assert fresh.n_past == len(a) + len(c)
    lib = _lib()
    assert lib.llama_memory_seq_pos_max(fresh._mem, 0) == fresh.n_past - 1

    with LlamaCppModel(smollm2_path, n_ctx=N_CTX) as other:
        other.forward(a)
        same_chunks = other.forward(c)
        other.reset()
        one_chunk = other.forward(a + c)[len(a) :]
    # measured 0.0 for both: the truncated cells are reused in order
    np.testing.assert_array_equal(got.argmax(1), same_chunks.argmax(1))
    np.testing.assert_array_equal(got, same_chunks)
    np.testing.assert_allclose(got, one_chunk, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_rollback_of_single_steps(fresh: LlamaCppModel, ref):
    """The speculative pattern: decode k tokens, reject some, decode them again."""
    fresh.forward(tok(ref, PROMPTS[0]), all_logits=False)
    steps = [2141, 617, 436, 253, 1838]
    first = [fresh.forward([t]) for t in steps]
    fresh.rollback(3)
    again = [fresh.forward([t]) for t in steps[2:]]
    for x, y in zip(first[2:], again, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_truncate_bounds(fresh: LlamaCppModel):
    fresh.forward([1, 2, 3])
    with pytest.raises(ValueError):
        fresh.truncate(4)
    with pytest.raises(ValueError):
        fresh.truncate(-1)
    with pytest.raises(ValueError):
        fresh.rollback(4)
    fresh.truncate(3)
    assert fresh.n_past == 3
    fresh.reset()
    assert fresh.n_past == 0


@pytest.mark.slow
def test_bad_tokens(fresh: LlamaCppModel):
    with pytest.raises(ValueError):
        fresh.forward([])
    with pytest.raises(ValueError):
        fresh.forward([fresh.n_vocab])
    with pytest.raises(ValueError):
        fresh.forward([-1])
    assert fresh.n_past == 0


@pytest.mark.slow
def test_context_overflow_is_a_clean_error(smollm2_path: Path):
    with LlamaCppModel(smollm2_path, n_ctx=64) as m:
        m.forward(list(range(100, 160)))
        with pytest.raises(EdgespecError, match="n_ctx"):
            m.forward(list(range(5)))
        with pytest.raises(EdgespecError, match="n_ctx"):
            m.forward_tree(list(range(5)), [-1, 0, 1, 2, 3])
        assert m.n_past == 60
        assert m.forward([1, 2, 3, 4], all_logits=False).shape == (1, m.n_vocab)
        assert m.n_past == 64


#: contexts shorter than MAX_TREE_LEAVES (64) tokens: llama.cpp aborted the process in
#: output_reserve (GGML_ASSERT(n_outputs_max <= cparams.n_outputs_max), n_seq_max > n_batch)
#: for every n_ctx from 1 to 63 (a subprocess sweep of 1..70, 100, 257, 513 on smollm2-135m);
#: ``exact`` at n_ctx 1 had no batch slot for its dummy token (a ValueError)
SMALL_CONTEXTS = [(1, False), (2, False), (57, False), (63, False), (1, True), (57, True)]


def test_small_contexts_load_and_decode(smollm2_path: Path):
    """Every small n_ctx loads, decodes and scores a tree; run in a subprocess, since
    llama.cpp's asserts abort the whole process."""
    code = (
        "import sys\n"
        "from edgespec.runtimes.llamacpp import LlamaCppModel\n"
        f"for n, exact in {SMALL_CONTEXTS!r}:\n"
        "    with LlamaCppModel(sys.argv[1], n_ctx=n, exact=exact) as m:\n"
        "        m.forward([1, 2, 3][: max(n - 2, 1)])\n"
        "        m.forward([4], all_logits=False) if m.n_past < n else None\n"
        "        if n >= 4:\n"
        "            m.forward_tree([5, 6], [-1, -1])\n"
        "            m.keep_path([1])\n"
        "        print('ok', n, exact, m.n_past, m.max_tree_leaves, flush=True)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(smollm2_path)], capture_output=True, text=True
    )
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr[-2000:])
    assert r.stdout.count("ok ") == len(SMALL_CONTEXTS), r.stdout


# -- trees -------------------------------------------------------------------------------------

TREE_TOKENS = [1041, 260, 655, 28, 2141, 617, 436]
TREE_PARENTS = [-1, 0, 0, 1, -1, 4, 3]


def path_to(i: int, parents: list[int]) -> list[int]:
    p = []
    while i >= 0:
        p.append(i)
        i = parents[i]
    return p[::-1]


@pytest.mark.slow
def test_tree_matches_linear_paths(
    fresh: LlamaCppModel, smollm2_path: Path, ref, smollm2_near_tie_bound: float
):
    bound = smollm2_near_tie_bound
    prefix = tok(ref, PROMPTS[2])
    fresh.forward(prefix, all_logits=False)
    tree = fresh.forward_tree(TREE_TOKENS, TREE_PARENTS)
    assert tree.shape == (len(TREE_TOKENS), fresh.n_vocab)
    assert fresh.n_past == len(prefix)  # a tree is pending, not committed
    with LlamaCppModel(smollm2_path, n_ctx=N_CTX) as lin:
        for i in range(len(TREE_TOKENS)):
            lin.reset()
            lin.forward(prefix, all_logits=False)
            row = lin.forward([TREE_TOKENS[j] for j in path_to(i, TREE_PARENTS)])[-1]
            assert gap_change(row, tree[i]) <= bound
            if row.argmax() != tree[i].argmax():
                assert near_tie(row, row.argmax(), tree[i].argmax(), bound)

        chosen = path_to(6, TREE_PARENTS)
        fresh.keep_path(chosen)
        assert fresh.n_past == len(prefix) + len(chosen)
        lib = _lib()
        assert lib.llama_memory_seq_pos_max(fresh._mem, 0) == fresh.n_past - 1
        for s in range(1, 4):
            assert lib.llama_memory_seq_pos_max(fresh._mem, s) == -1
        lin.reset()
        lin.forward(prefix + [TREE_TOKENS[j] for j in chosen], all_logits=False)
        nxt = [5081, 1194, 1041]
        a, b = fresh.forward(nxt), lin.forward(nxt)
        # the KV layout differs (interleaved tree cells): measured up to 0.5 per logit
        assert max(gap_change(y, x) for x, y in zip(a, b, strict=True)) <= bound
        for i in np.nonzero(a.argmax(1) != b.argmax(1))[0]:
            assert near_tie(b[i], b[i].argmax(), a[i].argmax(), bound)


@pytest.mark.slow
def test_discarded_tree_leaves_no_trace(fresh: LlamaCppModel, ref):
    prefix = tok(ref, PROMPTS[0])
    fresh.forward(prefix, all_logits=False)
    expected = fresh.forward([5081, 1194])
    fresh.rollback(2)
    fresh.forward_tree(TREE_TOKENS, TREE_PARENTS)
    got = fresh.forward([5081, 1194])  # discards the pending tree first
    np.testing.assert_array_equal(got, expected)

    fresh.forward_tree(TREE_TOKENS, TREE_PARENTS)
    fresh.keep_path([])
    fresh.rollback(2)
    np.testing.assert_array_equal(fresh.forward([5081, 1194]), expected)
    assert fresh.n_past == len(prefix) + 2


@pytest.mark.slow
def test_chain_tree_equals_batched_forward(fresh: LlamaCppModel, ref):
    prefix = tok(ref, PROMPTS[1])
    fresh.forward(prefix, all_logits=False)
    chain = fresh.forward_tree([1041, 260, 655], [-1, 0, 1])
    fresh.keep_path([0, 1, 2])
    fresh.rollback(3)
    np.testing.assert_array_equal(chain, fresh.forward([1041, 260, 655]))


@pytest.mark.slow
def test_tree_argument_checks(fresh: LlamaCppModel, smollm2_path: Path):
    with pytest.raises(ValueError, match="parent"):
        fresh.forward_tree([1, 2], [-1, 1])
    with pytest.raises(ValueError):
        fresh.forward_tree([1, 2], [-1])
    with pytest.raises(ValueError, match="pending tree"):
        fresh.keep_path([0])
    fresh.forward([1, 2, 3])
    fresh.forward_tree([4, 5, 6], [-1, 0, -1])
    with pytest.raises(ValueError, match="path"):
        fresh.keep_path([1])
    with pytest.raises(ValueError, match="path"):
        fresh.keep_path([0, 2])
    with LlamaCppModel(smollm2_path, n_ctx=64, max_tree_leaves=2) as m:
        with pytest.raises(ValueError, match="leaves"):
            m.forward_tree([1, 2, 3], [-1, -1, -1])


# -- loading, errors, resources ----------------------------------------------------------------


def test_missing_file(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        LlamaCppModel(tmp_path / "nope.gguf")


def test_garbage_file(tmp_path: Path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(ModelLoadError):
        LlamaCppBackend.load(ModelSource("gguf", bad, "bad"), LoadOptions(n_ctx=64))


@pytest.mark.slow
def test_truncated_gguf(tmp_path: Path, smollm2_path: Path):
    cut = tmp_path / "cut.gguf"
    data = smollm2_path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        LlamaCppBackend.load(ModelSource("gguf", cut, "cut"), LoadOptions(n_ctx=64))


def test_gguf_that_llama_cpp_rejects(tmp_path: Path):
    """A well-formed GGUF of an unknown architecture passes open_gguf; llama.cpp refuses it."""
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "alien.gguf"
    w = gguf.GGUFWriter(str(path), "no-such-arch")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match="llama.cpp could not load"):
        LlamaCppModel(path, n_ctx=64)


@pytest.mark.slow
def test_close_is_idempotent(smollm2_path: Path):
    m = LlamaCppModel(smollm2_path, n_ctx=64, n_threads=1)
    lib = _lib()
    assert lib.llama_n_threads(m._ctx) == lib.llama_n_threads_batch(m._ctx) == 1
    m.forward([1, 2])
    m.close()
    m.close()
    with pytest.raises(ValueError, match="closed"):
        m.forward([1])


@pytest.mark.slow
def test_silent_on_stderr(smollm2_path: Path):
    """Loading, decoding, failing and freeing print nothing (fresh process: no Llama yet)."""
    code = f"""
import pytest
from edgespec.errors import EdgespecError
from edgespec.runtimes.llamacpp import LlamaCppModel
m = LlamaCppModel({str(smollm2_path)!r}, n_ctx=64)
m.forward([1, 2, 3], all_logits=False)
with pytest.raises(EdgespecError, match="context is full.*n_ctx=64"):
    m.forward(list(range(100)))
m.close()
m2 = LlamaCppModel({str(smollm2_path)!r}, n_ctx=64)
m2.forward([4])
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"
    assert r.stderr == ""


# -- the tokenizer reading the model's own vocabulary ---------------------------------------------

TOKENIZER_TEXT = (
    "def f(x):\n    return x * 2  # naïve 🐍 €\n<|im_start|>user\nhi<|im_end|>\n" + " " * 33 + "x"
)


@pytest.mark.parametrize("name", ["smollm2_path", "qwen05b_path"])
def test_own_tokenizer_equals_llama_cpp_python(name: str, request: pytest.FixtureRequest):
    """The tokenizer a loaded model shares (no second vocabulary) and the one loading the
    vocabulary alone give llama-cpp-python's own ``Llama(vocab_only=True).tokenize`` ids, BOS,
    end-of-generation set, chat template and vocabulary, on two vocabularies (49,152 and
    151,936 tokens)."""
    from edgespec.tokenizer import LlamaCppTokenizer

    path = request.getfixturevalue(name)
    m = LlamaCppModel(path, n_ctx=64)
    shared, alone = m.own_tokenizer(), LlamaCppTokenizer(path)
    assert shared._model is m._ref and alone._model is not m._ref
    ref = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    want = ref.tokenize(TOKENIZER_TEXT.encode(), add_bos=True, special=True)
    for tk in (shared, alone):
        assert tk.encode(TOKENIZER_TEXT) == want
        assert tk.encode("") == ref.tokenize(b"", add_bos=True, special=True)
        assert tk.bos_id == (ref.token_bos() if ref.token_bos() >= 0 else None)
        assert ref.token_eos() in tk.eos_ids
        assert tk.chat_template == ref.metadata.get("tokenizer.chat_template")
        assert tk.vocab_size == ref.n_vocab()
    assert shared.eos_ids == alone.eos_ids and shared.vocab() == alone.vocab()
    m.close()


def test_own_tokenizer_outlives_its_model(smollm2_path: Path):
    """A tokenizer taken from a model keeps the loaded vocabulary alive after the model is
    closed and dropped (the model is freed with the last holder): it still encodes, decodes
    the same, and a closed model gives none."""
    m = LlamaCppModel(smollm2_path, n_ctx=64)
    tk = m.own_tokenizer()
    ids = tk.encode(TOKENIZER_TEXT)
    text = tk.decode(ids)
    assert TOKENIZER_TEXT in text  # (a BOS, where the vocabulary adds one, renders too)
    m.close()
    del m
    import gc

    gc.collect()
    assert tk.encode(TOKENIZER_TEXT) == ids
    assert tk.decode(ids) == text
    closed = LlamaCppModel(smollm2_path, n_ctx=64)
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        closed.own_tokenizer()


def test_load_takes_the_models_own_tokenizer(smollm2_path: Path):
    """``edgespec.load`` on llamacpp builds the vocabulary once: the runtime's tokenizer
    reads the target model's."""
    import edgespec

    rt = edgespec.load(str(smollm2_path), backend="llamacpp", n_ctx=64)
    assert rt.tokenizer._model is rt.target._ref
    out = rt.generate("Hello", max_new_tokens=3)
    assert out.token_ids and rt.tokenizer.decode(out.token_ids) == out.text


def test_draft_of_another_vocabulary_is_one_line_after_its_own_load(
    smollm2_path: Path, qwen05b_path: Path
):
    """On llamacpp the draft's vocabulary is compared with the one its model loaded (not a
    second copy): a draft of another family is still one line naming both sizes."""
    import edgespec

    with pytest.raises(EdgespecError, match="has 151936 tokens but target .* has 49152"):
        edgespec.load(str(smollm2_path), draft=str(qwen05b_path), backend="llamacpp", n_ctx=64)
