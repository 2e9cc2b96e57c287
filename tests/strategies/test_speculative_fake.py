"""Losslessness of the speculative engine on a deterministic fake model.

The oracle drafter is right for exactly j tokens, then wrong, which makes 0 %, partial and
100 % acceptance reproducible. Output must equal plain greedy decoding token for token.
"""

import itertools

import numpy as np
import pytest

from edgespec.errors import EdgespecError
from edgespec.runtime import Runtime
from edgespec.runtimes.base import LoadOptions, ModelSource
from edgespec.sampling import GenerationParams
from edgespec.speculative.base import Proposer
from edgespec.speculative.config import SpecConfig
from edgespec.speculative.types import EMPTY_DRAFT
from edgespec.strategies import STRATEGIES
from edgespec.testing import (
    CharTokenizer,
    FailingProposer,
    OracleProposer,
    PrefixModel,
    serve_proposer,
)

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path))


def make_rt(n_ctx=4096, vocab=16, scale=3.0):
    return Runtime(
        tokenizer=CharTokenizer("abcdefghijklmnopqrstuvwxyz"[:vocab]),
        target=PrefixModel(vocab_size=vocab, n_ctx=n_ctx, scale=scale),
        backend="fake",
        source=ModelSource("gguf", __file__, "fake"),  # type: ignore[arg-type]
        options=LoadOptions(n_ctx=n_ctx),
    )


PROMPT = [1, 2, 3, 4, 5, 1, 2, 3]


@pytest.mark.parametrize("correct", [0, 1, 2, 3, None])
@pytest.mark.parametrize("k", [1, 4, 7])
def test_greedy_lossless_at_any_acceptance(monkeypatch, correct, k):
    rt = make_rt()
    serve_proposer(monkeypatch, "oracle", lambda r: OracleProposer(r.target, correct))
    ref = rt.target.greedy(PROMPT, 40)
    res = rt.generate(
        PROMPT,
        max_new_tokens=40,
        strategy="speculative",
        config=SpecConfig(proposers=("oracle",), k=k),
    )
    assert res.token_ids == ref
    hist = res.stats.accept_hist
    expect = k if correct is None else min(correct, k)
    # every step with a full-length draft accepts exactly `expect` tokens
    assert max(hist) == expect
    if correct is None:
        assert res.stats.target_forwards < 40 / (k + 1) + 3
    if correct == 0:
        assert set(hist) == {0}


def test_rollback_stress_cache_equals_accepted_sequence(monkeypatch):
    rt = make_rt()
    rng = np.random.default_rng(0)

    def random_oracle(r):
        class R(OracleProposer):
            def propose(self, context, k, _rng):
                self.correct = int(rng.integers(0, k + 1))
                return super().propose(context, k, _rng)

        return R(r.target, 0)

    serve_proposer(monkeypatch, "oracle", random_oracle)
    gen = rt.start(
        PROMPT,
        max_new_tokens=60,
        strategy="speculative",
        config=SpecConfig(proposers=("oracle",), k=5),
    )
    res = gen.run()
    assert res.token_ids == rt.target.greedy(PROMPT, 60)
    assert len(set(res.stats.accept_hist)) >= 4, "many different acceptance lengths"


def test_cache_after_each_step_matches_committed(monkeypatch):
    """After every step the target's cache holds exactly prompt + output minus the pending
    (last) token: nothing drafted and rejected stays behind."""
    rt = make_rt()
    serve_proposer(monkeypatch, "oracle", lambda r: OracleProposer(r.target, 2))
    gen = rt.start(
        PROMPT,
        max_new_tokens=60,  # room for 11 full steps
        strategy="speculative",
        config=SpecConfig(proposers=("oracle",), k=4),
    )
    strategy = STRATEGIES.get("speculative")(gen.ctx)  # drive the steps one by one
    seq, checked = list(PROMPT), 0
    for step in itertools.islice(strategy.steps(PROMPT), 12):
        seq += step
        assert rt.target.tokens == seq[:-1], f"after step {checked}"
        checked += 1
    assert checked == 12
    assert seq[len(PROMPT) :] == rt.target.greedy(PROMPT, len(seq) - len(PROMPT))
    assert gen.ctx.rec.accept_hist == {2: 11}  # every step after the first rejected a token


@pytest.mark.parametrize("strategy", ["speculative", "auto"])
def test_real_cheap_proposers_lossless(strategy):
    rt = make_rt(vocab=8, scale=6.0)  # peaky -> repetitive text -> n-gram hits
    ref = rt.target.greedy(PROMPT, 80)
    for proposers in (("ngram",), ("recycle",), ("ngram", "recycle")):
        res = rt.generate(
            PROMPT,
            max_new_tokens=80,
            strategy=strategy,
            config=SpecConfig(proposers=proposers, probe_every=4),
        )
        assert res.token_ids == ref, proposers
    fixed = rt.generate(
        PROMPT,
        max_new_tokens=80,
        strategy="speculative",
        config=SpecConfig(proposers=("ngram",), k=3),
    )
    assert fixed.token_ids == ref
    assert sum(fixed.stats.accept_hist.values()) > 0


