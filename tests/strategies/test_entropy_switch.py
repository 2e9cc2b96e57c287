"""entropy-switch (EAD) on scripted fakes whose entropies are known, and on a real model.

The small fake only writes tokens 1..7 and the large one 9..15, so the output itself shows
which model wrote each token. Tests about the switch rule and catch-up pin ``spec_k=0``;
composition with speculation has its own tests below.
"""

import json
import math
from collections import Counter

import numpy as np
import pytest

from edgespec.cli import main
from edgespec.errors import EdgespecError
from edgespec.runtime import Runtime
from edgespec.runtimes.base import LoadOptions, ModelSource
from edgespec.strategies import composition
from edgespec.strategies.entropy_switch import SwitchConfig, entropy
from edgespec.testing import CharTokenizer, PrefixModel, ScriptedModel

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    """No stored cost curve: speculation sessions start from their probe."""
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path))


V = 16
PROMPT = [0, 1, 2]
SURE, UNSURE = 12.0, 1e-3  # logit spreads: H ~ 1e-4 nats, H ~ ln 16 = 2.77 nats
TAU = 1.0


def h_of(spread):
    """Entropy of a ScriptedModel row, computed directly (independent of the strategy)."""
    a = math.exp(spread)
    p = a / (a + V - 1)
    q = (1 - p) / (V - 1)
    return -p * math.log(p) - (V - 1) * q * math.log(q)


def scripted(spread_at, base):
    """A fake whose token at position i (0 = first new token) is ``base + i % 7``."""

    def script(prefix):
        i = len(prefix) - len(PROMPT)
        return base + i % 7, spread_at(i)

    return ScriptedModel(script, vocab_size=V)


def make_rt(large, small, n_ctx=4096):
    return Runtime(
        tokenizer=CharTokenizer("abcdefghijklmnop"),
        target=large,
        backend="fake",
        source=ModelSource("gguf", __file__, "fake"),  # type: ignore[arg-type]
        options=LoadOptions(n_ctx=n_ctx),
        draft=small,
    )


def roles(tokens):
    return "".join("d" if t < 8 else "t" for t in tokens)


def run(rt, n=20, **cfg):
    return rt.generate(PROMPT, strategy="entropy-switch", max_new_tokens=n, config=cfg)


def test_entropy_of_scripted_rows_is_known():
    m = scripted(lambda i: SURE, 1)
    for spread in (0.0, 2.0, SURE):
        row = np.zeros(V, dtype=np.float32)
        row[3] = spread
        assert entropy(row) == pytest.approx(h_of(spread), abs=1e-6)
    assert h_of(UNSURE) == pytest.approx(math.log(V))
    assert m.forward(PROMPT).shape == (3, V)


def test_switches_where_window_mean_crosses_tau_respecting_min_run():
    # small unsure from token 4 on; large always sure. window 2, min_run 3, by hand:
    # 0-4 small (before 5 the mean of H3, H4 is 1.39 > 1), 5-7 large (min_run), 8-10 small ...
    small = scripted(lambda i: SURE if i < 4 else UNSURE, 1)
    large = scripted(lambda i: SURE, 9)
    res = run(make_rt(large, small), tau=TAU, window=2, min_run=3, spec_k=0)
    expect = "ddddd" + "ttt" + "ddd" + "ttt" + "ddd" + "ttt"
    assert roles(res.token_ids) == expect
    assert res.stats.model_trace == expect
    assert res.stats.switches == 5
    assert res.stats.token_share["draft"] == pytest.approx(11 / 20)
    hs = [h_of(SURE)] * 4 + [h_of(UNSURE)] + [h_of(SURE)] * 3
    assert res.stats.entropy_trace[:8] == pytest.approx(hs, abs=1e-6)


def test_min_run_one_switches_back_as_soon_as_the_mean_falls():
    small = scripted(lambda i: SURE if i < 4 else UNSURE, 1)
    large = scripted(lambda i: SURE, 9)
    res = run(make_rt(large, small), n=13, tau=TAU, window=2, min_run=1, spec_k=0)
    # before 5: mean(H3,H4)=1.39 -> t; before 6: mean(H4,H5)=1.39 -> t; before 7: low -> d;
    # before 8: mean(H6,H7)=1.39 -> t; 9 t; 10 d; ...
    assert roles(res.token_ids) == "ddddd" + "tt" + "d" + "tt" + "d" + "tt"


