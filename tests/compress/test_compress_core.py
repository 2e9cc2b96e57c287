"""Context compression on fakes: scoring, coarse-to-fine selection, question kept whole,
ratio and budget met exactly, order kept, determinism, and bad input."""

import math

import numpy as np
import pytest

from edgespec.compress import CompressOptions, select, self_information, split_question
from edgespec.compress.core import segment_ids
from edgespec.compress.prompt import Compressor, compress_prompt
from edgespec.errors import EdgespecError
from edgespec.runtime import Runtime
from edgespec.runtimes.base import LoadOptions, ModelSource
from edgespec.testing import CharTokenizer, PrefixModel

pytestmark = pytest.mark.unit

ALPHABET = "abcdefgh .?\nQ:"


def direct_info(model, ids):
    """-log p(ids[i] | ids[:i]) computed position by position from the fake's definition."""
    out = [math.inf]
    for i in range(1, len(ids)):
        row = model.logits_for(ids[:i]).astype(np.float64)
        logz = np.log(np.exp(row - row.max()).sum()) + row.max()
        out.append(float(logz - row[ids[i]]))
    return np.array(out)


@pytest.mark.parametrize("chunk", [2, 3, 7, 512])
def test_self_information_matches_definition_for_any_chunk(chunk):
    model = PrefixModel(vocab_size=len(ALPHABET), seed=3)
    ids = [int(x) for x in np.random.default_rng(0).integers(0, len(ALPHABET), 40)]
    info = self_information(model, ids, chunk=chunk)
    np.testing.assert_allclose(info, direct_info(model, ids), rtol=1e-5)
    assert model.n_past == 0  # reset after use
    assert max(model.forward_sizes) <= chunk


def test_self_information_past_the_context_refills_a_quarter():
    model = PrefixModel(vocab_size=len(ALPHABET), seed=1, n_ctx=16)
    ids = [int(x) for x in np.random.default_rng(1).integers(0, len(ALPHABET), 40)]
    info = self_information(model, ids, chunk=8)
    assert np.isfinite(info[1:]).all() and info[0] == math.inf
    # the first 16 positions see their whole prefix, as without a limit
    np.testing.assert_allclose(info[:16], direct_info(model, ids)[:16], rtol=1e-5)
    # after the refill, position 16 is scored given only the last n_ctx // 4 tokens
    row = model.logits_for(ids[12:16]).astype(np.float64)
    expect = np.log(np.exp(row - row.max()).sum()) + row.max() - row[ids[16]]
    assert info[16] == pytest.approx(expect, rel=1e-5)


def test_select_keeps_exactly_keep_in_order_with_forced_tokens():
    rng = np.random.default_rng(5)
    info = rng.random(50)
    info[0] = math.inf
    seg = np.repeat(np.arange(10), 5)
    for keep in (1, 7, 25, 49, 50):
        kept = select(info, seg, keep)
        assert len(kept) == keep
        assert list(kept) == sorted(kept)
        assert kept[0] == 0  # the forced token survives
        np.testing.assert_array_equal(kept, select(info, seg, keep))  # deterministic


def test_select_fine_stage_drops_lowest_information_first():
    info = np.array([math.inf, 5.0, 0.1, 4.0, 0.2, 3.0, 0.3])
    kept = select(info, np.zeros(7, dtype=int), 4)  # one segment: no coarse stage
    assert list(kept) == [0, 1, 3, 5]


def test_select_ties_break_by_position():
    info = np.array([math.inf, 1.0, 1.0, 1.0, 1.0])
    assert list(select(info, np.zeros(5, dtype=int), 3)) == [0, 3, 4]


def test_select_coarse_stage_drops_whole_dull_segments():
    # segments: [forced], 3 dull filler segments of 4 tokens, one surprising segment
    info = np.array([math.inf] + [0.5] * 12 + [6.0, 0.1, 6.0, 6.0])
    seg = np.array([0] + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4)
    kept = select(info, seg, 5, coarse_slack=0.25)
    # coarse: two dull segments go whole (9 tokens left; a third would leave 5 < 6.25);
    # fine: the needle's weakest token (0.1), then the dull ones, earliest first
    assert list(kept) == [0, 12, 13, 15, 16]


def test_select_rejects_impossible_keeps():
    info = np.array([math.inf, math.inf, 1.0])
    with pytest.raises(ValueError):
        select(info, np.zeros(3, dtype=int), 1)
    with pytest.raises(ValueError):
        select(info, np.zeros(3, dtype=int), 4)