def test_recycle_tree_drafts_are_verified_as_trees():
    rt = make_rt(vocab=8, scale=1.0)
    ref = rt.target.greedy(PROMPT, 60)
    cfg = SpecConfig(proposers=("recycle",), k=6, tree=True)
    res = rt.generate(PROMPT, max_new_tokens=60, strategy="speculative", config=cfg)
    assert res.token_ids == ref
    assert max(rt.target.forward_sizes) > 2


def test_recycling_drafts_chains_where_trees_are_not_verified(monkeypatch):
    """On a target without tree forwards, recycling drafts a chain of first candidates (a
    tree cut to its main chain kept one node of three), and the controller models chains;
    on a tree-capable target it drafts trees and the controller knows their shape. (The
    tree / chain cost is a timing, which the fake target's sub-millisecond forwards put
    above the limit in about one run of fifteen: fixed here at equal cost.)"""
    from edgespec.speculative import cost_curves

    monkeypatch.setattr(cost_curves, "tree_overhead", lambda *a, **kw: 1.0)
    cfg = SpecConfig(proposers=("recycle",), k=6, tree=True)
    rt = make_rt(vocab=8, scale=1.0)
    shaped = rt.spec_session(cfg, allow_plain=False)
    assert shaped.tree_ok and shaped.proposers["recycle"].tree
    assert shaped.controller.acceptance["recycle"].parents == (-1, -1, -1, 0, 0, 1)
    rt = make_rt(vocab=8, scale=1.0)
    rt.target.supports_tree = False
    ref = rt.target.greedy(PROMPT, 60)
    session = rt.spec_session(cfg, allow_plain=False)
    assert not session.tree_ok and not session.proposers["recycle"].tree
    assert session.controller.acceptance["recycle"].parents is None
    res = rt.generate(PROMPT, max_new_tokens=60, strategy="speculative", config=cfg)
    assert res.token_ids == ref
    assert max(res.stats.accept_hist) > 1  # chains of several accepted tokens


def test_tree_overhead_is_measured_once_and_stored(monkeypatch):
    """Whether trees are drafted is a device fact: the first session measures the tree /
    chain cost and stores it, later runtimes load it, and only ``calibrate`` measures again.
    Measured per session, a ratio near the limit flipped with timing noise, and with it the
    drafts and a seeded run's draws (CI: two seeded runs differed from the 4th token)."""
    from edgespec.speculative import cost_curves
    from edgespec.speculative.session import TREE_OVERHEAD_LIMIT, tree_nodes

    ratios = iter([TREE_OVERHEAD_LIMIT, TREE_OVERHEAD_LIMIT * 1.01])
    sizes: list[int] = []

    def measure(model, n, **_):
        sizes.append(n)
        return next(ratios)

    monkeypatch.setattr(cost_curves, "measure_tree_overhead", measure)
    cfg = SpecConfig(proposers=("recycle",), k=6, tree=True)
    sessions = [make_rt(vocab=8).spec_session(cfg, allow_plain=False) for _ in range(2)]
    assert [(s.tree_ok, s.tree_overhead) for s in sessions] == [(True, TREE_OVERHEAD_LIMIT)] * 2
    n = tree_nodes(cfg.max_k)
    assert sizes == [n]  # measured by the first session only
    rt = make_rt(vocab=8)
    again = cost_curves.tree_overhead(
        rt.target, rt.curve_key(), n, remeasure=True, source="calibrate"
    )
    assert again == TREE_OVERHEAD_LIMIT * 1.01 and sizes == [n, n]
    assert not rt.spec_session(cfg, allow_plain=False).tree_ok  # the new measurement rules


def test_sampling_seeded_runs_repeat_exactly(monkeypatch):
    """Same seed, same starting state (a fresh runtime, as two ``edgespec generate --seed``
    runs): the same tokens. Within one runtime the session learns between generations (the
    recycling table, acceptance), which changes the drafts and so the random draws; with
    stateless n-gram drafts at a fixed k, repeated generations in one runtime repeat too.
    Whether the recycling proposer drafts trees is measured once and stored (the test
    above), so timing noise cannot change the drafts between the two runs."""
    cfg = SpecConfig(proposers=("ngram", "recycle"), k=3)
    a, b = (
        make_rt(vocab=8, scale=2.0).generate(
            PROMPT, max_new_tokens=50, temperature=0.8, seed=11, strategy="speculative", config=cfg
        )
        for _ in range(2)
    )
    assert a.token_ids == b.token_ids
    assert sum(a.stats.accept_hist.values()) > 0  # it did speculate
    rt = make_rt(vocab=8, scale=2.0)
    ngram = SpecConfig(proposers=("ngram",), k=3)
    c, d = (
        rt.generate(
            PROMPT,
            max_new_tokens=50,
            temperature=0.8,
            seed=11,
            strategy="speculative",
            config=ngram,
        )
        for _ in range(2)
    )
    assert c.token_ids == d.token_ids


