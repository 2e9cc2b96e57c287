"""Verifiers: exact under greedy decoding, distribution-preserving under sampling.

Greedy losslessness is checked exactly at 0 %, partial and 100 % acceptance with an oracle
drafter. Sampling correctness follows vLLM's ``test_rejection_sampling_approximates_target_
distribution``: a toy target and a toy drafter (pseudo-random logits per context, small
vocabulary) drive a small speculative loop, and the total-variation distance between the
empirical distribution of the generated tokens and the exact one must shrink as the number of
samples grows. Seeds are fixed, so every number here is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import numpy as np
import pytest

from edgespec.sampling import GenerationParams, draw, target_probs
from edgespec.speculative.base import VERIFIERS, Verifier
from edgespec.speculative.types import Draft, Verdict
from edgespec.speculative.verify import (
    ChainRejectionVerifier,
    GreedyVerifier,
    TreeRejectionVerifier,
)

pytestmark = pytest.mark.unit

GREEDY = GenerationParams()
SAMPLE = GenerationParams(temperature=1.0)
FILTERED = GenerationParams(temperature=1.3, top_k=8, top_p=0.95)
SAMPLE_SIZES = (1_000, 5_000, 25_000)

Proposer = Callable[[tuple[int, ...], GenerationParams, np.random.Generator], Draft]


# --- a toy target and drafter: pseudo-random logits, a function of the context --------------


@cache
def _logits(model: int, v: int, context: tuple[int, ...]) -> np.ndarray:
    """``float64[V]`` logits of toy model ``model`` (1 = target, 2 = drafter) after ``context``."""
    return np.random.default_rng([model, v, len(context), *context]).normal(0.0, 1.5, v)


def _target_rows(v: int, context: tuple[int, ...], draft: Draft) -> np.ndarray:
    """``float[k + 1, V]``: the target's logits after ``context`` and after each draft node."""
    prefix: list[tuple[int, ...]] = []
    for i, parent in enumerate(draft.chain_parents()):
        prefix.append((prefix[parent] if parent >= 0 else ()) + (draft.tokens[i],))
    return np.stack([_logits(1, v, context + pre) for pre in [(), *prefix]])


@cache
def _draft_p(v: int, context: tuple[int, ...], params: GenerationParams) -> np.ndarray:
    """The drafter's distribution ``p`` after ``context`` (same processing as the target)."""
    return target_probs(_logits(2, v, context), params)


def _without_replacement(p: np.ndarray, m: int, rng: np.random.Generator) -> list[int]:
    """``m`` distinct tokens drawn from ``p`` without replacement."""
    p, out = p.copy(), []
    for _ in range(m):
        out.append(draw(p, rng))
        p[out[-1]] = 0.0
    return out


def chain_sampled(k: int, v: int) -> Proposer:
    """A chain of k tokens sampled from the drafter, with their distributions."""

    def propose(ctx: tuple[int, ...], params: GenerationParams, rng: np.random.Generator) -> Draft:
        tokens: list[int] = []
        rows = []
        for _ in range(k):
            rows.append(_draft_p(v, ctx + tuple(tokens), params))
            tokens.append(draw(rows[-1], rng))
        return Draft(tuple(tokens), draft_probs=np.stack(rows))

    return propose


def chain_deterministic(k: int, v: int) -> Proposer:
    """A chain of the drafter's k argmax tokens, without probabilities (like n-gram lookup)."""

    def propose(ctx: tuple[int, ...], params: GenerationParams, rng: np.random.Generator) -> Draft:
        tokens: list[int] = []
        for _ in range(k):
            tokens.append(int(np.argmax(_logits(2, v, ctx + tuple(tokens)))))
        return Draft(tuple(tokens))

    return propose


def multi_draft(m: int, v: int, sampled: bool) -> Proposer:
    """m root candidates: drawn from ``p`` without replacement, or the drafter's fixed top m."""

    def propose(ctx: tuple[int, ...], params: GenerationParams, rng: np.random.Generator) -> Draft:
        p = _draft_p(v, ctx, params)
        if sampled:
            tokens = _without_replacement(p, m, rng)
        else:
            tokens = [int(t) for t in np.argsort(-_logits(2, v, ctx), kind="stable")[:m]]
        return Draft(tuple(tokens), parents=(-1,) * m)

    return propose


