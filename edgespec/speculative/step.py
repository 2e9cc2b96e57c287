"""One speculative step: propose, score, verify, commit, learn.

The loop of every lossless speculation in edgespec (``speculative``, ``auto``, and the large
model's stretches of the two-model strategies) is::

    while True:
        step = speculative_step(session, scorer, seq, room, params, rng, hook)
        seq.extend(step.tokens)

and :func:`speculative_step` reads like gpt-fast's ``speculative_decode``: the controller
picks (proposer, k); the proposer drafts; the :class:`Scorer` runs the target once over the
tokens it has not seen plus the draft (a chain, or a tree); the verifier keeps a prefix or a
path and adds the bonus token (Leviathan et al. 2023, Algorithm 1, in
:mod:`edgespec.speculative.verify`); the scorer commits that verdict to the target's cache;
the session learns (acceptance, proposer feedback, and the cost curve from the whole step).
Statistics are collected around the step by a :class:`StepRecorder`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgespec.model import Model
from edgespec.sampling import GenerationParams
from edgespec.speculative.base import VERIFIERS
from edgespec.speculative.controller import Choice
from edgespec.speculative.proposers.draft_model import DraftFailure
from edgespec.speculative.types import EMPTY_DRAFT, Draft, Verdict

if TYPE_CHECKING:
    from edgespec.speculative.session import SpecSession
    from edgespec.stats import StatsRecorder

#: (greedy?, tree?) -> verifier name
VERIFIER_FOR = {
    (True, False): "greedy",
    (True, True): "greedy",
    (False, False): "chain",
    (False, True): "tree",
}


@dataclass(frozen=True)
class StepResult:
    """What one step produced.

    Attributes:
        draft: what was verified (a tree cut to its main chain when the backend cannot
            verify trees); empty for a plain step.
        verdict: the accepted path and the bonus token.
        rows: ``float[k + 1, V]`` target logits: row 0 after the last committed token, row
            i + 1 after draft node i (given its ancestors).
    """

    draft: Draft
    verdict: Verdict
    rows: np.ndarray

    @property
    def tokens(self) -> tuple[int, ...]:
        """The new tokens: accepted draft tokens, then the bonus token."""
        return self.verdict.tokens


class Scorer:
    """The target's side of a step: one forward over what it has not seen plus the draft.

    Invariant: the model's cache holds ``seq[:seen]`` of the committed sequence ``seq``.
    :meth:`score` feeds ``seq[seen:]`` (the pending token; more when another model wrote the
    tokens before, or for the prompt) followed by the draft in ONE forward, as a chain or,
    when the draft is a tree, as a tree whose trunk is the missing tokens. :meth:`commit`
    keeps the verdict's path, so that afterwards ``model.n_past == seen == len(seq) +
    n_accepted`` on every backend: the bonus token is fed by the next forward.

    Attributes:
        model: the target (or the large model of a two-model strategy).
        seen: how many tokens of the committed sequence the cache holds.
        logits: ``float[V]``, the target's logits after ``seq[:seen]`` when known, else None.
        fed: tokens fed by the last step's forward (the cost curve's switch-penalty rule).
    """

    def __init__(self, model: Model) -> None:
        self.model = model
        self.seen = 0
        self.logits: np.ndarray | None = None
        self.fed = 1
        self._open: tuple[int, int, bool, int, np.ndarray] | None = None

    def score(self, seq: Sequence[int], draft: Draft) -> np.ndarray:
        """``float[k + 1, V]``: the rows that score ``draft`` after ``seq`` (``int[n]``, n >
        ``seen``), from one forward; the cache then also holds the draft until
        :meth:`commit`."""
        missing = [int(t) for t in seq[self.seen :]]
        if not missing:
            raise ValueError("nothing to score: the model has already seen all of seq")
        m, k = len(missing), draft.k
        if draft.is_tree:
            parents = [*range(-1, m - 1), *(p + m for p in draft.chain_parents())]
            logits = self.model.forward_tree([*missing, *draft.tokens], parents)
        else:
            logits = self.model.forward([*missing, *draft.tokens], all_logits=k > 0)
        rows = logits[len(logits) - k - 1 :]
        self._open = (self.seen, m, draft.is_tree, len(seq), rows)
        return rows

    def commit(self, verdict: Verdict) -> None:
        """Keep the missing tokens and the accepted path of the last :meth:`score`."""
        self._keep(verdict.path)

    def catch_up(self, seq: Sequence[int]) -> np.ndarray:
        """The logits ``float[V]`` after ``seq``: one forward of the tokens not yet seen
        (none when all are seen and the logits are known)."""
        if self.seen == len(seq) and self.logits is not None:
            return self.logits
        self.score(seq, EMPTY_DRAFT)
        self._keep(())
        assert self.logits is not None
        return self.logits

    def keep(self, length: int) -> None:
        """Drop cached positions past ``length`` (a hand-over cut a step short)."""
        self.model.truncate(length)
        self.seen, self.logits = length, None

    def _keep(self, path: Sequence[int]) -> None:
        assert self._open is not None, "commit() needs a score() first"
        base, m, tree, n, rows = self._open
        self._open = None
        if tree:
            self.model.commit_tree_path(base, [*range(m), *(i + m for i in path)])
        else:
            self.model.truncate(base + m + len(path))
        self.seen, self.logits = n + len(path), rows[path[-1] + 1 if path else 0]
        if self.model.n_past != self.seen:
            raise RuntimeError(
                f"backend bug: after the commit the cache holds {self.model.n_past} tokens, "
                f"expected {self.seen}"
            )


class StepRecorder:
    """The hook that collects a generation's statistics around its steps.

    Args:
        rec: the generation's recorder.
        plain_span: the span name of a forward without a draft ("verify"; the two-model
            strategies call their large model's plain forwards "large").
    """

    def __init__(self, rec: StatsRecorder, plain_span: str = "verify") -> None:
        self.rec, self.plain_span = rec, plain_span

    def phase(self, name: str) -> AbstractContextManager[None]:
        return self.rec.phase(name)

    def drafted(self, draft: Draft, start: float, seconds: float) -> None:
        self.rec.draft_s += seconds
        self.rec.draft_forwards += draft.forwards
        self.rec.span("draft", start, seconds)

    def scored(self, draft: Draft, start: float, seconds: float) -> None:
        self.rec.verify_s += seconds
        self.rec.target_forwards += 1
        self.rec.span("verify" if draft.k else self.plain_span, start, seconds)

    def note(self, text: str) -> None:
        self.rec.notes.append(text)

    def stepped(self, step: StepResult) -> None:
        self.rec.k_trace.append(step.draft.k)
        self.rec.proposer_trace.append(step.draft.source if step.draft.k else "")
        self.rec.accepted_trace.append(step.verdict.n_accepted if step.draft.k else 0)


def speculative_step(
    session: SpecSession,
    scorer: Scorer,
    seq: Sequence[int],
    room: int,
    params: GenerationParams,
    rng: np.random.Generator,
    hook: StepRecorder,
) -> StepResult:
    """One step after the committed sequence ``seq`` (``int[n]``, not changed).

    Args:
        session: proposers, controller and learned state.
        scorer: the target; its cache holds ``seq[:scorer.seen]`` (``seen < n``).
        room: the most draft tokens this step may use (>= 0; 0 = a plain step).
        params: sampling parameters; rng: the generation's random generator.
        hook: collects the statistics.
    Returns:
        the draft, the verdict (``1 + n_accepted`` new tokens) and the target's rows.
    """
    t_step = time.perf_counter()
    choice = session.choose(room)
    draft, draft_s = _propose(session, choice, seq, rng, hook)
    missing = len(seq) - scorer.seen
    t = time.perf_counter()
    rows = scorer.score(seq, draft)
    hook.scored(draft, t, time.perf_counter() - t)
    with hook.phase("sample"):
        verifier = VERIFIERS.get(VERIFIER_FOR[(params.greedy, draft.is_tree)])()
        verdict = verifier.verify(draft, rows, params, rng)
    with hook.phase("rollback"):
        scorer.commit(verdict)
    session.after_step(draft, verdict, [seq[-1], *draft.tokens], rows)
    _learn_cost(session, scorer, missing, draft, time.perf_counter() - t_step - draft_s)
    session.charge_probe(draft, verdict, time.perf_counter() - t_step)
    step = StepResult(draft, verdict, rows)
    hook.stepped(step)
    return step


def _propose(
    session: SpecSession,
    choice: Choice,
    seq: Sequence[int],
    rng: np.random.Generator,
    hook: StepRecorder,
) -> tuple[Draft, float]:
    """The chosen proposer's draft (then each fallback's, while the draft is empty) and the
    seconds spent drafting; a crashing draft model is disabled and the step goes plain."""
    if choice.proposer is None or choice.k == 0:
        return EMPTY_DRAFT, 0.0
    draft, total = EMPTY_DRAFT, 0.0
    for name in _candidates(choice):
        t = time.perf_counter()
        try:
            draft = session.proposers[name].propose(seq, choice.k, rng)
        except DraftFailure as exc:
            hook.note(f"{exc}; fell back to plain decoding")
            session.disable(name)
            draft = EMPTY_DRAFT
        dt = time.perf_counter() - t
        total += dt
        hook.drafted(draft, t, dt)
        _learn_draft_cost(session, name, draft, dt)
        if draft.k:
            break
    if draft.is_tree and not session.tree_ok:
        draft = main_chain(draft)
    return draft, total


def _learn_draft_cost(session: SpecSession, name: str, draft: Draft, seconds: float) -> None:
    """Teach the controller what proposer ``name`` costs per drafted token from one call of
    ``seconds``. A catch-up (``draft.catchup_s``: the draft model fed the prompt, or the
    tokens of plain steps) is not charged: it yielded the first token, so the other
    ``k - 1`` tokens' share of the rest is learned, or nothing when there is none. Charging
    it made the 0.5B draft look 73 ms a token instead of about 30 after each prompt, so
    ``auto`` stopped choosing it (docs/benchmarks.md section 10)."""
    if not draft.catchup_s:
        session.controller.record_draft(name, max(draft.k, 1), seconds)
    elif draft.k > 1:
        session.controller.record_draft(name, draft.k - 1, max(seconds - draft.catchup_s, 0.0))


def _candidates(choice: Choice) -> Iterator[str]:
    assert choice.proposer is not None
    yield choice.proposer
    yield from choice.fallbacks


def _learn_cost(
    session: SpecSession, scorer: Scorer, missing: int, draft: Draft, seconds: float
) -> None:
    """Teach the cost curve ``c_verify(n)`` from whole steps (forward, verify, commit and
    bookkeeping; drafting is charged per proposer) shaped like speculation's: one pending
    token plus a chain draft (catch-up forwards and trees are not). A one-token step right
    after a forward of another size carries the switch penalty, which is charged separately,
    so it is not learned either."""
    fed = missing + draft.k
    if missing == 1 and not draft.is_tree and (fed > 1 or scorer.fed == 1):
        session.controller.verify.observe(fed, seconds)
    scorer.fed = fed


def main_chain(draft: Draft) -> Draft:
    """The first-child path of a tree, for backends that cannot verify trees."""
    keep, node = [], -1
    while kids := draft.children(node):
        node = kids[0]
        keep.append(node)
    probs = None if draft.draft_probs is None else draft.draft_probs[keep]
    return Draft(tuple(draft.tokens[i] for i in keep), None, probs, draft.source, draft.forwards)