def test_auto_prefers_plain_when_verification_is_expensive(monkeypatch):
    """With a linear cost curve and a useless drafter, auto should mostly decode plainly."""
    rt = make_rt()
    serve_proposer(monkeypatch, "oracle", lambda r: OracleProposer(r.target, 0))
    session = rt.spec_session(SpecConfig(proposers=("oracle",), probe_every=0), allow_plain=True)
    session.controller.verify.points = {n: 0.01 * n for n in range(1, 18)}
    monkeypatch.setattr(session.controller.verify, "observe", lambda n, s: None)
    res = rt.generate(
        PROMPT,
        max_new_tokens=40,
        strategy="speculative",
        config=SpecConfig(proposers=("oracle",), probe_every=0),
    )
    assert res.token_ids == rt.target.greedy(PROMPT, 40)
    assert res.stats.k_trace.count(0) >= len(res.stats.k_trace) - 6


def test_auto_speculates_when_verification_is_cheap(monkeypatch):
    rt = make_rt()
    serve_proposer(monkeypatch, "oracle", lambda r: OracleProposer(r.target, None))
    cfg = SpecConfig(proposers=("oracle",))
    session = rt.spec_session(cfg, allow_plain=True)
    session.controller.verify.points = {n: 0.01 + 0.0003 * (n - 1) for n in range(1, 18)}
    monkeypatch.setattr(session.controller.verify, "observe", lambda n, s: None)
    res = rt.generate(PROMPT, max_new_tokens=150, strategy="speculative", config=cfg)
    assert res.token_ids == rt.target.greedy(PROMPT, 150)
    assert max(res.stats.k_trace) == cfg.max_k
    assert res.stats.mean_accepted_per_forward > 4


def test_failing_draft_falls_back_to_plain_and_says_so(monkeypatch):
    rt = make_rt()
    serve_proposer(monkeypatch, "failing", lambda r: FailingProposer(r.target, fail_at=3))
    res = rt.generate(
        PROMPT,
        max_new_tokens=30,
        strategy="speculative",
        config=SpecConfig(proposers=("failing",), k=3),
    )
    assert res.token_ids == rt.target.greedy(PROMPT, 30)
    assert any("fell back to plain decoding" in n for n in res.stats.notes)


def test_bad_spec_input():
    rt = make_rt()
    with pytest.raises(EdgespecError, match="unknown proposer 'bogus'; known: "):
        rt.generate(PROMPT, strategy="speculative", config=SpecConfig(proposers=("bogus",)))
    with pytest.raises(EdgespecError, match="--k must be >= 0"):
        SpecConfig(k=-1)
    with pytest.raises(EdgespecError, match="needs a draft model"):
        rt.generate(PROMPT, strategy="speculative", config=SpecConfig(proposers=("draft",)))


def test_speculative_stats_in_json(monkeypatch):
    rt = make_rt()
    serve_proposer(monkeypatch, "oracle", lambda r: OracleProposer(r.target, 2))
    d = rt.generate(
        PROMPT,
        max_new_tokens=20,
        strategy="speculative",
        config=SpecConfig(proposers=("oracle",), k=3),
    ).to_dict()["stats"]
    assert d["strategy"] == "speculative"
    # the prefill gives token 1; each full step drafts 3, keeps 2 and adds the bonus: six
    # steps give tokens 2..19; token 20 leaves no room for a draft, so it is a plain step
    assert d["accept_hist"] == {"2": 6}
    assert d["k_trace"] == [3, 3, 3, 3, 3, 3, 0]
    assert d["proposer_trace"] == ["oracle"] * 6 + [""]
    assert d["accepted_trace"] == [2] * 6 + [0]
    assert d["target_forwards"] == 1 + 7
    assert d["mean_accepted_per_forward"] == pytest.approx(19 / 7)


def test_stats_say_which_proposer_drafted(monkeypatch):
    rt = make_rt()
    serve_proposer(monkeypatch, "oracle", lambda r: OracleProposer(r.target, 1))
    serve_proposer(monkeypatch, "silent", lambda r: Silent())
    cfg = SpecConfig(proposers=("silent", "oracle"), k=3)
    stats = rt.generate(PROMPT, max_new_tokens=12, strategy="speculative", config=cfg).stats
    # "silent" ranks first and drafts nothing: its fallback "oracle" drafts; the last
    # token leaves no room for a draft
    assert stats.proposer_trace == ["oracle"] * 5 + [""]
    assert stats.accepted_trace == [1] * 5 + [0]
    assert stats.steps_by_proposer() == "plain 1, oracle 5 (1.00 accepted a step)"
    assert "steps: plain 1, oracle 5 (1.00 accepted a step)" in stats.summary()
    stats.proposer_trace[1:3] = ["", "other"]
    stats.accepted_trace[1:3] = [0, 3]
    assert stats.steps_by_proposer() == "plain 2, oracle 3 (1.00 accepted a step), other 1 (3.00)"


def make_rt_with_draft(draft_seed, vocab=16, scale=3.0):
    rt = make_rt(vocab=vocab, scale=scale)
    rt.draft = PrefixModel(vocab_size=vocab, seed=draft_seed, scale=scale)
    return rt