def tree_depth2(v: int) -> Proposer:
    """Two root candidates (without replacement), each with one child sampled from ``p``."""

    def propose(ctx: tuple[int, ...], params: GenerationParams, rng: np.random.Generator) -> Draft:
        p0 = _draft_p(v, ctx, params)
        a, b = _without_replacement(p0, 2, rng)
        pa, pb = _draft_p(v, ctx + (a,), params), _draft_p(v, ctx + (b,), params)
        tokens = (a, b, draw(pa, rng), draw(pb, rng))
        # rows 0 and 1 go unused: the root has two children, which are point masses
        return Draft(tokens, parents=(-1, -1, 0, 1), draft_probs=np.stack([p0, p0, pa, pb]))

    return propose


def _generate(
    verifier: Verifier,
    propose: Proposer,
    params: GenerationParams,
    v: int,
    n: int,
    rng: np.random.Generator,
) -> tuple[int, ...]:
    """The first ``n`` tokens of speculative decoding: propose, score, verify, repeat."""
    out: tuple[int, ...] = ()
    while len(out) < n:
        draft = propose(out, params, rng)
        out += verifier.verify(draft, _target_rows(v, out, draft), params, rng).tokens
    return out[:n]


def _tv(counts: np.ndarray, exact: np.ndarray) -> float:
    """Total-variation distance between empirical ``counts`` and the ``exact`` distribution."""
    return 0.5 * float(np.abs(counts / counts.sum() - exact).sum())


def _assert_converges(samples: np.ndarray, exact: np.ndarray, bound: float) -> list[float]:
    """Check that the first N ``samples`` (flat indices into ``exact``) approach ``exact``.

    For each N in ``SAMPLE_SIZES`` the TV distance must stay below 3 times the distance an
    exact sampler shows on average, ``sum(sqrt(2 q (1 - q) / (pi N))) / 2``, so it shrinks like
    ``1 / sqrt(N)``; a biased verifier levels off instead and fails at the largest N. It must
    also be smaller at the largest N than at the smallest, and below ``bound`` there.
    """
    q = exact.ravel()
    tvs = [_tv(np.bincount(samples[:n], minlength=q.size), q) for n in SAMPLE_SIZES]
    noise = [0.5 * float(np.sqrt(2 * q * (1 - q) / (np.pi * n)).sum()) for n in SAMPLE_SIZES]
    report = f"TV {np.round(tvs, 4)} vs sampling noise {np.round(noise, 4)}"
    assert all(tv < 3 * e for tv, e in zip(tvs, noise, strict=True)), report
    assert tvs[-1] < tvs[0] and tvs[-1] < bound, report
    return tvs


# --- greedy: exact -----------------------------------------------------------------------------


GREEDY_CASES: dict[str, tuple[Verifier, GenerationParams]] = {
    "greedy": (GreedyVerifier(), SAMPLE),  # ignores the params, so give it sampling ones
    "chain": (ChainRejectionVerifier(), GREEDY),
    "tree": (TreeRejectionVerifier(), GREEDY),
}
"""Every verifier, with greedy parameters."""


def test_registry_names() -> None:
    for name in ("greedy", "chain", "tree"):
        assert VERIFIERS.get(name).name == name