def test_segments_end_at_newlines_and_sentence_ends():
    pieces = ["a", "b", ".", " c", "\n", "d", "?", "e"]
    assert list(segment_ids(pieces)) == [0, 0, 0, 1, 1, 2, 2, 3]


def test_split_question():
    assert split_question("ctx one\n\nctx two\n\nQ: what?", None) == (
        "ctx one\n\nctx two",
        "\n\nQ: what?",
    )
    assert split_question("line a\nQ: b", None) == ("line a", "\nQ: b")
    assert split_question("just a question", None) == ("", "just a question")
    assert split_question("ab ## cd ## ef", " ## ") == ("ab ## cd", "ef")
    with pytest.raises(EdgespecError, match="separator"):
        split_question("abc", "###")


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.5, float("nan")])
def test_ratio_outside_unit_interval_is_one_line(ratio):
    with pytest.raises(EdgespecError, match=r"--compress must be in \(0, 1\]"):
        CompressOptions(ratio=ratio)


def test_options_need_exactly_one_of_ratio_and_budget():
    with pytest.raises(EdgespecError, match="one of"):
        CompressOptions()
    with pytest.raises(EdgespecError, match="one of"):
        CompressOptions(ratio=0.5, budget=10)
    with pytest.raises(EdgespecError, match="context-budget must be"):
        CompressOptions(budget=0)


def test_budget_smaller_than_question_is_one_line():
    with pytest.raises(EdgespecError, match="cannot hold the question"):
        CompressOptions(budget=5).kept_context(100, 5)
    assert CompressOptions(budget=6).kept_context(100, 5) == 1
    assert CompressOptions(ratio=0.5).kept_context(101, 5) == 50  # round half to even
    assert CompressOptions(ratio=1.0).kept_context(101, 5) == 101


def fake_compressor(seed=0):
    tok = CharTokenizer(alphabet=ALPHABET)
    model = PrefixModel(vocab_size=len(ALPHABET), seed=seed)
    return Compressor(model, tok, "fake", same_vocab=True)


CONTEXT = "abc defg hab. cdef gha bcd. efgh abcd efg.\nhgf edc bag. fed cba hgf."
QUESTION = "\n\nQ: ab?"


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.9])
def test_compress_prompt_ratio_met_exactly_question_whole(ratio):
    comp = fake_compressor()
    c = compress_prompt(CONTEXT + QUESTION, comp, CompressOptions(ratio=ratio))
    tok = comp.tokenizer
    assert c.question_ids == tok.encode(QUESTION)
    assert len(c.context_ids) == round(ratio * len(CONTEXT))
    assert c.kept == len(c.context_ids) + len(QUESTION)
    assert c.original == len(CONTEXT) + len(QUESTION)
    assert c.text.endswith(QUESTION)
    # order preserved: the kept context is a subsequence of the original
    it = iter(CONTEXT)
    assert all(ch in it for ch in c.text[: -len(QUESTION)])
    again = compress_prompt(CONTEXT + QUESTION, fake_compressor(), CompressOptions(ratio=ratio))
    assert again.ids == c.ids  # deterministic


@pytest.mark.parametrize("budget", [9, 20, 50])
def test_compress_prompt_budget_met_exactly(budget):
    c = compress_prompt(CONTEXT + QUESTION, fake_compressor(), CompressOptions(budget=budget))
    assert c.kept == budget
    assert c.question_ids == fake_compressor().tokenizer.encode(QUESTION)


def test_budget_larger_than_prompt_does_nothing_and_says_so():
    c = compress_prompt(CONTEXT + QUESTION, fake_compressor(), CompressOptions(budget=1000))
    assert c.kept == c.original and c.note is not None and "nothing compressed" in c.note


def test_keep_last_and_separator_pick_the_question():
    comp = fake_compressor()
    c = compress_prompt(CONTEXT + QUESTION, comp, CompressOptions(ratio=0.2, keep_last=4))
    assert c.question_ids == comp.tokenizer.encode(QUESTION[-4:])
    c = compress_prompt(CONTEXT + "::" + "ab?", comp, CompressOptions(ratio=0.2, separator="::"))
    assert c.text.endswith("ab?") and "::" not in c.text[-5:]


def make_rt():
    return Runtime(
        tokenizer=CharTokenizer(alphabet=ALPHABET),
        target=PrefixModel(vocab_size=len(ALPHABET), seed=2),
        backend="fake",
        source=ModelSource("gguf", __file__, "fake"),  # type: ignore[arg-type]
        options=LoadOptions(progress=False),
    )


