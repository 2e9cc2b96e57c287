"""A speculation session: proposers, verifier choice and controller for one runtime.

It lives as long as the :class:`~edgespec.runtime.Runtime`, so learned state (the
recycling table, cost curve, acceptance estimates) carries over between generations.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.sampling import GenerationParams
from edgespec.speculative import cost_curves
from edgespec.speculative.base import PROPOSERS, Proposer
from edgespec.speculative.config import SpecConfig
from edgespec.speculative.controller import Acceptance, Choice, Controller, CostCurve
from edgespec.speculative.types import Draft, Verdict

if TYPE_CHECKING:
    from edgespec.runtime import Runtime

#: sizes timed by the quick probe when no stored cost curve exists
PROBE_SIZES = (1, 2, 3, 5, 9)
#: trees are used only where a tree forward costs at most this much more than a chain
TREE_OVERHEAD_LIMIT = 1.25
#: the most nodes of the tree timed against a chain (:func:`tree_nodes`)
TREE_NODES = 9
#: most follow-up probes in a row (``SpecConfig.probe_follow``)
FOLLOW_UPS = 8
#: the cost curve's learning rates with ``SpecConfig.cost_drift``: the drift follows the host
#: fast, the shape of each size slowly (docs/benchmarks.md section 12 simulates the choice)
DRIFT_RATE, SHAPE_EMA = 0.3, 0.1


def tree_nodes(max_k: int) -> int:
    """Nodes of the tree whose forward is timed against a chain's for drafts up to
    ``max_k`` (a draft plus its root, at most :data:`TREE_NODES`)."""
    return min(max_k + 1, TREE_NODES)


def make_controller(
    config: SpecConfig,
    proposers: dict[str, Proposer],
    points: dict[int, float],
    *,
    allow_plain: bool,
) -> Controller:
    """The controller of a session: the verify cost curve ``points`` ({n tokens: seconds};
    ``0``: the switch penalty, :func:`cost_curves.measure_verify_curve`), each proposer's
    prior acceptance, and the config's draft lengths."""
    points = dict(points)
    penalty = points.pop(0, 0.0)
    max_k = config.max_k if config.k is None else max(config.k, 1)
    return Controller(
        verify=CostCurve(points, ema=SHAPE_EMA, drift_rate=DRIFT_RATE)
        if config.cost_drift
        else CostCurve(points),
        switch_penalty=penalty,
        acceptance={
            n: Acceptance.prior(max_k, p.prior_acceptance, p.draft_shape(max_k))
            for n, p in proposers.items()
        },
        max_k=config.max_k,
        fixed_k=config.k,
        allow_plain=allow_plain or config.allow_plain,
        ceiling_z=config.probe_z,
    )


