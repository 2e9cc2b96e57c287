"""The controller's arithmetic: cost curve, acceptance estimates, choice of (proposer, k)."""

import numpy as np
import pytest

from edgespec.speculative.controller import Acceptance, Controller, CostCurve
from edgespec.speculative.proposers.recycle import top_k_rows

pytestmark = pytest.mark.unit


def brute_choice(c: Controller, limit: int):
    plain = c.expected_rate(None, 0)
    best: tuple[str | None, int, float] = (None, 0, plain)
    for name in c.acceptance:
        for k in range(1, min(c.max_k, limit) + 1):
            r = c.expected_rate(name, k)
            if r > plain * (1 + c.margin) and r > best[2]:
                best = (name, k, r)
    return best


def test_vectorised_choice_equals_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        curve = CostCurve(
            {1: 1.0, 2: 1 + rng.random(), 5: 2 + 2 * rng.random(), 9: 3 + 3 * rng.random()},
            drift=0.5 + rng.random(),
        )
        acc = {n: Acceptance(rng.random(8)) for n in ("a", "b")}
        c = Controller(
            curve,
            acc,
            max_k=8,
            switch_penalty=0.1 * rng.random(),
            draft_cost={"b": 0.05 * rng.random()},
        )
        limit = int(rng.integers(0, 10))
        got = c.choose(limit)
        name, k, r = brute_choice(c, limit)
        assert (got.proposer, got.k) == (name, k)
        assert got.expected_rate == pytest.approx(r)


def test_expected_tokens_geometric():
    a = Acceptance(np.full(8, 0.5))
    assert a.expected_tokens(0) == 1.0
    assert a.expected_tokens(2) == pytest.approx(1 + 0.5 + 0.25)
    np.testing.assert_allclose(a.expected_tokens_all(3), [1, 1.5, 1.75, 1.875])


def test_plain_wins_when_verification_is_linear_and_margin_holds():
    c = Controller(
        CostCurve({n: float(n) for n in range(1, 10)}), {"a": Acceptance(np.full(8, 0.9))}
    )
    assert c.choose(8).k == 0
    cheap = Controller(CostCurve({1: 1.0, 9: 1.2}), {"a": Acceptance(np.full(8, 0.9))})
    assert cheap.choose(8).k == 8


def test_top_k_rows_matches_argsort_and_restores():
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((3, 1000)).astype(np.float32)
    rows[2] = np.round(rows[2])  # ties: the first of equal values comes first
    keep = rows.copy()
    got = top_k_rows(rows, 4)
    np.testing.assert_array_equal(got, np.argsort(-keep, axis=1, kind="stable")[:, :4])
    np.testing.assert_array_equal(rows, keep)


def test_fixed_k_chooses_among_proposers():
    """Bug 3 (issue 10): with a fixed k the controller used the first proposer only."""
    curve = CostCurve({1: 1.0, 5: 1.2})
    acc = {"weak": Acceptance(np.full(8, 0.1)), "strong": Acceptance(np.full(8, 0.9))}
    c = Controller(curve, acc, max_k=8, fixed_k=4)
    got = c.choose(8)
    assert (got.proposer, got.k) == ("strong", 4)
    assert got.expected_rate == pytest.approx(c.expected_rate("strong", 4))
    assert got.fallbacks == ("weak",)  # tried, in order, when the best one drafts nothing
    # the ranking uses acceptance only, not measured drafting times (seeded runs repeat)
    c.draft_cost["strong"] = 10.0
    assert c.choose(8).proposer == "strong"
    c.acceptance["weak"].alpha[:] = 0.95
    assert c.choose(8).proposer == "weak"
    # the room left caps k; no room means plain decoding
    assert c.choose(2).k == 2 and c.choose(0).proposer is None