def test_greedy_by_hand() -> None:
    # V = 4; the target's argmax is 2, then 0, then 3. The draft [2, 1, 3] is right once.
    logits = np.array([[0, 1, 5, 2], [4, 1, 1, 1], [0, 0, 0, 9], [1, 0, 0, 0]], dtype=np.float32)
    for verifier, params in GREEDY_CASES.values():
        verdict = verifier.verify(Draft((2, 1, 3)), logits, params, np.random.default_rng(0))
        assert verdict == Verdict(path=(0,), tokens=(2, 0))
        # ties resolve to the first maximum, as edgespec.sampling.sample does
        tied = np.array([[1.0, 3.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
        assert verifier.verify(Draft((2,)), tied, params, np.random.default_rng(0)).tokens == (1,)
        assert verifier.verify(Draft((1,)), tied, params, np.random.default_rng(0)).tokens == (1, 0)


@pytest.mark.parametrize("j", [0, 1, 3, 5])
@pytest.mark.parametrize("kind", ["greedy", "chain", "tree"])
def test_greedy_chain_matches_greedy_decoding(kind: str, j: int) -> None:
    """An oracle drafter right for j of k = 5 tokens, then wrong: 0 %, partial, 100 %."""
    v, k, ctx = 12, 5, (3, 1)
    reference: tuple[int, ...] = ()  # plain greedy decoding of k + 1 tokens
    for _ in range(k + 1):
        reference += (int(np.argmax(_logits(1, v, ctx + reference))),)
    tokens = list(reference[:k])
    if j < k:
        tokens[j] = (tokens[j] + 1) % v
    draft = Draft(tuple(tokens), draft_probs=np.full((k, v), 1.0 / v) if kind == "chain" else None)
    verifier, params = GREEDY_CASES[kind]
    verdict = verifier.verify(draft, _target_rows(v, ctx, draft), params, np.random.default_rng(0))
    assert verdict.path == tuple(range(j))
    assert verdict.tokens == reference[: j + 1]


@pytest.mark.parametrize("kind", ["greedy", "tree"])
def test_greedy_tree_takes_the_right_branch(kind: str) -> None:
    v, ctx = 12, (5,)
    g: tuple[int, ...] = ()
    for _ in range(3):
        g += (int(np.argmax(_logits(1, v, ctx + g))),)
    w = [(t + 1) % v for t in g]  # wrong tokens
    # root -> {w0, g0, w0 (dup)}; g0 -> {w1, g1}; w0 -> {g1} (right token, wrong parent)
    draft = Draft(
        tokens=(w[0], g[0], w[0], g[1], w[1], g[1]),
        parents=(-1, -1, -1, 0, 1, 1),
    )
    verifier, params = GREEDY_CASES[kind]
    verdict = verifier.verify(draft, _target_rows(v, ctx, draft), params, np.random.default_rng(0))
    assert verdict == Verdict(path=(1, 5), tokens=g)


def _random_case(rng: np.random.Generator, v: int, tree: bool) -> tuple[Draft, np.ndarray]:
    """A random draft (chain or tree) and ``float[k + 1, V]`` target logits with some ties."""
    k = int(rng.integers(0, 6))
    logits = rng.integers(-3, 4, size=(k + 1, v)).astype(np.float64)  # small ints: ties
    parents = [int(rng.integers(-1, i)) for i in range(k)] if tree else list(range(-1, k - 1))
    tokens = []
    for i in range(k):  # often the target's argmax at the parent, sometimes not
        row = logits[parents[i] + 1]
        tokens.append(int(np.argmax(row)) if rng.random() < 0.7 else int(rng.integers(v)))
    probs = rng.dirichlet(np.ones(v), size=k) if rng.random() < 0.5 else None
    return Draft(tuple(tokens), tuple(parents) if tree else None, probs), logits


@pytest.mark.parametrize("tree", [False, True])
def test_rejection_with_greedy_params_equals_greedy(tree: bool) -> None:
    rng = np.random.default_rng(11)
    rejection = TreeRejectionVerifier() if tree else ChainRejectionVerifier()
    for _ in range(300):
        draft, logits = _random_case(rng, 10, tree)
        expect = GreedyVerifier().verify(draft, logits, GREEDY, rng)
        assert rejection.verify(draft, logits, GREEDY, rng) == expect


def test_chain_rejects_trees_and_bad_shapes() -> None:
    rng = np.random.default_rng(0)
    tree = Draft((1, 2), parents=(-1, -1))
    with pytest.raises(ValueError, match="tree"):
        ChainRejectionVerifier().verify(tree, np.zeros((3, 4)), SAMPLE, rng)
    # a chain spelled with explicit parents is still a chain
    as_tree = Draft((1, 2), parents=(-1, 0))
    ChainRejectionVerifier().verify(as_tree, np.zeros((3, 4)), SAMPLE, rng)
    for verifier, params in GREEDY_CASES.values():
        with pytest.raises(ValueError, match="shape"):
            verifier.verify(Draft((1, 2)), np.zeros((2, 4)), params, rng)


# --- sampling: seeded runs repeat, and the output is distributed as the target's ---------------


def _run_many(verifier: Verifier, seed: int, tree: bool) -> tuple[list[Verdict], np.ndarray]:
    cases = [_random_case(np.random.default_rng(i), 10, tree) for i in range(200)]
    rng = np.random.default_rng(seed)
    verdicts = [verifier.verify(d, logits, SAMPLE, rng) for d, logits in cases]
    return verdicts, rng.random(4)


@pytest.mark.parametrize("verifier", [ChainRejectionVerifier(), TreeRejectionVerifier()])
def test_seeded_runs_are_bit_identical(verifier: Verifier) -> None:
    tree = isinstance(verifier, TreeRejectionVerifier)
    a, state_a = _run_many(verifier, 7, tree)
    b, state_b = _run_many(verifier, 7, tree)
    assert a == b and np.array_equal(state_a, state_b)  # same verdicts, same draws consumed
    assert _run_many(verifier, 8, tree)[0] != a


def test_tree_verifier_on_a_chain_is_the_chain_verifier() -> None:
    chain, tree = (
        _run_many(ChainRejectionVerifier(), 3, False),
        _run_many(TreeRejectionVerifier(), 3, False),
    )
    assert chain[0] == tree[0] and np.array_equal(chain[1], tree[1])


FIRST_TOKEN_CASES = {
    "chain-sampled": (ChainRejectionVerifier(), chain_sampled(1, 12), SAMPLE),
    "chain-sampled-filtered": (ChainRejectionVerifier(), chain_sampled(2, 12), FILTERED),
    "tree-3-sampled": (TreeRejectionVerifier(), multi_draft(3, 12, sampled=True), SAMPLE),
    "tree-3-fixed-filtered": (TreeRejectionVerifier(), multi_draft(3, 12, sampled=False), FILTERED),
}


@pytest.mark.parametrize("case", FIRST_TOKEN_CASES)
def test_first_token_is_distributed_as_target(case: str) -> None:
    """The first generated token, accepted or resampled, is distributed as ``q``."""
    verifier, propose, params = FIRST_TOKEN_CASES[case]
    v, rng = 12, np.random.default_rng(2024)
    q = target_probs(_logits(1, v, ()), params)
    assert 0.5 * np.abs(_draft_p(v, (), params) - q).sum() > 0.1  # the drafter differs
    n = SAMPLE_SIZES[-1]
    samples = np.array([_generate(verifier, propose, params, v, 1, rng)[0] for _ in range(n)])
    _assert_converges(samples, q, bound=0.02)


JOINT_CASES = {
    "chain-sampled": (ChainRejectionVerifier(), chain_sampled(2, 8), SAMPLE),
    "chain-deterministic": (ChainRejectionVerifier(), chain_deterministic(2, 8), FILTERED),
    "tree-depth2": (TreeRejectionVerifier(), tree_depth2(8), SAMPLE),
}


@pytest.mark.parametrize("case", JOINT_CASES)
def test_first_two_tokens_are_distributed_as_target(case: str) -> None:
    """Tokens 1 and 2 have the joint ``q1(a) * q2(b | a)``, with ``q2(. | a)`` the target's
    distribution after ``a``, whether ``a`` was accepted from the draft or resampled (and then
    ``b`` comes from the next round)."""
    verifier, propose, params = JOINT_CASES[case]
    v, rng = 8, np.random.default_rng(99)
    q1 = target_probs(_logits(1, v, ()), params)
    q2 = np.stack([target_probs(_logits(1, v, (a,)), params) for a in range(v)])
    joint = q1[:, None] * q2  # float[V, V]
    n = SAMPLE_SIZES[-1]
    pairs = np.array([_generate(verifier, propose, params, v, 2, rng) for _ in range(n)])
    _assert_converges(pairs[:, 0] * v + pairs[:, 1], joint, bound=0.04)
    _assert_converges(pairs[:, 1], joint.sum(axis=0), bound=0.02)  # second token's marginal