@pytest.mark.parametrize("proposer", ["draft", "tree"])
@pytest.mark.parametrize("draft_seed", [0, 1])  # 0: the draft equals the target; 1: unrelated
def test_model_drafts_greedy_lossless(proposer, draft_seed):
    rt = make_rt_with_draft(draft_seed)
    ref = rt.target.greedy(PROMPT, 50)
    for k in (1, 3, 6):
        cfg = SpecConfig(proposers=(proposer,), k=k, min_confidence=0.0)
        res = rt.generate(PROMPT, max_new_tokens=50, strategy="speculative", config=cfg)
        assert res.token_ids == ref, (proposer, k)
        if draft_seed == 0:  # a perfect draft is always fully accepted
            assert res.stats.mean_accepted_per_forward > k * 0.8
    if proposer == "tree" and draft_seed == 1:
        assert max(rt.target.forward_sizes) > 2


def test_tree_proposer_builds_trees_when_unsure():
    rt = make_rt_with_draft(1, vocab=16, scale=0.5)  # flat draft -> bushy trees
    prop = None
    cfg = SpecConfig(proposers=("tree",), k=6)
    session = rt.spec_session(cfg, allow_plain=True)
    prop = session.proposers["tree"]
    prop.begin(PROMPT, __import__("edgespec").GenerationParams())
    d = prop.propose(PROMPT, 6, np.random.default_rng(0))
    assert d.is_tree and d.k == 6
    assert len(d.children(-1)) > 1


def test_draft_sampling_seeded_repeat():
    rt = make_rt_with_draft(1, vocab=8, scale=2.0)
    for proposer in ("draft", "tree"):
        cfg = SpecConfig(proposers=(proposer,), k=3)
        runs = [
            rt.generate(
                PROMPT,
                max_new_tokens=40,
                temperature=0.9,
                seed=3,
                strategy="speculative",
                config=cfg,
            ).token_ids
            for _ in range(2)
        ]
        assert runs[0] == runs[1]


def test_probe_interval_backs_off_when_probes_fail(monkeypatch):
    """Plain decoding wins at the prior acceptance (0.7) but would lose to a perfect
    proposer (c(n) = 0.01 (0.3 + 0.7 n)), so it is worth probing; failed probes space out
    exponentially (``probe_z=0``: each probe tests the proposer at perfect acceptance; by
    default its rejections soon end the probes, ``test_rejections_end_the_probes``)."""
    rt = make_rt()
    serve_proposer(monkeypatch, "oracle", lambda r: OracleProposer(r.target, 0))
    cfg = SpecConfig(proposers=("oracle",), probe_every=4, probe_z=0)
    session = rt.spec_session(cfg, allow_plain=True)
    session.controller.verify.points = {n: 0.01 * (0.3 + 0.7 * n) for n in range(1, 18)}
    assert session.controller.could_win("oracle", 8)
    monkeypatch.setattr(session.controller.verify, "observe", lambda n, s: None)
    res = rt.generate(PROMPT, max_new_tokens=200, strategy="speculative", config=cfg)
    assert res.token_ids == rt.target.greedy(PROMPT, 200)
    probes = [i for i, k in enumerate(res.stats.k_trace) if k]
    gaps = [b - a for a, b in zip(probes, probes[1:], strict=False)]
    assert gaps[:4] == [8, 16, 32, 64]  # the probe takes the place of the n-th plain step
    assert session.probe_interval == 128


@pytest.mark.parametrize("memory", [2048, 8])
def test_rejections_end_the_probes(monkeypatch, memory):
    """The proposer of the test above, every drafted token rejected, needs an acceptance
    of about 0.79 to beat plain decoding by the margin. By default (``probe_z`` 1) its
    first rejected probe leaves 0.5 at most plausible (Wilson, one rejection), and it is
    not probed again (``probe_memory`` 2048 steps). With a memory of 8 steps the rejection
    is forgotten within a few intervals and the probes resume."""
    assert SpecConfig().probe_z == 1.0 and SpecConfig().probe_memory == 2048
    rt = make_rt()
    serve_proposer(monkeypatch, "oracle", lambda r: OracleProposer(r.target, 0))
    cfg = SpecConfig(proposers=("oracle",), probe_every=4, probe_memory=memory)
    session = rt.spec_session(cfg, allow_plain=True)
    ctl = session.controller
    ctl.verify.points = {n: 0.01 * (0.3 + 0.7 * n) for n in range(1, 18)}
    assert ctl.could_win("oracle", 8)  # nothing verified yet: tested at perfect acceptance
    monkeypatch.setattr(ctl.verify, "observe", lambda n, s: None)
    res = rt.generate(PROMPT, max_new_tokens=200, strategy="speculative", config=cfg)
    assert res.token_ids == rt.target.greedy(PROMPT, 200)
    probes = [i for i, k in enumerate(res.stats.k_trace) if k]
    acceptance = ctl.acceptance["oracle"]
    assert acceptance.hits == 0
    if memory == 2048:
        assert probes == [3]
        # Wilson's upper end with no hits at z = 1 is 1 / (1 + trials): one rejection,
        # a little aged
        assert 0.9 < acceptance.trials < 1
        assert acceptance.ceiling(1.0) == pytest.approx(1 / (1 + acceptance.trials))
        assert not ctl.could_win("oracle", 8)
    else:
        assert len(probes) >= 4 and probes[-1] > 100
        assert acceptance.trials < 0.01 and ctl.could_win("oracle", 8)