def test_runtime_compresses_for_every_strategy_and_labels_lossy():
    rt = make_rt()
    for strategy in ("autoregressive", "speculative"):
        res = rt.generate(CONTEXT + QUESTION, strategy=strategy, max_new_tokens=4, compress=0.5)
        s = res.stats
        assert s.lossy
        assert s.compressed_from == len(CONTEXT) + len(QUESTION)
        assert s.compressed_to == len(res.prompt_token_ids) == s.prompt_tokens
        assert s.compressed_to == round(0.5 * len(CONTEXT)) + len(QUESTION)
        assert s.compressor == "target" and s.compress_s > 0
        assert s.ttft_s >= s.compress_s
        # the compressor's CPU seconds are part of cpu_s, and in --json (Stats.to_dict)
        assert s.to_dict()["compress_cpu_s"] == s.compress_cpu_s > 0
        assert s.cpu_s >= s.compress_cpu_s
        assert "compressed (lossy)" in s.summary() and "CPU-s" in s.summary()
    plain = rt.generate(CONTEXT + QUESTION, max_new_tokens=4)
    assert not plain.stats.lossy and plain.stats.compressed_from == 0


def test_bundle_names_the_compressor_and_its_default_ratio(tmp_path):
    import json

    from edgespec.compress.prompt import compressor_source_of, options_for

    manifest = {"format_version": 1, "roles": {}}
    for role in ("target", "compressor"):
        art = tmp_path / role / "gguf-q8_0" / "model.gguf"
        art.parent.mkdir(parents=True)
        art.write_bytes(b"x")
        rel = art.relative_to(tmp_path).as_posix()
        entry = {"path": rel, "source_kind": "gguf", "files": [{"path": rel, "sha256": role}]}
        manifest["roles"][role] = {"artifacts": [entry]}
    manifest["roles"]["compressor"]["default_ratio"] = 0.4
    manifest["roles"]["compressor"]["backend"] = "llamacpp"
    (tmp_path / "edgespec.json").write_text(json.dumps(manifest))
    target = ModelSource("gguf", tmp_path / "target/gguf-q8_0/model.gguf", "b:target")
    source, ratio, backend = compressor_source_of(target, None, False)
    assert source.path == (tmp_path / "compressor/gguf-q8_0/model.gguf").resolve()
    assert ratio == 0.4 and backend == "llamacpp"
    rt = make_rt()
    rt.compress_ratio = ratio
    assert options_for(rt, True, None).ratio == 0.4  # --compress without a value
    rt.compress_ratio = None
    assert options_for(rt, True, None).ratio == 0.5


def test_export_checks_the_compress_ratio_before_any_work(tmp_path):
    from edgespec.export.pipeline import ExportOptions, make_plan

    with pytest.raises(EdgespecError, match="needs --compressor"):
        make_plan(ExportOptions("m", str(tmp_path / "b"), compress_ratio=0.5))
    with pytest.raises(EdgespecError, match=r"must be in \(0, 1\]"):
        make_plan(ExportOptions("m", str(tmp_path / "b"), compressor="c", compress_ratio=2.0))


def test_export_plans_the_compressor_scoring_backend(tmp_path):
    from edgespec.export.pipeline import ExportOptions, make_plan

    def plan(**kw):
        return make_plan(ExportOptions("m", str(tmp_path / "b"), **kw))

    # the first of SCORING_BACKENDS that an exported format runs on
    assert plan(compressor="c", formats=("gguf", "onnx")).compressor_backend == "onnx"
    assert plan(compressor="c", formats=("gguf",)).compressor_backend == "llamacpp"
    assert plan(compressor="c", formats=("tvm",)).compressor_backend is None
    assert plan(formats=("onnx",)).compressor_backend is None  # no compressor role
    named = plan(compressor="c", formats=("onnx", "gguf"), compressor_backend="llamacpp")
    assert named.compressor_backend == "llamacpp"
    assert "  compressor scores on: llamacpp" in named.lines()
    with pytest.raises(EdgespecError, match="--compressor-backend onnx: the bundle has no"):
        plan(compressor="c", formats=("gguf",), compressor_backend="onnx")
    with pytest.raises(EdgespecError, match="--compressor-backend needs --compressor"):
        plan(formats=("gguf",), compressor_backend="llamacpp")