def test_a_draft_models_catch_up_is_not_its_cost_per_token():
    """The draft model's batched forward over the prompt (or the tokens of plain steps) is
    reported apart, and the controller learns what drafting costs from the rest: charging
    the catch-up made the 0.5B draft look 73 ms a token instead of about 30, and ``auto``
    stopped choosing it."""
    from types import SimpleNamespace

    from edgespec.sampling import GenerationParams
    from edgespec.speculative.proposers.draft_model import STEADY_LAG, DraftModelProposer
    from edgespec.speculative.step import _learn_draft_cost
    from edgespec.speculative.types import Draft
    from edgespec.testing import PrefixModel

    rng = np.random.default_rng(0)
    proposer = DraftModelProposer(PrefixModel(vocab_size=16, scale=8.0), min_confidence=0.0)
    prompt = list(range(10))
    proposer.begin(prompt, GenerationParams())
    first = proposer.propose(prompt, 3, rng)
    assert first.k == 3 and first.catchup_s > 0  # fed the 10 prompt tokens
    # a step that accepted everything: the cache lags by the last draft token and the bonus
    context = [*prompt, *first.tokens, 5]
    assert len(context) - len(proposer.cached) == STEADY_LAG
    steady = proposer.propose(context, 3, rng)
    assert steady.catchup_s == 0.0
    # after plain steps it catches up again
    assert proposer.propose([*context, *steady.tokens, 1, 2, 3], 3, rng).catchup_s > 0

    session = SimpleNamespace(controller=Controller(CostCurve({1: 1.0}), {}))
    cost = session.controller.draft_cost
    _learn_draft_cost(session, "draft", Draft((1,), catchup_s=0.5), 0.6)  # nothing steady
    assert "draft" not in cost
    _learn_draft_cost(session, "draft", Draft((1, 2, 3), catchup_s=0.5), 0.7)
    assert cost["draft"] == pytest.approx(0.1)  # (0.7 - 0.5) s over the 2 later tokens
    _learn_draft_cost(session, "ngram", Draft(()), 0.001)  # an empty lookup: one token
    assert cost["ngram"] == pytest.approx(0.001)
    _learn_draft_cost(session, "draft", Draft((1, 2)), 0.3)  # steady: all of it, per token
    assert cost["draft"] == pytest.approx(0.8 * 0.1 + 0.2 * 0.15)


def test_cost_curve_table_equals_its_scalar_definition():
    """The vectorised ``at`` (one pass per plain step) against the scalar rule it replaced:
    linear interpolation between points, the last slope (never negative) beyond them, one
    point scaled linearly above it, and linear costs without points."""

    def scalar(points, n):
        pts = {x: y for x, y in points.items() if x >= 1}
        if not pts:
            return 1.0 * n
        xs = sorted(pts)
        ys = [pts[x] for x in xs]
        if len(xs) == 1:
            return ys[0] * n / xs[0] if n > xs[0] else ys[0]
        if n <= xs[-1]:
            return float(np.interp(n, xs, ys))
        return ys[-1] + max((ys[-1] - ys[-2]) / (xs[-1] - xs[-2]), 0.0) * (n - xs[-1])

    rng = np.random.default_rng(1)
    cases = [{}, {3: 0.5}, {1: 1.0, 9: 0.8}]
    for _ in range(50):
        xs = rng.choice(np.arange(1, 12), size=rng.integers(2, 6), replace=False)
        cases.append({int(x): float(rng.random()) for x in xs} | {0: 0.3})
    for points in cases:
        curve = CostCurve(dict(points))
        table = curve.table(17)
        for n in range(1, 18):
            assert table[n] == pytest.approx(scalar(points, n), rel=1e-12, abs=1e-15)
            assert curve(n) == pytest.approx(scalar(points, n), rel=1e-12, abs=1e-15)


def test_cost_curve_caches_follow_the_points():
    """The shape arrays, the table and ``c(n)`` at a measured size are cached between
    observations, and the table's entry 1 alone is updated when only ``c(1)`` moved: after
    every observation (mostly plain steps, some of other sizes, some of new sizes) and after
    the points are replaced, they equal a fresh curve's over the same points, exactly."""
    from edgespec.speculative.session import DRIFT_RATE, SHAPE_EMA

    rng = np.random.default_rng(3)
    starts = [{1: 1.0, 2: 1.2}, {1: 1.0, 3: 1.5, 9: 3.0}, {1: 1.0, 2: 1.1, 5: 2.0, 9: 2.5}]
    for points in starts:
        curve = CostCurve(dict(points), ema=SHAPE_EMA, drift_rate=DRIFT_RATE)
        for step in range(300):
            n = 1 if rng.random() < 0.8 else int(rng.integers(1, 12))
            curve.observe(n, float(curve(n) * (0.7 + 0.6 * rng.random())))
            if step == 150:
                curve.points = {1: 2.0, 2: 2.5, 4: 3.0}  # as tests set a curve
            fresh = CostCurve(dict(curve.points), drift=curve.drift)
            np.testing.assert_array_equal(curve.table(17), fresh.table(17))
            for m in (1, 2, n, 13):
                assert curve(m) == float(fresh.at(np.array([m], dtype=np.float64))[0])