def test_probes_rotate_over_the_proposers(monkeypatch):
    """A probe goes to the proposer tried least recently. Always probing the best at k = 1
    never re-tried a draft model whose catch-up-laden first calls made it look slow, because
    a cheap lookup with poor acceptance ranked above it (docs/benchmarks.md section 10)."""
    rt = make_rt()
    calls: list[str] = []

    def oracle(name):
        class Logged(OracleProposer):
            def propose(self, context, k, rng):
                calls.append(name)
                return super().propose(context, k, rng)

        Logged.name = name
        return lambda r: Logged(r.target, 0)

    serve_proposer(monkeypatch, "cheap", oracle("cheap"))
    serve_proposer(monkeypatch, "slow", oracle("slow"))
    cfg = SpecConfig(proposers=("cheap", "slow"), probe_every=4, probe_hopeless=True)
    session = rt.spec_session(cfg, allow_plain=True)
    ctl = session.controller
    ctl.verify.points = {n: 0.01 * n for n in range(1, 18)}  # plain always wins
    monkeypatch.setattr(ctl.verify, "observe", lambda n, s: None)
    monkeypatch.setattr(ctl, "record_draft", lambda *a, **kw: None)
    ctl.draft_cost.update(cheap=0.0, slow=1.0)  # "slow" never ranks first at k = 1
    assert ctl.expected_rate("cheap", 1) > ctl.expected_rate("slow", 1)
    res = rt.generate(PROMPT, max_new_tokens=120, strategy="speculative", config=cfg)
    assert res.token_ids == rt.target.greedy(PROMPT, 120)
    assert calls[:4] == ["cheap", "slow", "cheap", "slow"]


@pytest.mark.parametrize("per_prompt", [True, False])
def test_probe_interval_restarts_with_each_prompt(monkeypatch, per_prompt):
    """With ``probe_per_prompt`` a new generation probes after ``probe_every`` plain steps
    again (the default); without it it keeps the interval failed probes doubled, and the
    steps counted toward it, so the next probe comes where the last generation left off
    (counted from 0 with each prompt, an interval past one answer's length never came
    round again). One interval shared by the proposers here: ``probe_each`` off."""
    assert SpecConfig().probe_per_prompt is True
    rt = make_rt()
    serve_proposer(monkeypatch, "oracle", lambda r: OracleProposer(r.target, 0))
    cfg = SpecConfig(
        proposers=("oracle",),
        probe_every=4,
        probe_per_prompt=per_prompt,
        probe_each=False,
        probe_hopeless=True,
    )
    session = rt.spec_session(cfg, allow_plain=True)
    session.controller.verify.points = {n: 0.01 * n for n in range(1, 18)}
    monkeypatch.setattr(session.controller.verify, "observe", lambda n, s: None)
    first = rt.generate(PROMPT, max_new_tokens=200, strategy="speculative", config=cfg)
    assert session.probe_interval == 128
    trace = first.stats.k_trace
    # steps counted since the last probe: all after it but the answer's last (no room)
    counted = len(trace) - 1 - max(i for i, k in enumerate(trace) if k) - 1
    res = rt.generate(PROMPT, max_new_tokens=60, strategy="speculative", config=cfg)
    assert res.token_ids == rt.target.greedy(PROMPT, 60)
    probes = [i for i, k in enumerate(res.stats.k_trace) if k]
    assert probes == ([3, 11, 27] if per_prompt else [128 - counted - 1])
    assert per_prompt or 0 < probes[0] < 60  # the carried count comes round in this answer


def _follow_session(monkeypatch, rt, follow: bool, draft_cost: float = 0.0, hopeless: bool = False):
    """An always-right oracle that the controller starts out believing bad (acceptance
    0.05), costs where that belief keeps it plain, probes every 4 plain steps
    (``hopeless``: also where it could not win at perfect acceptance)."""
    serve_proposer(monkeypatch, "oracle", lambda r: OracleProposer(r.target, None))
    cfg = SpecConfig(
        proposers=("oracle",),
        probe_every=4,
        probe_follow=follow,
        probe_hopeless=hopeless,
        probe_k=2,  # the mechanics at a fixed length (the default follows the estimate)
    )
    session = rt.spec_session(cfg, allow_plain=True)
    ctl = session.controller
    ctl.verify.points = {n: 0.01 * (1 + 0.3 * (n - 1)) for n in range(1, 18)}
    ctl.switch_penalty = 0.0
    monkeypatch.setattr(ctl.verify, "observe", lambda n, s: None)
    monkeypatch.setattr(ctl, "record_draft", lambda *a, **kw: None)
    ctl.draft_cost["oracle"] = draft_cost
    ctl.acceptance["oracle"].alpha[:] = 0.05
    assert ctl.choose(8).k == 0
    return cfg