def simulate(h_small, h_large, tau, window, min_run, n):
    """The EAD rule written out plainly (entropies depend only on the position here)."""
    role = "t" if h_small(0) > tau else "d"
    trace, out, run_len = [], "", 0
    for i in range(n):
        if i and run_len >= min_run:
            mean = sum(trace[-window:]) / len(trace[-window:])
            want = "t" if mean > tau else "d"
            if want != role:
                role, run_len = want, 0
        trace.append((h_small if role == "d" else h_large)(i))
        out += role
        run_len += 1
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("window,min_run", [(1, 1), (3, 2), (4, 5)])
def test_random_schedules_follow_the_rule(seed, window, min_run):
    rng = np.random.default_rng(seed)
    s_small = rng.choice([SURE, 2.0, 1.0, UNSURE], size=40)
    s_large = rng.choice([SURE, 2.0, UNSURE], size=40)
    small = scripted(lambda i: float(s_small[i % 40]), 1)
    large = scripted(lambda i: float(s_large[i % 40]), 9)
    res = run(make_rt(large, small), n=40, tau=TAU, window=window, min_run=min_run, spec_k=0)
    expect = simulate(
        lambda i: h_of(s_small[i]), lambda i: h_of(s_large[i]), TAU, window, min_run, 40
    )
    assert roles(res.token_ids) == expect
    assert res.stats.switches == sum(a != b for a, b in zip(expect, expect[1:], strict=False))


def test_catch_up_feeds_exactly_the_missing_tokens_in_one_forward():
    small = scripted(lambda i: SURE if i < 4 else UNSURE, 1)
    large = scripted(lambda i: SURE, 9)
    run(make_rt(large, small), tau=TAU, window=2, min_run=3, spec_k=0)
    # roles: d0-4 t5-7 d8-10 t11-13 d14-16 t17-19. A model taking over feeds its own last
    # token plus the other's run; the large model's first forward is prompt + 5 tokens.
    assert small.forward_sizes == [3, 1, 1, 1, 1, 4, 1, 1, 4, 1, 1]
    assert large.forward_sizes == [8, 1, 1, 4, 1, 1, 4, 1, 1]
    assert sum(small.forward_sizes) == small.n_past  # nothing was fed twice
    assert sum(large.forward_sizes) == large.n_past


def test_tau_infinite_gives_each_models_greedy_output_exactly():
    small, large = PrefixModel(V, seed=1), PrefixModel(V, seed=2)
    rt = make_rt(large, small)
    ref_small, ref_large = small.greedy(PROMPT, 30), large.greedy(PROMPT, 30)
    assert ref_small != ref_large
    lo = run(rt, n=30, tau=math.inf, spec_k=0)
    assert lo.token_ids == ref_small
    assert lo.stats.token_share["draft"] == 1.0 and lo.stats.switches == 0
    assert large.forward_sizes == []  # the large model never ran
    hi = run(rt, n=30, tau=-math.inf, min_run=1, spec_k=0)
    assert hi.token_ids == ref_large
    assert hi.stats.token_share["target"] == 1.0 and hi.stats.model_trace == "t" * 30
    for spec_k in (2, "auto"):  # composition keeps both limits exact
        assert run(rt, n=30, tau=math.inf, spec_k=spec_k).token_ids == ref_small
        assert run(rt, n=30, tau=-math.inf, spec_k=spec_k).token_ids == ref_large


@pytest.mark.parametrize("k", [1, 3, 6])
def test_large_stretches_can_speculate_losslessly(k):
    small, large = PrefixModel(V, seed=1, scale=1.0), PrefixModel(V, seed=1, scale=1.0)
    rt = make_rt(large, small)
    large2 = PrefixModel(V, seed=2)
    ref = large2.greedy(PROMPT, 30)
    rt2 = make_rt(large2, PrefixModel(V, seed=1))
    res = run(rt2, n=30, tau=-math.inf, spec_k=k)
    assert res.token_ids == ref  # lossless within the large model's stretch
    assert res.stats.k_trace and max(res.stats.k_trace) <= k
    # identical small and large: every draft token is accepted
    same = run(rt, n=30, tau=-math.inf, spec_k=k)
    assert same.token_ids == large.greedy(PROMPT, 30)
    # identical models accept every draft token: one histogram entry per draft, equal to
    # its length (k, or less when the budget leaves less room)
    drafts = Counter(n for n in same.stats.k_trace if n)
    assert same.stats.accept_hist == drafts and max(drafts) == k
    assert same.stats.target_forwards <= 30 // (k + 1) + 2