@dataclass
class SpecSession:
    """Proposers + controller for one runtime and one :class:`SpecConfig`.

    Attributes:
        config: the options.
        proposers: {name: proposer instance}.
        controller: chooses (proposer, k) each step.
        tree_ok: whether the target backend can verify token trees in one forward.
        curve_source: "profile" (stored by ``edgespec calibrate``) or "probe" (measured now).
        tree_overhead: tree-forward / chain-forward time, measured once per device, model
            and backend and stored (:func:`cost_curves.tree_overhead`; None: not measured).
            Drafted trees are cut to their main chain when trees cost more than
            :data:`TREE_OVERHEAD_LIMIT` times a chain on this device and backend.
        probe_s: seconds the cost-curve probe took at build (0 with a stored curve); the
            runtime adds it to the stats of the generation that built the session.
        last_tried: {proposer: the step (counted over the session) it last drafted in or
            was probed}; a probe goes to the proposer tried least recently.
        follow: the proposer whose probe was just fully accepted (``probe_follow``): the
            next step probes it again unless the controller chooses it itself.
        since_probe: steps since the last probe: plain steps, and with ``probe_always``
            speculative ones too (with a controller that chooses k).
        follow_run: follow-up probes in a row so far.
        intervals: {proposer: its probe interval} (``probe_each``; else one shared
            ``probe_interval``).
        untried: {proposer: counted steps since it last drafted or was probed}
            (``probe_each``).
        probe_loss: {proposer: seconds its probes lose against plain decoding, on average
            (``probe_budget``; the probes that start a round, not follow-ups)}.
        follow_up: whether this step's probe is a follow-up (``probe_follow``).
    """

    config: SpecConfig
    proposers: dict[str, Proposer]
    controller: Controller
    tree_ok: bool
    curve_source: str
    tree_overhead: float | None = None
    probe_s: float = 0.0
    last_tried: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    follow: str | None = None
    follow_run: int = 0
    intervals: dict[str, int] = field(default_factory=dict)
    untried: dict[str, int] = field(default_factory=dict)
    probe_loss: dict[str, float] = field(default_factory=dict)
    follow_up: bool = False

    @classmethod
    def build(cls, runtime: Runtime, config: SpecConfig, *, allow_plain: bool) -> SpecSession:
        assert config.proposers is not None, "the strategy's prepare() names the proposers"
        proposers = {n: PROPOSERS.get(n).create(runtime, config) for n in config.proposers}
        key = runtime.curve_key()
        points = cost_curves.load_verify_curve(key)
        source = "profile"
        probe_s = 0.0
        if points is None:
            sizes = sorted({*PROBE_SIZES, config.max_k + 1, config.k + 1 if config.k else 1})
            t_probe = time.perf_counter()
            points = cost_curves.measure_verify_curve(
                runtime.target,
                sizes,
                reps=3,
                vocab=runtime.tokenizer.vocab_size,
                progress=runtime.options.progress,
                desc="probing verify cost (once; `edgespec calibrate` stores it)",
                tokens=cost_curves.curve_tokens(runtime.target, runtime.tokenizer, 64, sizes[-1]),
            )
            probe_s = time.perf_counter() - t_probe
            source = "probe"
        tree_ok = config.tree and runtime.target.supports_tree
        tree_overhead = None
        if tree_ok:
            tree_overhead = cost_curves.tree_overhead(runtime.target, key, tree_nodes(config.max_k))
            tree_ok = tree_overhead <= TREE_OVERHEAD_LIMIT
        if config.tree and not tree_ok:
            # proposers whose trees have a fixed shape draft chains instead (a recycling
            # tree cut to its main chain kept one node of three)
            chains = replace(config, tree=False)
            for n, p in proposers.items():
                if p.draft_shape(1) is not None:
                    proposers[n] = PROPOSERS.get(n).create(runtime, chains)
        controller = make_controller(config, proposers, points, allow_plain=allow_plain)
        return cls(config, proposers, controller, tree_ok, source, tree_overhead, probe_s)

    @cached_property
    def memory_keep(self) -> float:
        """The fraction of the acceptance counts a step keeps (``probe_memory``: their
        half-life in steps; 0 keeps none); the config is frozen, so computed once."""
        half_life = self.config.probe_memory
        return 0.5 ** (1.0 / half_life) if half_life else 0.0

    def begin(self, prompt_ids: Sequence[int], params: GenerationParams) -> None:
        """A new generation: with ``probe_per_prompt`` the intervals and the steps counted
        toward them start again; without it both carry over. (Counting from 0 again with
        each prompt while the interval carried over meant that once failed probes had
        doubled it past one answer's length, nothing was ever probed again: replayed,
        ``auto`` stayed plain on every later prompt, docs/benchmarks.md section 16.)"""
        self.probing = False
        self.follow, self.follow_run = None, 0
        if self.config.probe_per_prompt or not hasattr(self, "probe_interval"):
            self.probe_interval = self.config.probe_every
            self.intervals = dict.fromkeys(self.proposers, self.config.probe_every)
            self.since_probe = 0
            self.untried = dict.fromkeys(self.proposers, 0)
            for name in self.proposers:
                self._keep_budget(name)
        for p in self.proposers.values():
            p.begin(prompt_ids, params)

    def choose(self, room: int) -> Choice:
        """The controller's choice, or a short probe every ``probe_interval`` steps.

        Probes refresh the acceptance estimates, and cost a little when they fail; the
        interval doubles after each fully rejected probe (up to 32x ``probe_every``) and
        resets when a probe is accepted, so a prompt where speculation does not pay stops
        paying to re-learn it (with ``probe_per_prompt``, each generation starts again at
        ``probe_every``). A probe goes to the proposer tried least recently (ties:
        the best expected rate at k = 1). Probing the best at k = 1 alone never re-tried a
        draft model whose first, catch-up-laden calls made it look slow: a cheap lookup
        with poor acceptance always ranked above it (docs/benchmarks.md section 10).
        With ``probe_always`` (the default) the steps that speculate count too, so the
        proposers not in use are re-tried while another drafts: a mediocre proposer chosen
        every step otherwise kept a better one from ever being tried again. With
        ``probe_follow`` a fully accepted probe is followed by another at the next step
        (up to :data:`FOLLOW_UPS` in a row), until the controller chooses that proposer
        itself or a probe loses a token. With ``probe_each`` each proposer has its own
        interval, doubled and restarted by its own probes only (:meth:`_probe_due`).
        """
        self.steps += 1
        self.probing = self.follow_up = False
        keep = self.memory_keep
        for acceptance in self.controller.acceptance.values():
            acceptance.forget(keep)
        if room <= 0 or not self.controller.acceptance:
            return Choice(None, 0, 0.0)
        choice = self.controller.choose(room)
        follow = self.follow
        if (
            follow in self.controller.acceptance
            and follow != choice.proposer
            and self._hopeful(follow, room)
        ):
            self.follow = None
            self.follow_run += 1
            return self._probe(follow, room, follow_up=True)
        self.follow, self.follow_run = None, 0
        counts = choice.k == 0 or (self.config.probe_always and self.controller.fixed_k is None)
        if not counts:
            self.since_probe = 0
            return choice
        self.since_probe += 1
        if self.config.probe_each:
            return self._probe_due(choice, room)
        every = self.probe_interval
        if not (every and self.since_probe >= every):
            return choice
        hopeful = [n for n in self.controller.acceptance if self._hopeful(n, room)]
        if hopeful:
            rate = self.controller.expected_rate
            best = min(hopeful, key=lambda n: (self.last_tried.get(n, -1), -rate(n, 1)))
            if best != choice.proposer:
                self.since_probe = 0
                return self._probe(best, room)
        return choice

    def _probe_due(self, choice: Choice, room: int) -> Choice:
        """``probe_each``: a probe of the proposer tried least recently among those that
        have gone their own interval untried (not the one chosen), else ``choice``."""
        for name in self.untried:
            self.untried[name] += 1
        due = [
            n
            for n in self.controller.acceptance
            if n != choice.proposer
            and self.intervals[n]
            and self.untried[n] >= self.intervals[n]
            and self._hopeful(n, room)
        ]
        if not due:
            return choice
        rate = self.controller.expected_rate
        return self._probe(min(due, key=lambda n: (self.last_tried.get(n, -1), -rate(n, 1))), room)

    def _hopeful(self, name: str, room: int) -> bool:
        """Whether a probe of ``name`` could find anything (``probe_hopeless``): could it
        beat plain decoding at perfect acceptance with a draft of at most ``room``?"""
        return self.config.probe_hopeless or self.controller.could_win(name, room)

    def _probe(self, name: str, room: int, *, follow_up: bool = False) -> Choice:
        self.probing = True
        self.follow_up = follow_up
        self.last_tried[name] = self.steps  # also when it has nothing to draft
        self.untried[name] = 0
        k = self.config.probe_k or self.controller.probe_length(name, room)
        return Choice(name, min(k, room), 0.0)

    def _next_interval(self, interval: int, accepted: bool) -> int:
        """A probe interval after a probe: back to ``probe_every`` when it was accepted,
        else doubled, up to 32x ``probe_every``."""
        base = self.config.probe_every
        return base if accepted else min(interval * 2, 32 * base)

    def charge_probe(self, draft: Draft, verdict: Verdict, seconds: float) -> None:
        """``probe_budget``: learn what a probe of ``draft.source`` that took ``seconds``
        (drafting, verifying and committing) lost against plain decoding of the same
        ``1 + n_accepted`` tokens, and space that proposer's probes so that they cost about
        ``probe_budget`` of plain decoding's time. A draft model's catch-up
        (``draft.catchup_s``) is not counted: it is paid once per switch to speculation, and
        counted it spaced out the draft's probes where the draft pays (tvm: `auto` 8 % slower
        on code in replays, docs/benchmarks.md section 33); a draft that cannot pay at all is
        not probed (``probe_hopeless``). Follow-ups are not learned from: they come only after
        a fully accepted probe, with the draft model's cache in step."""
        if not (self.probing and draft.k) or self.follow_up or not self.config.probe_budget:
            return
        name = draft.source
        loss = seconds - draft.catchup_s - (1 + verdict.n_accepted) * self.controller.verify(1)
        old = self.probe_loss.get(name)
        self.probe_loss[name] = loss if old is None else 0.5 * (old + loss)
        self._keep_budget(name)

    def _keep_budget(self, name: str) -> None:
        """Raise ``name``'s probe interval (and, without ``probe_each``, the shared one) to
        what ``probe_budget`` allows for its probes' average loss, at most 32x
        ``probe_every``."""
        loss, budget = self.probe_loss.get(name, 0.0), self.config.probe_budget
        base = self.config.probe_every
        if loss <= 0 or not budget or not base:
            return
        steps = min(math.ceil(loss / (budget * self.controller.verify(1))), 32 * base)
        if self.config.probe_each:
            self.intervals[name] = max(self.intervals.get(name, base), steps)
        else:
            self.probe_interval = max(self.probe_interval, steps)

    def disable(self, name: str) -> None:
        """Stop using a proposer for the rest of the session (it failed)."""
        self.controller.acceptance.pop(name, None)

    def after_step(
        self, draft: Draft, verdict: Verdict, fed: Sequence[int], logits: np.ndarray
    ) -> None:
        """Update acceptance estimates and let proposers learn."""
        depth = (max(draft.depths()) if draft.is_tree else draft.k) if draft.k else 0
        if self.probing and draft.k:
            accepted = verdict.n_accepted > 0
            self.probe_interval = self._next_interval(self.probe_interval, accepted)
            own = self.intervals.get(draft.source, self.config.probe_every)
            self.intervals[draft.source] = self._next_interval(own, accepted)
            if (
                self.config.probe_follow
                and verdict.n_accepted == depth
                and self.follow_run < FOLLOW_UPS
            ):
                self.follow = draft.source
        if draft.k:
            self.last_tried[draft.source] = self.steps
            self.untried[draft.source] = 0
        if draft.k and draft.source in self.controller.acceptance:
            self.controller.acceptance[draft.source].learn(draft, verdict)
        for p in self.proposers.values():
            p.observe(fed, logits)
            if draft.k and draft.source == p.name:
                p.feedback(draft, verdict)

    def close(self) -> None:
        for p in self.proposers.values():
            p.close()


def check_proposers(names: Sequence[str], has_draft: bool) -> None:
    """Fail early, in one line, on unknown proposers or a missing ``--draft``."""
    for n in names:
        cls = PROPOSERS.get(n)
        if cls.needs_draft_model and not has_draft:
            raise EdgespecError(f"proposer '{n}' needs a draft model; pass --draft MODEL")
