"""Scoring modes (one-pass conditional, two-pass contrastive, plain), the float32 log-softmax,
the coarse stage's stop, and where the compressor runs (its backend choice)."""

import math

import numpy as np
import pytest

from edgespec.cli import main
from edgespec.compress.core import (
    SCORERS,
    CompressOptions,
    question_overlap,
    select,
    token_information,
    word_ids,
)
from edgespec.compress.prompt import Compressor, compress_prompt, compressor_of, scoring_backend
from edgespec.errors import EdgespecError
from edgespec.runtime import Runtime
from edgespec.runtimes import BACKENDS, LoadOptions, ModelSource
from edgespec.testing import CharTokenizer, PrefixModel

pytestmark = pytest.mark.unit

ALPHABET = "abcdefgh .?\nQ:"
CONTEXT = "abc defg hab. cdef gha bcd. efgh abcd efg.\nhgf edc bag. fed cba hgf."
QUESTION = "\n\nQ: ab?"


def reference_info(model, ids):
    """-log p(ids[i] | ids[:i]) in float64, position by position, from the fake's definition
    (position 0: inf)."""
    out = [math.inf]
    for i in range(1, len(ids)):
        row = model.logits_for(ids[:i]).astype(np.float64)
        logz = np.log(np.exp(row - row.max()).sum()) + row.max()
        out.append(float(logz - row[ids[i]]))
    return np.array(out)


def ids_of(text):
    return CharTokenizer(alphabet=ALPHABET).encode(text)


@pytest.mark.parametrize("n_bos", [0, 1])
def test_conditional_is_one_pass_with_the_question_first(n_bos):
    model = PrefixModel(vocab_size=len(ALPHABET), seed=4)
    ctx, question = ids_of(CONTEXT), ids_of(QUESTION)
    scores = SCORERS.get("conditional")(model, ctx, question, n_bos, 16, False)
    head = ctx[:n_bos] + question
    ref = reference_info(model, head + ctx[n_bos:])[len(head) :]
    assert scores.passes == 1 and scores.relevance is None
    assert np.isinf(scores.info[:n_bos]).all()  # the BOS stays forced
    np.testing.assert_allclose(scores.info[n_bos:], ref, rtol=1e-5)
    # one pass: every token fed once (question and context), nothing more
    assert sum(model.forward_sizes) == len(head) + len(ctx) - n_bos


def test_contrastive_is_two_passes_and_ranks_by_the_questions_gain():
    model = PrefixModel(vocab_size=len(ALPHABET), seed=4)
    ctx, question = ids_of(CONTEXT), ids_of(QUESTION)
    scores = SCORERS.get("contrastive")(model, ctx, question, 0, 16, False)
    plain = reference_info(model, ctx)
    given = reference_info(model, question + ctx)[len(question) :]
    np.testing.assert_allclose(scores.info, plain, rtol=1e-5)
    gain = plain - given
    gain[~np.isfinite(gain)] = 0.0
    assert scores.relevance is not None and scores.passes == 2
    # a difference of two float32 log-softmaxes: the absolute bound of
    # test_token_information_equals_a_float64_log_softmax
    np.testing.assert_allclose(scores.relevance, gain, rtol=0, atol=1e-5)
    assert sum(model.forward_sizes) == 2 * len(ctx) + len(question)


def test_overlap_is_one_plain_pass_with_the_questions_rare_tokens_ranking_segments():
    model = PrefixModel(vocab_size=len(ALPHABET), seed=4)
    ctx, question = ids_of(CONTEXT), ids_of(QUESTION)
    scores = SCORERS.get("overlap")(model, ctx, question, 0, 16, False)
    np.testing.assert_allclose(scores.info, reference_info(model, ctx), rtol=1e-5)
    assert sum(model.forward_sizes) == len(ctx) and scores.passes == 1
    assert scores.relevance is not None
    np.testing.assert_array_equal(scores.relevance, question_overlap(ctx, question))


def test_question_overlap_weights_shared_tokens_by_rarity():
    # context ids: 5 x4, 7 x1, 9 x1 (6 tokens); the question holds 5 and 7 but not 9
    rel = question_overlap([5, 5, 7, 5, 9, 5], [7, 5, 1])
    expect = [math.log(6 / 4)] * 2 + [math.log(6)] + [math.log(6 / 4), 0.0, math.log(6 / 4)]
    np.testing.assert_allclose(rel, expect)