def test_expected_tokens_follow_rates_changed_in_place():
    """``expected_tokens_all`` is cached while the rates are unchanged, whoever changes them
    (learning, or a test writing ``alpha[:]``), and the cached array is read-only."""
    chain = Acceptance(np.full(8, 0.5))
    first = chain.expected_tokens_all(8)
    with pytest.raises(ValueError, match="read-only"):
        first[0] = 2.0
    chain.alpha[:] = 0.9
    np.testing.assert_array_equal(
        chain.expected_tokens_all(8), Acceptance(np.full(8, 0.9)).expected_tokens_all(8)
    )
    assert chain.expected_tokens_all(3).shape == (4,)
    tree = Acceptance.prior(8, 0.5, RECYCLE_SHAPE)
    before = tree.expected_tokens_all(8).copy()
    tree.siblings[0, 0] = 0.4  # the second candidate at depth 1 more often right
    assert tree.expected_tokens_all(8)[2] == pytest.approx(before[2] - 0.25 + 0.4)


SHAPE = {1: 1.0, 2: 1.2, 3: 1.4, 4: 1.6, 5: 1.8}


def drifting() -> CostCurve:
    from edgespec.speculative.session import DRIFT_RATE, SHAPE_EMA

    return CostCurve(dict(SHAPE), ema=SHAPE_EMA, drift_rate=DRIFT_RATE)


def test_a_slower_host_slows_every_size_not_only_the_one_observed():
    """Plain steps (n = 1) at twice the stored cost: with the drift the whole curve follows,
    so speculation does not look twice as cheap as it is. One size alone cannot tell the
    host from the shape; on this deterministic sequence the drift takes 79 % of the log
    ratio (c(5) 1.73x its stored value), without it nothing but c(1) moves."""
    fixed, drift = CostCurve(dict(SHAPE)), drifting()
    for _ in range(30):
        fixed.observe(1, 2.0)
        drift.observe(1, 2.0)
    assert fixed(1) == pytest.approx(2.0, rel=1e-2) and drift(1) == pytest.approx(2.0, rel=1e-5)
    assert fixed(5) == 1.8
    assert drift(5) > 1.7 * 1.8


def test_a_point_learned_in_a_slow_spell_does_not_stay_slow():
    """c(4) observed while the host was twice as slow, then only sizes 1 and 3 on a normal
    host (the controller stuck at k = 2): with the drift c(4) comes back to within 10 % of
    its shape (1.75 against 1.6 on this sequence); without, it stays 1.9x (section 12's
    'rounds stuck at k = 2')."""
    fixed, drift = CostCurve(dict(SHAPE)), drifting()
    for curve in (fixed, drift):
        for _ in range(10):
            curve.observe(1, 2.0)
            curve.observe(4, 3.2)
        for _ in range(30):
            curve.observe(1, 1.0)
            curve.observe(3, 1.4)
        assert curve(1) == pytest.approx(1.0, rel=1e-2)
        assert curve(3) == pytest.approx(1.4, rel=1e-2)
    assert fixed(4) > 1.8 * 1.6
    assert drift(4) < 1.1 * 1.6


def test_drafting_costs_follow_the_drift():
    """A drafting cost is stored at drift 1 and charged at the current drift, as verifying
    is: the host's speed moves both."""
    curve = CostCurve({1: 1.0, 3: 1.2})
    c = Controller(curve, {"d": Acceptance(np.full(8, 0.5))}, max_k=8)
    curve.drift = 2.0
    c.record_draft("d", 2, 0.4)  # 0.2 s a token now, 0.1 s at drift 1
    assert c.draft_cost["d"] == pytest.approx(0.1)
    assert c.expected_rate("d", 2) == pytest.approx(1.75 / (2.0 * 1.2 + 2 * 0.2))
    curve.drift = 1.0
    assert c.expected_rate("d", 2) == pytest.approx(1.75 / (1.2 + 2 * 0.1))
    assert c.expected_rate(None, 0) == pytest.approx(1.0)


RECYCLE_SHAPE = (-1, -1, -1, 0, 0, 1, 1, 2)  # recycling's breadth schedule, 8 nodes


def tree_expectation(parents, q):
    """Expected new tokens of a tree draft, recursively: 1 (the bonus) plus, over the root's
    children by rank r, q(depth, r) times the expectation below that child."""

    def below(node, depth):
        kids = [i for i, p in enumerate(parents) if p == node]
        return sum(q(depth, r) * (1 + below(c, depth + 1)) for r, c in enumerate(kids))

    return 1 + below(-1, 0)