@pytest.mark.parametrize("follow", [True, False])
def test_a_fully_accepted_probe_is_followed_up(monkeypatch, follow):
    """One accepted probe moves an estimate by 15 % of its gap; with ``probe_follow`` the
    next step probes again, so a proposer that turned good is taken up within a few steps
    instead of one probe interval per step of re-learning."""
    assert SpecConfig().probe_follow is True
    rt = make_rt()
    cfg = _follow_session(monkeypatch, rt, follow)
    res = rt.generate(PROMPT, max_new_tokens=80, strategy="speculative", config=cfg)
    assert res.token_ids == rt.target.greedy(PROMPT, 80)
    ks = res.stats.k_trace
    first = next(i for i, k in enumerate(ks) if k)
    assert first == 3  # the 4th plain step is the first probe
    if follow:  # a follow-up, then the controller's own choice: no plain step until the end
        assert ks[first + 1] == 2 and all(ks[first : len(ks) - 1])
    else:  # the next probe waits for 4 more plain steps
        assert ks[first + 1 : first + 5] == [0, 0, 0, 2]


def _named(name, correct):
    """A factory of an :class:`OracleProposer` named ``name``, right for ``correct`` tokens."""

    class Named(OracleProposer):
        pass

    Named.name = name
    return lambda r: Named(r.target, correct)


@pytest.mark.parametrize("always", [True, False])
def test_proposers_not_in_use_are_probed_while_another_drafts(monkeypatch, always):
    """ "meh" keeps 1 token of every draft, so the controller speculates with it at every
    step; "great" is always right but believed bad. Counting only plain steps toward a
    probe, "great" is never tried again (section 12: recycling's k = 2 drafts kept n-gram
    and the draft model out of whole answers); counting every step, it is probed, followed
    up, and taken."""
    assert SpecConfig().probe_always is True

    serve_proposer(monkeypatch, "meh", _named("meh", 1))
    serve_proposer(monkeypatch, "great", _named("great", None))
    cfg = SpecConfig(proposers=("meh", "great"), probe_every=4, probe_always=always)
    rt = make_rt()
    ctl = rt.spec_session(cfg, allow_plain=True).controller
    ctl.verify.points = {n: 0.01 * (1 + 0.1 * (n - 1)) for n in range(1, 18)}
    ctl.switch_penalty = 0.0
    monkeypatch.setattr(ctl.verify, "observe", lambda n, s: None)
    monkeypatch.setattr(ctl, "record_draft", lambda *a, **kw: None)
    ctl.acceptance["meh"].alpha[:] = [1.0] + [0.0] * 7
    ctl.acceptance["great"].alpha[:] = 0.05
    assert ctl.choose(8).proposer == "meh"
    res = rt.generate(PROMPT, max_new_tokens=150, strategy="speculative", config=cfg)
    assert res.token_ids == rt.target.greedy(PROMPT, 150)
    trace = [n for n in res.stats.proposer_trace if n]
    if always:
        assert trace[:4] == ["meh", "meh", "meh", "great"]
        # then "great" drafts, and "meh" (not in use now) is probed every 4 steps in turn
        later = trace[4:]
        assert later.count("great") >= 3 * later.count("meh") > 0 and trace[-1] == "great"
    else:
        assert set(trace) == {"meh"}


@pytest.mark.parametrize("each", [True, False])
def test_each_proposer_backs_off_on_its_own_failed_probes(monkeypatch, each):
    """ "bad" is always wrong, "half" keeps 1 of each 2-token probe; plain decoding wins
    every step (linear costs), so every drafting step is a probe. With one shared interval
    "bad"'s failures double it and "half"'s successes restart it, so "half" waits longer
    after each of "bad"'s probes (section 12: the n-gram lookup's failed probes spaced out
    the draft model's); with ``probe_each`` "bad" alone backs off, to 32x, and "half" is
    re-tried every ``probe_every`` steps (the default)."""
    assert SpecConfig().probe_each is True

    serve_proposer(monkeypatch, "bad", _named("bad", 0))
    serve_proposer(monkeypatch, "half", _named("half", 1))
    cfg = SpecConfig(
        proposers=("bad", "half"), probe_every=4, probe_each=each, probe_hopeless=True, probe_k=2
    )
    rt = make_rt()
    session = rt.spec_session(cfg, allow_plain=True)
    ctl = session.controller
    ctl.verify.points = {n: 0.01 * n for n in range(1, 18)}  # plain always wins
    monkeypatch.setattr(ctl.verify, "observe", lambda n, s: None)
    monkeypatch.setattr(ctl, "record_draft", lambda *a, **kw: None)
    res = rt.generate(PROMPT, max_new_tokens=300, strategy="speculative", config=cfg)
    assert res.token_ids == rt.target.greedy(PROMPT, 300)
    trace = res.stats.proposer_trace
    steps = {n: [i for i, p in enumerate(trace) if p == n] for n in ("bad", "half")}
    gaps = {n: [b - a for a, b in zip(s, s[1:], strict=False)] for n, s in steps.items()}
    half_gaps = gaps["half"]
    if each:
        assert session.intervals == {"bad": 128, "half": 4}
        # "bad" backs off alone; "half" waits its 4 steps, one more when "bad" took the step
        assert gaps["bad"][:4] == [8, 16, 32, 64] and max(half_gaps) <= 5
        assert len(steps["half"]) > 5 * len(steps["bad"])
    else:  # the probes alternate, and after each of "bad"'s failures the interval doubled
        assert abs(len(steps["half"]) - len(steps["bad"])) <= 1 and max(half_gaps) >= 8