def test_mixed_run_with_speculation_keeps_caches_consistent():
    # small and large agree (same seed), so whoever writes, the output is the greedy one
    small, large = PrefixModel(V, seed=5, scale=1.0), PrefixModel(V, seed=5, scale=1.0)
    res = run(make_rt(large, small), n=60, tau=2.0, window=2, min_run=2, spec_k=3)
    assert res.token_ids == large.greedy(PROMPT, 60)
    assert res.stats.switches > 0


# --- composition: the large model speculates through the controller -------------------

#: cost curves c_verify(n) in seconds: verifying k tokens costs about one forward, or k
CHEAP = {n: 0.01 + 0.0003 * (n - 1) for n in range(1, 18)}
LINEAR = {n: 0.01 * n for n in range(1, 18)}


def fix_curve(monkeypatch, rt, points, spec_k="auto"):
    """Give the runtime's composition session a known cost curve and stop it learning."""
    session = composition.session(rt, spec_k)
    session.controller.verify.points = dict(points)
    session.controller.switch_penalty = 0.0
    monkeypatch.setattr(session.controller.verify, "observe", lambda n, s: None)
    return session


def caches_hold_committed(model, prompt, out):
    """The model's cache is a prefix of prompt + output (nothing drafted and rejected)."""
    return model.tokens == (list(prompt) + list(out))[: model.n_past]


def test_hand_over_inside_a_speculative_step_is_cut_there(monkeypatch):
    # both models write 1..7 (drafts are accepted); the small one is unsure for 2 tokens.
    # window 1, min_run 1: H0 unsure -> large writes 0, hands back; small writes 1 (unsure)
    # -> large writes 2, hands back; then the small model writes the rest.
    small = scripted(lambda i: UNSURE if i < 2 else SURE, 1)
    large = scripted(lambda i: SURE, 1)
    plain = run(make_rt(large, small), n=20, tau=TAU, window=1, min_run=1, spec_k=0)
    small = scripted(lambda i: UNSURE if i < 2 else SURE, 1)
    large = scripted(lambda i: SURE, 1)
    res = run(make_rt(large, small), n=20, tau=TAU, window=1, min_run=1, spec_k=6)
    assert res.stats.model_trace == plain.stats.model_trace == "tdt" + "d" * 17
    assert res.token_ids == plain.token_ids
    assert res.stats.switches == plain.stats.switches == 3
    # two speculative steps, each verified 6 accepted tokens + a bonus and kept only one
    assert res.stats.accept_hist == {6: 2}
    # the large model's two tokens were drafted by the small one and accepted
    assert res.stats.token_share["draft"] == 1.0 and plain.stats.token_share["draft"] == 0.9
    assert caches_hold_committed(large, PROMPT, res.token_ids)
    assert caches_hold_committed(small, PROMPT, res.token_ids)