def test_tree_expectation_follows_the_shape():
    """E(k) of a tree-shaped proposer is the first k nodes' shape, not a k-token chain:
    three siblings can yield at most two tokens, whatever the rates."""
    rng = np.random.default_rng(1)
    for _ in range(50):
        a = Acceptance(rng.random(8), parents=RECYCLE_SHAPE)
        a.siblings[:] = rng.random(a.siblings.shape) * (1 - a.alpha[:, None]) / 2

        def q(d, r, a=a):
            return a.alpha[d] if r == 0 else a.siblings[d, r - 1]

        want = [tree_expectation(RECYCLE_SHAPE[:k], q) for k in range(9)]
        np.testing.assert_allclose(a.expected_tokens_all(8), want)
        assert a.expected_tokens(3) <= 2.0
    chain = Acceptance(np.full(8, 0.5))
    assert chain.expected_tokens(3) == pytest.approx(1.875)  # a chain: 1 + .5 + .25 + .125
    with pytest.raises(ValueError, match="shape of 8 nodes"):
        Acceptance(np.full(4, 0.5), parents=RECYCLE_SHAPE)
    with pytest.raises(ValueError, match="parents must come first"):
        Acceptance(np.full(8, 0.5), parents=(-1, 1))


def test_chain_learning_is_unchanged():
    from edgespec.speculative.types import Draft, Verdict

    for k, n in [(3, 3), (4, 1), (2, 0), (8, 8), (1, 1), (5, 5)]:
        old, new = Acceptance(np.linspace(0.2, 0.9, 8)), Acceptance(np.linspace(0.2, 0.9, 8))
        old.update(k, n)
        new.learn(Draft(tuple(range(k))), Verdict(tuple(range(n)), tuple(range(n + 1))))
        np.testing.assert_array_equal(old.alpha, new.alpha)


def three_siblings(taken):
    from edgespec.speculative.types import Draft, Verdict

    path = () if taken is None else (taken,)
    return Draft((5, 6, 7), (-1, -1, -1)), Verdict(path, (*path, 9))


def test_tree_learning_by_rank():
    """The verdict's path says which rank was the target's token at each depth."""
    a = Acceptance.prior(8, 0.5, RECYCLE_SHAPE)
    for _ in range(60):
        a.learn(*three_siblings(1))  # always the second candidate
    assert a.alpha[0] < 0.01 and a.siblings[0, 0] > 0.99 and a.siblings[0, 1] < 0.01
    assert a.expected_tokens(1) < 1.01 and a.expected_tokens(2) > 1.99


def test_controller_does_not_count_siblings_as_a_chain():
    """The first candidate right half the time, the others never: on a flat curve, drafting
    three siblings costs more and yields no more than drafting one (the old chain model
    chose them: E(3) = 1.875 for the price of c(4))."""
    curve = {1: 1.0, 2: 1.05, 3: 1.1, 4: 1.15, 5: 1.3, 9: 2.0}
    tree = Acceptance.prior(8, 0.5, RECYCLE_SHAPE)
    chain_model = Acceptance.prior(8, 0.5)
    for i in range(200):
        for acc in (tree, chain_model):
            d, v = three_siblings(0 if i % 2 else None)
            if acc is chain_model:  # what the session used to learn: depth 1, 0 or 1 accepted
                acc.update(1, v.n_accepted)
            else:
                acc.learn(d, v)
    assert Controller(CostCurve(dict(curve)), {"recycle": chain_model}).choose(8).k == 3
    got = Controller(CostCurve(dict(curve)), {"recycle": tree}).choose(8)
    assert (got.proposer, got.k) == ("recycle", 1)
    assert got.expected_rate == pytest.approx(tree.expected_tokens(1) / 1.05)


def test_acceptance_counts_tokens_put_to_the_test():
    """A chain cut short counts its accepted tokens and the one rejected; a chain accepted
    whole only its tokens. A tree counts its path and one more where the path stopped at a
    node that had children (a candidate was rejected), none where it reached a leaf."""
    from edgespec.speculative.types import Draft, Verdict

    a = Acceptance.prior(8, 0.7)
    a.learn(Draft((1, 2, 3)), Verdict((0,), (1, 9)))  # 1 accepted, the 2nd rejected
    assert (a.hits, a.trials) == (1, 2)
    a.learn(Draft((1, 2)), Verdict((0, 1), (1, 2, 9)))  # whole
    assert (a.hits, a.trials) == (3, 4)
    tree = Draft((1, 2, 3, 4), parents=(-1, -1, 0, 2))  # 0 -> 2 -> 3, and 1 beside 0
    a.learn(tree, Verdict((0, 2, 3), (1, 3, 4, 9)))  # to the leaf
    assert (a.hits, a.trials) == (6, 7)
    a.learn(tree, Verdict((0,), (1, 9)))  # node 0's child 2 rejected
    assert (a.hits, a.trials) == (7, 9)
    a.learn(tree, Verdict((), (9,)))  # both roots rejected
    assert (a.hits, a.trials) == (7, 10)
    a.forget(0.5)
    assert (a.hits, a.trials) == (3.5, 5)