@pytest.mark.parametrize("drift", [True, False])
def test_the_session_cost_curve_follows_the_host_by_default(drift):
    assert SpecConfig().cost_drift is True
    rt = make_rt()
    session = rt.spec_session(SpecConfig(proposers=("ngram",), cost_drift=drift), allow_plain=True)
    assert (session.controller.verify.drift_rate > 0) is drift


def test_follow_ups_stop_after_a_few_in_a_row(monkeypatch):
    """A proposer the controller never takes (its drafting is too slow) is probed at most
    1 + FOLLOW_UPS times in a row; then plain steps until the next probe."""
    from edgespec.speculative.session import FOLLOW_UPS

    rt = make_rt()
    cfg = _follow_session(monkeypatch, rt, True, draft_cost=1.0, hopeless=True)
    res = rt.generate(PROMPT, max_new_tokens=90, strategy="speculative", config=cfg)
    assert res.token_ids == rt.target.greedy(PROMPT, 90)
    chain = [0, 0, 0] + [2] * (1 + FOLLOW_UPS)
    assert res.stats.k_trace[: 2 * len(chain)] == chain * 2


@pytest.mark.parametrize("hopeless", [False, True])
def test_a_proposer_that_could_not_win_is_not_probed(monkeypatch, hopeless):
    """Drafting at 1 s a token, even a perfect proposer loses to 10 ms plain steps: by
    default it is never probed (each probe could only lose time); ``probe_hopeless``
    probes it anyway, every 4 steps as before."""
    assert SpecConfig().probe_hopeless is False
    rt = make_rt()
    cfg = _follow_session(monkeypatch, rt, True, draft_cost=1.0, hopeless=hopeless)
    session = rt.spec_session(cfg, allow_plain=True)
    assert not session.controller.could_win("oracle", 8)
    res = rt.generate(PROMPT, max_new_tokens=40, strategy="speculative", config=cfg)
    assert res.token_ids == rt.target.greedy(PROMPT, 40)
    assert any(res.stats.k_trace) is hopeless
    # the same proposer drafting for free could win: probed by default
    session.controller.draft_cost["oracle"] = 0.0
    assert session.controller.could_win("oracle", 8)


def test_probes_that_lose_time_wait_for_the_budget(monkeypatch):
    """A probe that took longer than plain decoding of its tokens raises its proposer's
    interval to loss / (probe_budget x c(1)); the draft model's catch-up and follow-ups
    are not counted, a probe that gained leaves the interval, and each prompt starts from
    the budget's interval again."""
    from edgespec.speculative.types import Draft, Verdict

    rt = make_rt()
    serve_proposer(monkeypatch, "oracle", lambda r: OracleProposer(r.target, 0))
    cfg = SpecConfig(proposers=("oracle",), probe_every=4, probe_budget=0.02)
    session = rt.spec_session(cfg, allow_plain=True)
    ctl = session.controller
    ctl.verify.points = {n: 0.01 * (0.3 + 0.7 * n) for n in range(1, 18)}  # c(1) = 10 ms
    session.begin(list(PROMPT), GenerationParams())
    probe = Draft((5, 6), source="oracle", catchup_s=0.5)
    kept_one = Verdict(path=(0,), tokens=(5, 7))

    def charge(seconds: float, follow_up: bool = False) -> int:
        session.probing, session.follow_up = True, follow_up
        session.charge_probe(probe, kept_one, seconds)
        return session.intervals["oracle"]

    # 2 tokens for 0.5 s catch-up + 24.5 ms: 4.5 ms lost, / (0.02 x 10 ms) = 22.5 steps
    assert charge(0.5245) == 23
    assert session.probe_loss["oracle"] == pytest.approx(0.0045)
    assert charge(0.9, follow_up=True) == 23  # not learned from
    session.intervals["oracle"] = 4  # as after_step sets it after an accepted probe
    assert charge(0.5 + 0.016) == 4  # gained 4 ms: mean loss 0.25 ms, 1.25 steps
    session.begin(list(PROMPT), GenerationParams())
    assert session.intervals["oracle"] == 4
    charge(0.5 + 0.044)  # lost 24 ms: mean 12.125 ms, 60.6 steps
    session.begin(list(PROMPT), GenerationParams())
    assert session.intervals["oracle"] == 61
    ctl.verify.points = {n: 1e-3 * n for n in range(1, 18)}  # at most 32 x probe_every
    session.begin(list(PROMPT), GenerationParams())
    assert session.intervals["oracle"] == 128
    off = rt.spec_session(SpecConfig(proposers=("oracle",), probe_budget=0), allow_plain=True)
    off.probing = True
    off.charge_probe(probe, kept_one, 9.0)
    assert off.probe_loss == {}
    with pytest.raises(EdgespecError, match="probe_budget"):
        SpecConfig(probe_budget=1.5)