@pytest.mark.parametrize("spec_k", [2, 5, "auto"])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("window,min_run", [(1, 1), (3, 2)])
def test_composition_keeps_every_switch_point(monkeypatch, spec_k, seed, window, min_run):
    """Whatever k the controller (or a fixed spec_k) picks, greedy output, roles and the
    entropy trace equal decoding without speculation."""
    rng = np.random.default_rng(seed)
    s_small = rng.choice([SURE, 2.0, 1.0, UNSURE], size=40)
    s_large = rng.choice([SURE, 4.0, 2.0], size=40)

    def pair():  # the same tokens, so drafts are accepted; roles show in model_trace only
        small = scripted(lambda i: float(s_small[i % 40]), 1)
        large = scripted(lambda i: float(s_large[i % 40]), 1)
        return make_rt(large, small)

    cfg = {"tau": TAU, "window": window, "min_run": min_run}
    plain = run(pair(), n=40, spec_k=0, **cfg)
    rt = pair()
    fix_curve(monkeypatch, rt, CHEAP, spec_k)
    res = run(rt, n=40, spec_k=spec_k, **cfg)
    expect = simulate(
        lambda i: h_of(s_small[i]), lambda i: h_of(s_large[i]), TAU, window, min_run, 40
    )
    assert plain.stats.model_trace == expect
    assert res.stats.model_trace == expect
    assert res.token_ids == plain.token_ids
    assert res.stats.switches == plain.stats.switches
    assert res.stats.entropy_trace == pytest.approx(plain.stats.entropy_trace, abs=1e-6)
    assert sum(res.stats.k_trace) > 0  # it did speculate
    assert res.stats.target_forwards <= plain.stats.target_forwards
    assert caches_hold_committed(rt.target, PROMPT, res.token_ids)
    assert caches_hold_committed(rt.draft, PROMPT, res.token_ids)


@pytest.mark.parametrize("small_seed", [2, 9])  # 2: the small model equals the large one
def test_controller_composition_at_tau_minus_inf_is_the_large_models_greedy(
    monkeypatch, small_seed
):
    large, small = PrefixModel(V, seed=2), PrefixModel(V, seed=small_seed)
    rt = make_rt(large, small)
    session = fix_curve(monkeypatch, rt, CHEAP)
    calls = small.forward_calls
    res = run(rt, n=60, tau=-math.inf)  # spec_k defaults to "auto"
    assert res.token_ids == large.greedy(PROMPT, 60)
    assert res.stats.model_trace == "t" * 60
    assert max(res.stats.k_trace) > 1 and max(res.stats.k_trace) <= session.config.max_k
    # one choice per large-model step (its first forward feeds the prompt too)
    assert len(res.stats.k_trace) == res.stats.target_forwards
    assert res.stats.draft_forwards == small.forward_calls - calls > 1
    if small_seed == 2:  # a perfect draft: every drafted token is accepted
        assert res.stats.mean_accepted_per_forward > 4
        assert res.stats.token_share["draft"] > 0.7


def test_controller_keeps_plain_decoding_when_verification_costs_k_forwards(monkeypatch):
    large, small = PrefixModel(V, seed=2), PrefixModel(V, seed=9)  # a useless draft
    rt = make_rt(large, small)
    session = fix_curve(monkeypatch, rt, LINEAR)
    res = run(rt, n=60, tau=-math.inf)
    assert res.token_ids == large.greedy(PROMPT, 60)
    ks = res.stats.k_trace
    probes = sum(1 for k in ks if k)  # only probes draft; one may hit a token by chance
    assert probes <= 60 // session.config.probe_every + 1 and len(ks) >= 60 - 2 * probes
    assert res.stats.target_forwards >= 58  # about one large forward per token, as plain


def test_seeded_sampling_repeats():
    small, large = PrefixModel(V, seed=1, scale=1.0), PrefixModel(V, seed=2, scale=1.0)
    rt = make_rt(large, small)
    a = rt.generate(
        PROMPT,
        strategy="entropy-switch",
        max_new_tokens=30,
        temperature=1.0,
        seed=7,
        config={"tau": 2.0, "spec_k": 2},
    )
    b = rt.generate(
        PROMPT,
        strategy="entropy-switch",
        max_new_tokens=30,
        temperature=1.0,
        seed=7,
        config={"tau": 2.0, "spec_k": 2},
    )
    assert a.token_ids == b.token_ids and a.stats.model_trace == b.stats.model_trace


def test_lossy_everywhere_it_is_reported():
    small, large = PrefixModel(V, seed=1), PrefixModel(V, seed=2)
    res = run(make_rt(large, small), n=10, tau=1.0)
    assert res.stats.lossy is True
    d = json.loads(json.dumps(res.to_dict()))
    assert d["stats"]["lossy"] is True and "switches" in d["stats"]
    assert "(lossy)" in res.stats.summary()
    assert len(d["stats"]["entropy_trace"]) == 10