@pytest.mark.parametrize("hits, trials", [(0, 1), (7, 10), (30, 40), (99, 100), (5.5, 6.25)])
@pytest.mark.parametrize("z", [0.5, 1.0, 2.0])
def test_ceiling_is_the_wilson_interval_upper_end(hits, trials, z):
    """The upper end u > p of Wilson's interval solves (p - u)^2 = z^2 u (1 - u) / n:
    checked by that equation, not the closed form the code uses. It shrinks toward p as
    trials grow, and is 1 with nothing verified or with z = 0."""
    a = Acceptance(np.full(4, 0.5), hits=hits, trials=trials)
    u, p, n = a.ceiling(z), hits / trials, trials
    assert p < u <= 1
    assert (p - u) ** 2 == pytest.approx(z * z * u * (1 - u) / n)
    more = Acceptance(np.full(4, 0.5), hits=4 * hits, trials=4 * trials)
    assert p < more.ceiling(z) < u
    assert Acceptance(np.full(4, 0.5)).ceiling(z) == 1.0
    assert a.ceiling(0.0) == 1.0


def test_could_win_tests_the_plausible_acceptance():
    """Verifying 2 tokens costs 1.6 x one, 3 cost 2.1 x (llama.cpp-like): a free drafter
    beats plain decoding by the 5 % margin only above an acceptance of about 0.70 (k = 1:
    (1 + a) / 1.6 > 1.05). At perfect acceptance it could win; after 40 verified tokens at
    0.6 it could not (one sigma reaches 0.67); z = 0 keeps the perfect-acceptance test."""
    curve = CostCurve({1: 1.0, 2: 1.6, 3: 2.1, 9: 6.0})
    c = Controller(curve, {"a": Acceptance(np.full(8, 0.6))}, ceiling_z=1.0)
    assert c.could_win("a", 8)
    c.acceptance["a"].hits, c.acceptance["a"].trials = 24, 40
    assert 0.66 < c.acceptance["a"].ceiling(1.0) < 0.70
    assert not c.could_win("a", 8)
    c.ceiling_z = 0.0
    assert c.could_win("a", 8)
    c.ceiling_z = 1.0
    c.acceptance["a"].forget(0.05)  # 2 verified tokens left: up to 0.85 plausible
    assert c.could_win("a", 8)
    assert c.perfect_rate("a", 8, 0.6) == pytest.approx(1.6 / 1.6)  # k = 1 is its best


def test_probe_length_is_the_best_k_without_plain_decoding():
    """``probe_length`` is the k that ``choose`` gives a proposer when plain decoding is no
    candidate (brute force over ``expected_rate``): short where verifying is steep or the
    proposer weak, longer where verifying is flat and the proposer good."""
    rng = np.random.default_rng(4)
    for _ in range(100):
        curve = CostCurve(
            {1: 1.0, 2: 1 + rng.random(), 5: 2 + 3 * rng.random(), 9: 3 + 6 * rng.random()},
            drift=0.5 + rng.random(),
        )
        c = Controller(
            curve, {"a": Acceptance(rng.random(8))}, switch_penalty=0.1 * rng.random(),
            draft_cost={"a": 0.05 * rng.random()},
        )  # fmt: skip
        limit = int(rng.integers(1, 10))
        rates = [c.expected_rate("a", k) for k in range(1, min(8, limit) + 1)]
        assert c.probe_length("a", limit) == 1 + int(np.argmax(rates))
    steep = CostCurve({n: 1.0 + 0.7 * (n - 1) for n in range(1, 10)})
    flat = CostCurve({n: 1.0 + 0.05 * (n - 1) for n in range(1, 10)})
    weak, good = Acceptance(np.full(8, 0.3)), Acceptance(np.full(8, 0.95))
    assert Controller(steep, {"a": weak}).probe_length("a", 8) == 1
    assert Controller(steep, {"a": good}).probe_length("a", 8) < 8
    assert Controller(flat, {"a": good}).probe_length("a", 8) == 8
    assert Controller(flat, {"a": good}).probe_length("a", 3) == 3
    assert Controller(flat, {"a": good}).probe_length("a", 0) == 1