def test_a_follow_up_stops_when_a_token_is_rejected(monkeypatch):
    rt = make_rt()
    serve_proposer(monkeypatch, "oracle", lambda r: OracleProposer(r.target, 1))
    cfg = SpecConfig(proposers=("oracle",), probe_every=4, probe_hopeless=True, probe_k=2)
    session = rt.spec_session(cfg, allow_plain=True)
    session.controller.verify.points = {n: 0.01 * n for n in range(1, 18)}  # plain wins
    monkeypatch.setattr(session.controller.verify, "observe", lambda n, s: None)
    res = rt.generate(PROMPT, max_new_tokens=30, strategy="speculative", config=cfg)
    assert res.token_ids == rt.target.greedy(PROMPT, 30)
    # each probe keeps 1 of 2 tokens: no follow-up, the interval restarts at 4
    assert res.stats.k_trace[:10] == [0, 0, 0, 2, 0, 0, 0, 2, 0, 0]


@pytest.mark.parametrize("proposer", ["draft", "tree"])
def test_draft_model_forwards_are_counted(proposer):
    rt = make_rt_with_draft(1)
    calls = rt.draft.forward_calls
    res = rt.generate(
        PROMPT,
        max_new_tokens=30,
        strategy="speculative",
        config=SpecConfig(proposers=(proposer,), k=3, min_confidence=0.0),
    )
    ran = rt.draft.forward_calls - calls
    assert ran > 0 and res.stats.draft_forwards == ran
    # one sync forward per step, then one per further drafted token (depth, for trees)
    assert ran >= res.stats.target_forwards - 1
    lookup = rt.generate(PROMPT, max_new_tokens=30, strategy="speculative", config=SpecConfig(k=3))
    assert lookup.stats.draft_forwards == 0 and rt.draft.forward_calls == calls + ran


# --- bug 1 (issue 10): auto kept only the default proposer of any SpecConfig ---------------


@pytest.mark.parametrize("config", [SpecConfig(max_k=4), {"max_k": 4}, SpecConfig(k=3)])
def test_auto_without_named_proposers_uses_every_cheap_one_and_the_draft(config):
    rt = make_rt_with_draft(1)
    gen = rt.start(PROMPT, max_new_tokens=4, strategy="auto", config=config)
    assert set(gen.ctx.config.proposers) == {"ngram", "recycle", "draft"}
    assert gen.ctx.config.controller.allow_plain
    gen.run()


def test_auto_keeps_the_proposers_the_user_named():
    rt = make_rt_with_draft(1)
    gen = rt.start(PROMPT, strategy="auto", config=SpecConfig(proposers=("recycle",), max_k=4))
    assert set(gen.ctx.config.proposers) == {"recycle"}
    assert gen.ctx.config.controller.max_k == 4


# --- bug 3 (issue 10): a fixed k used the first proposer only -------------------------------


class Silent(Proposer):
    """Never finds anything to draft (an n-gram lookup without a match)."""

    name = "silent"

    def propose(self, context, k, rng):
        return EMPTY_DRAFT


def test_fixed_k_falls_back_to_the_next_proposer_when_the_best_drafts_nothing(monkeypatch):
    rt = make_rt()
    serve_proposer(monkeypatch, "silent", lambda r: Silent())
    serve_proposer(monkeypatch, "oracle", lambda r: OracleProposer(r.target, None))
    cfg = SpecConfig(proposers=("silent", "oracle"), k=4)
    res = rt.generate(PROMPT, max_new_tokens=40, strategy="speculative", config=cfg)
    assert res.token_ids == rt.target.greedy(PROMPT, 40)
    # every step drafts 4 tokens (the last may be shorter: room), all accepted
    assert res.stats.k_trace[:-1] == [4] * (len(res.stats.k_trace) - 1)
    assert res.stats.accept_hist[4] == len(res.stats.k_trace) - 1


def test_fixed_k_runs_ngram_and_recycle(monkeypatch):
    """``speculative:proposers=ngram+recycle:k=4`` drafts with both, not n-gram alone."""
    rt = make_rt(vocab=8, scale=1.0)
    gen = rt.start(
        PROMPT,
        max_new_tokens=60,
        strategy="speculative",
        config={"proposers": ["ngram", "recycle"], "k": 4},
    )
    calls = {"ngram": 0, "recycle": 0}
    for name, prop in gen.ctx.config.proposers.items():

        def counted(context, k, rng, _inner=prop.propose, _name=name):
            calls[_name] += 1
            return _inner(context, k, rng)

        monkeypatch.setattr(prop, "propose", counted)
    res = gen.run()
    assert res.token_ids == rt.target.greedy(PROMPT, 60)
    assert calls["ngram"] > 0 and calls["recycle"] > 0, calls