def test_question_overlap_matches_words_whatever_their_case_and_token():
    # BASE_FIELD_5 against "the base field limit": the constant's tokens ("BASE", "_FIELD")
    # have other ids than the question's (" base", " field"), but the same words
    pieces = ["BASE", "_FIELD", "_", "5", " =", " base", " limit", " x"]
    ctx = [10, 11, 12, 13, 14, 15, 16, 17]
    question_text = "Clamp the value to the module's base field limit."
    by_id = question_overlap(ctx, [99])
    assert not by_id.any()  # no id in common
    rel = question_overlap(ctx, [99], pieces, question_text)
    n = len(ctx)
    # "base" twice (BASE, " base"), "field" and "limit" once; "_", "5", "=", "x" not asked;
    # BASE_FIELD repeats the question's two words "base field" in order: x 2 (phrase_lengths),
    # so the lone " base" is a near-miss and counts nothing (phrase_runs); " limit" is whole
    expect = [2 * math.log(n / 2), 2 * math.log(n), 0, 0, 0, 0, math.log(n), 0]
    np.testing.assert_allclose(rel, expect)
    # an id the question holds still counts by id; one-letter words do not match
    rel = question_overlap([10, 17], [17], ["a", " x"], "a x")
    np.testing.assert_allclose(rel, [0.0, math.log(2)])
    # tokens without a letter or digit never count, even by id (newlines, indentation)
    rel = question_overlap([3, 4, 5], [3, 4, 5], ["\n", "    ", " base"], "\n    base")
    np.testing.assert_allclose(rel, [0.0, 0.0, math.log(3)])


def test_plain_ignores_the_question():
    model = PrefixModel(vocab_size=len(ALPHABET), seed=4)
    ctx = ids_of(CONTEXT)
    scores = SCORERS.get("plain")(model, ctx, ids_of(QUESTION), 0, 16, False)
    np.testing.assert_allclose(scores.info, reference_info(model, ctx), rtol=1e-5)
    assert sum(model.forward_sizes) == len(ctx)


@pytest.mark.parametrize("scoring", SCORERS.names())
def test_every_mode_meets_the_ratio_and_keeps_the_question(scoring):
    tok = CharTokenizer(alphabet=ALPHABET)
    comp = Compressor(PrefixModel(vocab_size=len(ALPHABET), seed=1), tok, "fake", True)
    c = compress_prompt(CONTEXT + QUESTION, comp, CompressOptions(ratio=0.3, scoring=scoring))
    assert len(c.context_ids) == round(0.3 * len(CONTEXT))
    assert c.text.endswith(QUESTION)


def test_token_information_equals_a_float64_log_softmax():
    # 49152 columns as SmolLM2's vocabulary, rows not a multiple of the block, and a large
    # offset that would overflow exp() without the max subtracted
    rng = np.random.default_rng(0)
    rows = (rng.standard_normal((70, 49152)) * 3 + 80).astype(np.float32)
    ids = rng.integers(0, 49152, 70)
    r64 = rows.astype(np.float64)
    peak = r64.max(axis=1)
    ref = peak + np.log(np.exp(r64 - peak[:, None]).sum(axis=1)) - r64[np.arange(70), ids]
    got = token_information(rows, ids)
    # float32 accumulation: `python benchmarks/compress_scoring.py --backends` prints the
    # max |diff| against float64 on [512, 49152] rows (measured 6.6e-07 nats); 1e-5 nats is
    # 15x that and far below the 0.01-nat gaps that order tokens
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    assert got.dtype == np.float64


def test_coarse_stage_stops_instead_of_dropping_a_smaller_more_relevant_segment():
    # [forced] | A: 4 dull tokens | B: 4 tokens | C: a 2-token needle, the most informative
    info = np.array([math.inf, 1.0, 1.0, 1.0, 1.0, 2.0, 2.1, 2.2, 2.3, 9.0, 9.0])
    seg = np.array([0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3])
    # floor 5: A goes (7 left); B would leave 3 < 5, so the coarse stage stops there,
    # where skipping ahead would drop C (7 - 2 = 5 fits); the fine stage takes B's three
    # least informative tokens
    assert list(select(info, seg, 4, coarse_slack=0.25)) == [0, 8, 9, 10]


def test_words_split_at_spaces_and_punctuation_and_keep_digit_runs_together():
    pieces = [" The", " code", " is", " ", "3", "5", "6", "2", ".", " Dak", "ar", ",", "\n", "Ivo"]
    assert list(word_ids(pieces)) == [0, 1, 2, 3, 4, 4, 4, 4, 5, 6, 6, 7, 8, 9]
    # an identifier is one word: its index (predictable in a run of constants) goes with it
    pieces = ["BASE", "_FIELD", "_", "5", " =", " ", "6", "1", "6", "\n"]
    assert list(word_ids(pieces)) == [0, 0, 0, 0, 1, 2, 3, 3, 3, 4]


def test_fine_stage_drops_whole_words_by_their_summed_information():
    # [forced] | w1: 1.5 | w2 (" Dak" "ar"): 3.0 + 0.2 | w3: 0.5 | w4: 1.2 -- one segment
    info = np.array([math.inf, 1.5, 3.0, 0.2, 0.5, 1.2])
    seg, words = np.zeros(6, dtype=int), np.array([0, 1, 2, 2, 3, 4])
    # single tokens would cut w2 to its first token: [0, 1, 2]
    assert list(select(info, seg, 3)) == [0, 1, 2]
    # words: w3 (0.5), w4 (1.2), w1 (1.5) go whole; w2 (3.2) stays whole
    assert list(select(info, seg, 3, words=words)) == [0, 2, 3]
    # w2 does not fit in what is left to drop: single tokens finish, lowest first
    assert list(select(info, seg, 2, words=words)) == [0, 2]