@pytest.mark.parametrize(
    "cfg,msg",
    [
        ({"window": 0}, "window must be an integer >= 1"),
        ({"tau": float("nan")}, "NaN"),
        ({"tau": "abc"}, "tau must be a number"),
        ({"min_run": 0}, "min_run"),
        ({"taus": 1}, "unknown entropy-switch option"),
        ({"spec_k": -1}, "spec_k must be an integer >= 0 or 'auto'"),
        ({"spec_k": "fast"}, "spec_k must be an integer >= 0 or 'auto'"),
        ({"spec_k": 1.5}, "spec_k must be an integer >= 0 or 'auto'"),
    ],
)
def test_bad_config_is_one_line_error(cfg, msg):
    rt = make_rt(PrefixModel(V), PrefixModel(V, seed=1))
    with pytest.raises(EdgespecError, match=msg) as e:
        run(rt, **cfg)
    assert "\n" not in str(e.value)


def test_missing_draft_and_different_vocab():
    rt = make_rt(PrefixModel(V), None)
    with pytest.raises(EdgespecError, match="needs a small model; pass --draft"):
        run(rt)
    rt = make_rt(PrefixModel(V), PrefixModel(V + 4))
    with pytest.raises(EdgespecError, match="same model family"):
        run(rt)


def test_cli_rejects_bad_flags_before_loading(capsys):
    assert (
        main(["generate", "hi", "--strategy", "entropy-switch", "--tau", "nan", "--draft", "x"])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "NaN" in err and "\n" not in err
    assert (
        main(["generate", "hi", "--strategy", "entropy-switch", "--window", "0", "--draft", "x"])
        == 2
    )
    assert "window" in capsys.readouterr().err
    assert main(["generate", "hi", "--strategy", "entropy-switch"]) == 2
    assert "--draft" in capsys.readouterr().err


@pytest.mark.parametrize("spec_k", [0, 3, "auto"])
def test_config_round_trips_json(spec_k):
    cfg = SwitchConfig(tau=-math.inf, window=3, spec_k=spec_k)
    back = SwitchConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.spec_k == spec_k
    assert SwitchConfig().spec_k == "auto"  # the documented default


# --- real model -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_pair(smollm2_path):
    pytest.importorskip("llama_cpp")
    import edgespec

    rt = edgespec.load(
        smollm2_path, backend="llamacpp", draft=smollm2_path, n_ctx=256, progress=False
    )
    yield rt
    rt.close()


@pytest.mark.slow
@pytest.mark.backend
def test_real_model_tau_limits_match_plain_greedy(smol_pair):
    rt = smol_pair
    prompt = "The capital of France is"
    ref = rt.generate(prompt, max_new_tokens=24, ignore_eos=True).token_ids
    for tau in (math.inf, -math.inf):
        res = rt.generate(
            prompt,
            strategy="entropy-switch",
            max_new_tokens=24,
            ignore_eos=True,
            config={"tau": tau, "min_run": 1, "spec_k": 0},
        )
        assert res.token_ids == ref, tau
        assert res.stats.lossy is True
    # the same model in both roles: switching back and forth must not change a token
    mid = rt.generate(
        prompt,
        strategy="entropy-switch",
        max_new_tokens=24,
        ignore_eos=True,
        config={"tau": 1.5, "window": 2, "min_run": 2, "spec_k": 0},
    )
    assert mid.token_ids == ref
    assert mid.stats.switches > 0


@pytest.mark.slow
@pytest.mark.backend
@pytest.mark.parametrize("tau", [-math.inf, 1.5])
def test_real_model_composition_is_lossless_up_to_near_ties(
    smol_pair, smollm2_near_tie_bound, monkeypatch, tau
):
    """tau = -inf with the controller on (forced to speculate by a cheap cost curve), and a
    switching run: plain greedy decoding, or a first divergence at a llama.cpp near-tie
    (batched forwards differ slightly from one-token ones; docs/speculative.md)."""
    from edgespec import losslessness

    rt = smol_pair
    ids = rt.encode_prompt("The capital of France is")
    ref = losslessness.plain_reference(rt.target, ids, 24)
    try:
        fix_curve(monkeypatch, rt, CHEAP)
        res = rt.generate(
            ids,
            strategy="entropy-switch",
            max_new_tokens=24,
            ignore_eos=True,
            config={"tau": tau, "window": 2, "min_run": 2},
        )
    finally:
        rt._sessions.clear()  # the fixed curve must not leak into other tests
    c = losslessness.check(res.token_ids, ref, smollm2_near_tie_bound)
    assert c.near_tie, f"divergence at {c.index} is not a near-tie: gap {c.gap}"
    assert sum(res.stats.k_trace) > 0 and res.stats.accept_hist
    assert res.stats.draft_forwards > res.stats.new_tokens - res.stats.model_trace.count("t")
    if tau == -math.inf:
        assert res.stats.model_trace == "t" * 24


# --- calibration ----------------------------------------------------------------------


def calib_pair():
    # small unsure from token 4 on, large always sure, disjoint token sets: every token the
    # small model writes is a substitution, so edit similarity == the large model's share
    small = scripted(lambda i: SURE if i < 4 else UNSURE, 1)
    large = scripted(lambda i: SURE, 9)
    return make_rt(large, small)


@pytest.mark.parametrize(
    "floor,tau,share",
    [(0.0, math.inf, 0.0), (0.4, TAU, 0.45), (0.45, TAU, 0.45), (0.5, -math.inf, 1.0)],
)
def test_calibration_picks_the_cheapest_tau_meeting_the_floor(floor, tau, share):
    from edgespec.switch_calibration import calibrate

    cal = calibrate(
        calib_pair(),
        [PROMPT, PROMPT],
        min_quality=floor,
        taus=[math.inf, TAU, -math.inf],
        windows=[2],
        min_run=3,
        max_new_tokens=20,
    )
    got = {p.tau: (p.quality, p.large_share) for p in cal.points}
    # window 2, min_run 3 writes "ddddd ttt ddd ttt ddd ttt": 9 of 20 tokens by the large model
    assert got == {math.inf: (0.0, 0.0), TAU: (pytest.approx(0.45), 0.45), -math.inf: (1.0, 1.0)}
    assert cal.chosen is not None
    assert (cal.chosen.tau, cal.chosen.large_share) == (tau, pytest.approx(share))
    d = json.loads(json.dumps(cal.to_dict()))
    assert d["lossy"] is True and d["met"] is True


def test_calibration_default_taus_and_window_choice(tmp_path):
    from edgespec.switch_calibration import calibrate, plot

    cal = calibrate(
        calib_pair(), [PROMPT], min_quality=0.4, windows=[1, 2], min_run=3, max_new_tokens=20
    )
    taus = {p.tau for p in cal.points}
    assert math.inf in taus and -math.inf in taus and len(taus) >= 3
    assert cal.chosen is not None and cal.chosen.quality >= 0.4
    cheaper = [p for p in cal.points if p.quality >= 0.4 and p.large_share < cal.chosen.large_share]
    assert cheaper == []
    pytest.importorskip("matplotlib")
    assert plot(cal, tmp_path / "c.png") and (tmp_path / "c.png").stat().st_size > 1000


@pytest.mark.parametrize("q", [float("nan"), 1.5, -0.1])
def test_calibration_rejects_bad_floor(q):
    from edgespec.switch_calibration import calibrate

    with pytest.raises(EdgespecError, match="min-quality"):
        calibrate(calib_pair(), [PROMPT], min_quality=q)


def test_calibrate_switch_cli_errors(tmp_path, capsys):
    wl = tmp_path / "w.jsonl"
    wl.write_text('{"prompt": "x"}\n')
    assert main(["calibrate-switch", "--workload", str(wl), "--min-quality", "0.9"]) == 2
    assert "--draft" in capsys.readouterr().err
    assert (
        main(
            [
                "calibrate-switch",
                "--workload",
                str(tmp_path / "no.jsonl"),
                "--draft",
                "x",
                "--min-quality",
                "0.9",
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(["calibrate-switch", "--workload", str(wl), "--draft", "x", "--min-quality", "nan"])
        == 2
    )
    assert "min-quality" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.backend
def test_real_models_with_different_vocabularies_fail_in_one_line(smollm2_path, qwen05b_path):
    pytest.importorskip("llama_cpp")
    import edgespec

    other = qwen05b_path
    with pytest.raises(EdgespecError, match="same model family") as e:
        edgespec.load(smollm2_path, backend="llamacpp", draft=other, n_ctx=64, progress=False)
    assert "\n" not in str(e.value)
