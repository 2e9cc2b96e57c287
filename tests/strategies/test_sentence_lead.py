"""sentence-lead (FoReaL-style) on scripted fakes: who writes which token, catch-up, gate."""

import json

import numpy as np
import pytest

from edgespec.errors import EdgespecError
from edgespec.runtime import Runtime
from edgespec.runtimes.base import LoadOptions, ModelSource
from edgespec.strategies.sentence_lead import LeadConfig, sentence_end_ids
from edgespec.testing import CharTokenizer, PrefixModel, ScriptedModel

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    """No stored cost curve: speculation sessions start from their probe."""
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path))


V = 16
ALPHABET = "abcdefg.ijklmno!"  # 7 and 15 end a sentence
PROMPT = [0, 1, 2]


def small_script(prefix):
    """Writes 1..5, and '.' (7) whenever the sentence it is in reaches 6 tokens."""
    out = prefix[len(PROMPT) :]
    since = len(out) - max((i + 1 for i, t in enumerate(out) if t == 7), default=0)
    return (7 if since == 5 else 1 + len(out) % 5), 5.0


def large_script(prefix):
    return 9 + (len(prefix) - len(PROMPT)) % 5, 5.0


def make_rt(large, small):
    return Runtime(
        tokenizer=CharTokenizer(ALPHABET),
        target=large,
        backend="fake",
        source=ModelSource("gguf", __file__, "fake"),  # type: ignore[arg-type]
        options=LoadOptions(n_ctx=4096),
        draft=small,
    )


def roles(tokens):
    return "".join("d" if t < 8 else "t" for t in tokens)


def run(rt, n=18, **cfg):
    return rt.generate(PROMPT, strategy="sentence-lead", max_new_tokens=n, config=cfg)


def test_sentence_end_ids_from_the_tokenizer():
    assert sentence_end_ids(CharTokenizer(ALPHABET)) == {7, 15}
    assert sentence_end_ids(CharTokenizer("ab c\nd")) == {4}


def test_large_model_leads_each_sentence_for_n_tokens():
    small, large = ScriptedModel(small_script, V), ScriptedModel(large_script, V)
    res = run(make_rt(large, small), n=18, lead_tokens=2, spec_k=0)
    # each sentence: 2 large tokens, then the small model writes until its '.', 6 in all
    assert roles(res.token_ids) == "ttdddd" * 3
    assert [res.token_ids[i] for i in (5, 11, 17)] == [7, 7, 7]
    assert res.stats.model_trace == "ttdddd" * 3
    assert res.stats.switches == 5
    assert res.stats.lossy is True
    # catch-up: the large model feeds the prompt once, then its own last token plus the
    # small model's 4; the small one feeds the prompt, then the large model's 2 (plus, after
    # the first sentence, its own last token)
    assert large.forward_sizes == [3, 1, 5, 1, 5, 1]
    assert small.forward_sizes == [3, 2, 1, 1, 1, 3, 1, 1, 1, 3, 1, 1, 1]
    assert sum(large.forward_sizes) == large.n_past
    assert sum(small.forward_sizes) == small.n_past


@pytest.mark.parametrize("cfg", [{"lead_tokens": 0}, {"lead_prob": 0.0, "lead_tokens": 5}])
def test_no_lead_is_the_small_models_greedy_output(cfg):
    small, large = PrefixModel(V, seed=1), PrefixModel(V, seed=2)
    res = run(make_rt(large, small), n=30, spec_k=0, **cfg)
    assert res.token_ids == small.greedy(PROMPT, 30)
    assert large.forward_sizes == []


@pytest.mark.parametrize("k", [0, 3, "auto"])
def test_leading_everything_is_the_large_models_greedy_output(k):
    small, large = PrefixModel(V, seed=1), PrefixModel(V, seed=2)
    res = run(make_rt(large, small), n=30, lead_tokens=1000, spec_k=k)
    assert res.token_ids == large.greedy(PROMPT, 30)
    assert res.stats.model_trace == "t" * 30


def test_gate_is_seeded_and_respects_probability():
    small, large = ScriptedModel(small_script, V), ScriptedModel(large_script, V)
    rt = make_rt(large, small)
    n = 6 * 200
    a = run(rt, n=n, lead_tokens=2, lead_prob=0.3, lead_seed=4, spec_k=0)
    b = run(rt, n=n, lead_tokens=2, lead_prob=0.3, lead_seed=4, spec_k=0)
    c = run(rt, n=n, lead_tokens=2, lead_prob=0.3, lead_seed=5, spec_k=0)
    assert a.token_ids == b.token_ids
    assert a.stats.model_trace != c.stats.model_trace
    led = a.stats.model_trace.count("t") / 2  # each led sentence starts with 2 large tokens
    sentences = a.token_ids.count(7) + 1
    assert 0.2 < led / sentences < 0.4
    # the gate has its own generator: sampling does not change it
    rng = np.random.default_rng(4)
    assert a.stats.model_trace.startswith("tt" if rng.random() < 0.3 else "d")


@pytest.mark.parametrize(
    "cfg,msg",
    [
        ({"lead_tokens": -1}, "lead_tokens"),
        ({"lead_prob": 1.5}, "lead_prob"),
        ({"lead_prob": float("nan")}, "NaN"),
        ({"tau": 1.0}, "unknown sentence-lead option"),
    ],
)
def test_bad_config(cfg, msg):
    rt = make_rt(PrefixModel(V), PrefixModel(V, seed=1))
    with pytest.raises(EdgespecError, match=msg):
        run(rt, **cfg)


def test_missing_draft_and_vocab_mismatch():
    with pytest.raises(EdgespecError, match="--draft"):
        run(make_rt(PrefixModel(V), None))
    with pytest.raises(EdgespecError, match="same model family"):
        run(make_rt(PrefixModel(V), PrefixModel(V * 2)))


def test_lossy_in_json_and_config_round_trip():
    res = run(make_rt(PrefixModel(V, seed=2), PrefixModel(V, seed=1)), n=8)
    assert json.loads(json.dumps(res.to_dict()))["stats"]["lossy"] is True
    cfg = LeadConfig(lead_tokens=3, lead_prob=0.5, sentence_ends=frozenset({1, 2}))
    assert LeadConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("spec_k", [5, "auto"])
def test_speculation_never_drafts_past_the_lead(monkeypatch, spec_k):
    from edgespec.strategies import composition

    def pair():  # the same model twice: every draft is accepted, the lead alone cuts it
        return make_rt(PrefixModel(V, seed=3), PrefixModel(V, seed=3))

    cfg = {"lead_tokens": 3, "sentence_ends": [15]}
    plain = run(pair(), n=60, spec_k=0, **cfg)
    rt = pair()
    session = composition.session(rt, spec_k)
    session.controller.verify.points = {n: 0.01 + 0.0003 * (n - 1) for n in range(1, 18)}
    session.controller.switch_penalty = 0.0
    monkeypatch.setattr(session.controller.verify, "observe", lambda n, s: None)
    res = run(rt, n=60, spec_k=spec_k, **cfg)
    assert res.token_ids == plain.token_ids == rt.target.greedy(PROMPT, 60)
    assert res.stats.model_trace == plain.stats.model_trace
    assert "t" in res.stats.model_trace and "d" in res.stats.model_trace
    # a step after i led tokens may draft at most 3 - i - 1: never more than 2
    assert max(res.stats.k_trace) == 2 and sum(res.stats.accept_hist.values()) > 0