def test_unknown_scoring_mode_is_one_line():
    with pytest.raises(EdgespecError, match="unknown --compress-scoring 'fast'; known: "):
        CompressOptions(ratio=0.5, scoring="fast")


# --- where the compressor runs ---

GGUF = ModelSource("gguf", __file__, "fake")  # type: ignore[arg-type]


def test_scoring_backend_prefers_onnx_fp32_when_installed_else_llamacpp(monkeypatch):
    if not (BACKENDS.get("onnx").available() and BACKENDS.get("llamacpp").available()):
        pytest.skip("needs both onnxruntime and llama-cpp-python installed")
    name, opts = scoring_backend(GGUF, None, LoadOptions(n_threads=2))
    assert (name, opts.weights, opts.n_threads) == ("onnx", "fp32", 2)
    # weights the caller chose are kept
    assert scoring_backend(GGUF, None, LoadOptions(weights="gguf-exact"))[1].weights == (
        "gguf-exact"
    )
    monkeypatch.setattr(BACKENDS.get("onnx"), "available", classmethod(lambda cls: False))
    name, opts = scoring_backend(GGUF, None, LoadOptions())
    assert (name, opts.weights) == ("llamacpp", "auto")


def test_scoring_backend_named_is_checked():
    with pytest.raises(EdgespecError, match="unknown backend 'onx'"):
        scoring_backend(GGUF, "onx", LoadOptions())
    onnx_file = ModelSource("onnx", __file__, "fake")  # type: ignore[arg-type]
    with pytest.raises(EdgespecError, match="cannot load a onnx model"):
        scoring_backend(onnx_file, "llamacpp", LoadOptions())
    if BACKENDS.get("llamacpp").available():
        name, opts = scoring_backend(GGUF, "llamacpp", LoadOptions())
        assert (name, opts.weights) == ("llamacpp", "auto")


class FakeScoringBackend:
    """A backend that loads a PrefixModel (records what it was asked to load)."""

    accepts = ("gguf",)
    requires = ()
    loaded: list = []

    @classmethod
    def available(cls):
        return True

    @classmethod
    def load(cls, source, options):
        cls.loaded.append((source, options))
        return PrefixModel(vocab_size=len(ALPHABET), seed=9)


def test_compressor_backend_loads_the_target_model_again_there(monkeypatch):
    import edgespec.tokenizer

    monkeypatch.setitem(BACKENDS._loaded, "fakescore", FakeScoringBackend)
    monkeypatch.setattr(
        edgespec.tokenizer, "load_tokenizer", lambda src: CharTokenizer(alphabet=ALPHABET)
    )
    FakeScoringBackend.loaded.clear()
    target = PrefixModel(vocab_size=len(ALPHABET), seed=2)
    rt = Runtime(
        tokenizer=CharTokenizer(alphabet=ALPHABET),
        target=target,
        backend="fake",
        source=GGUF,
        options=LoadOptions(progress=False, n_threads=1),
        compressor_backend="fakescore",
    )
    comp = compressor_of(rt)
    assert comp.name == "fake@fakescore" and comp.same_vocab and comp.model is not target
    assert [s for s, _ in FakeScoringBackend.loaded] == [GGUF]
    res = rt.generate(CONTEXT + QUESTION, max_new_tokens=2, compress=0.5)
    assert res.stats.compressor == "fake@fakescore" and res.stats.lossy
    rt.close()


def run(capsys, *args):
    code = main(list(args))
    return code, capsys.readouterr().err


def assert_one_line(code, err, needle):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("edgespec: error: ") and needle in lines[0], lines[0]


def test_cli_bad_scoring_and_backend_fail_before_any_load(capsys, tmp_path):
    missing = str(tmp_path / "none.gguf")  # loading it would fail differently
    base = ["generate", "a\n\nb", "-m", missing, "--compress", "0.5"]
    code, err = run(capsys, *base, "--compress-scoring", "fast")
    assert_one_line(code, err, "unknown --compress-scoring 'fast'")
    code, err = run(capsys, *base, "--compressor-backend", "onx")
    assert_one_line(code, err, "unknown backend 'onx'")
    code, err = run(capsys, "generate", "x", "-m", missing, "--compressor-backend", "onnx")
    assert_one_line(code, err, "--compressor-backend applies only with --compress")
    code, err = run(capsys, *base[:-2], "--compress", "memory", "--compress-scoring", "plain")
    assert_one_line(code, err, "--compress memory takes --question-sep")


def test_bench_compress_spec_takes_a_scoring_mode():
    from edgespec.bench.runner import parse_compress

    kw = parse_compress("0.25:scoring=contrastive")
    assert kw["compress"] == CompressOptions(ratio=0.25, scoring="contrastive")
    assert parse_compress("budget=64")["compress"] == CompressOptions(budget=64)
    for bad, needle in [
        ("0.25:scoring=fast", "unknown --compress-scoring"),
        ("0.25:chunk=8", "only ':scoring=MODE'"),
        ("2:scoring=plain", "--compress must be in"),
    ]:
        with pytest.raises(EdgespecError, match=needle):
            parse_compress(bad)
