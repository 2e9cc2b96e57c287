"""Choose the proposer and draft length k that maximise expected tokens per second.

For proposer P and draft length k, one step costs ``c_verify(k + 1) + c_draft_P(k)`` seconds
and yields ``E_P(k) = 1 + sum_{j=1..k} prod_{i<=j} alpha_P,i`` tokens, where alpha_P,i is the
live estimate of P's acceptance at draft position i given the earlier ones were accepted.
Plain decoding (k = 0) yields 1 token for ``c_verify(1)`` and is always a candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from edgespec.speculative.types import Draft, Verdict


@dataclass
class CostCurve:
    """``c_verify(n)``: seconds for one target forward of n tokens (n = k + 1).

    The curve is a shape times a drift: ``c_verify(n) = drift * shape(n)``. The shape starts
    from measured points (a cost curve) and keeps learning per size from live forwards with
    an exponential moving average; between points it interpolates linearly, and beyond the
    last point it extrapolates with the last slope. The drift is one factor that every live
    forward updates, whatever its size: a host that slows down (other processes, a phone's
    thermal throttling) slows every size alike. Without it only the sizes the controller
    keeps choosing followed the host, and a point learned in a slow spell and never chosen
    again stayed slow (docs/benchmarks.md section 12: c(6) above c(7), c(8) above c(9)).

    Attributes:
        points: {n tokens: seconds at drift 1} (the shape).
        ema: weight of a new observation in its own size's point.
        drift_rate: weight of a new observation in the drift (geometric mean of the
            observed / expected ratios); 0: no drift, each size learns only from its own
            forwards.
        drift: the current factor (1 until forwards are observed).
    """

    points: dict[int, float] = field(default_factory=dict)
    ema: float = 0.2
    drift_rate: float = 0.0
    drift: float = 1.0
    _table: np.ndarray | None = field(default=None, repr=False)
    _table_of: dict[int, float] = field(default_factory=dict, repr=False)
    _arrays_of: dict[int, float] | None = field(default=None, repr=False)
    _xs: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    _ys: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def observe(self, n: int, seconds: float) -> None:
        """Learn from one live forward of ``n`` tokens that took ``seconds``."""
        if self.drift_rate and seconds > 0 and any(x >= 1 for x in self.points):
            expected = self(n)
            if expected > 0:
                self.drift *= (seconds / expected) ** self.drift_rate
        shape = seconds / self.drift
        old = self.points.get(n)
        self.points[n] = shape if old is None else (1 - self.ema) * old + self.ema * shape

    def __call__(self, n: int) -> float:
        shape = self.points.get(n)
        if shape is not None and n >= 1:  # a measured size (every plain step asks c(1))
            return self.drift * shape  # what the interpolation gives there, exactly
        return float(self.at(np.array([n], dtype=np.float64))[0])

    def at(self, ns: np.ndarray) -> np.ndarray:
        """``c_verify`` at every size in ``ns`` (``float64[m]``, each >= 1) in one pass."""
        return self.drift * self._shape(ns)

    def _shape(self, ns: np.ndarray) -> np.ndarray:
        if self._arrays_of != self.points:  # cheaper than rebuilding: most calls reuse them
            self._arrays_of = dict(self.points)
            order = sorted(x for x in self.points if x >= 1)
            self._xs = np.array(order, dtype=np.float64)
            self._ys = np.array([self.points[x] for x in order], dtype=np.float64)
        xs, ys = self._xs, self._ys
        if not len(xs):
            return 1.0 * ns  # no idea yet: assume linear, which discourages speculation
        if len(xs) == 1:
            return np.where(ns > xs[0], ys[0] * ns / xs[0], ys[0])
        slope = max((ys[-1] - ys[-2]) / (xs[-1] - xs[-2]), 0.0)
        return np.where(ns <= xs[-1], np.interp(ns, xs, ys), ys[-1] + slope * (ns - xs[-1]))

    def table(self, n_max: int) -> np.ndarray:
        """``float64[n_max + 1]``: ``c_verify(n)`` for n = 0..n_max (entry 0 unused); the
        shape is cached while ``points`` is unchanged (every plain step changes them: one
        vectorised pass)."""
        if self._table is None or len(self._table) <= n_max or not self._first_moved_only():
            self._table_of = dict(self.points)
            ns = np.arange(1, n_max + 1, dtype=np.float64)
            self._table = np.concatenate([[0.0], self._shape(ns)])
        return self.drift * self._table[: n_max + 1]

    def _first_moved_only(self) -> bool:
        """Whether the cached table is still right, once its entry 1 follows ``points[1]``:
        True when the points are those it was built from, or when only the point at n = 1
        moved (a plain step's :meth:`observe`) and no other entry depends on it (n = 2 is
        a point, and so is another size above it, so neither the interpolation nor the
        slope beyond the last point uses n = 1). Updates the entry then: the interpolation
        gives ``points[1]`` there, exactly."""
        old, new = self._table_of, self.points
        if old == new:
            return True
        if old.keys() != new.keys() or 1 not in new or 2 not in new:
            return False
        if sum(1 for x in new if x >= 2) < 2 or any(new[x] != old[x] for x in new if x != 1):
            return False
        assert self._table is not None
        self._table[1] = old[1] = new[1]
        return True


@dataclass
class Acceptance:
    """Acceptance rates of one proposer (EMA with a prior), per draft position.

    A chain's position i is its depth: ``alpha[i]`` = P(the token at depth i + 1 is accepted
    | the ones before it were). A proposer whose drafts are trees of a fixed shape (token
    recycling's breadth schedule) declares that shape (``parents``), and candidates of the
    same parent are told apart by rank: ``siblings[i, r - 1]`` is P(the parent's (r + 1)-th
    candidate at depth i + 1 is the accepted one | its parent was accepted). The expected
    accepted length of a draft of the first j nodes of the shape is then the sum over those
    nodes of the product of these rates along the node's path (siblings exclude each other,
    so each node adds the probability that the verdict's path goes through it). Modelling a
    tree of k nodes as a chain of k counted three sibling leaves, which can yield at most one
    token, as a three-token chain (docs/benchmarks.md section 18).

    Attributes:
        alpha: ``float64[max_k]``; the first candidate's rate per depth (a chain's rates).
        rate: EMA weight of one observation.
        parents: None (chains, or trees whose shape is not fixed: learned per depth like a
            chain), or the parents of the proposer's largest draft, ``int[max_k]`` in the
            order it fills them: a draft of j nodes is the first j (-1 = the root).
        siblings: ``float64[max_k, R]``: the rates of the 2nd..(R + 1)-th candidates per
            depth (R = the shape's widest node minus one); empty for chains.
        hits, trials: the drafted tokens accepted and the tokens put to the test (the
            accepted ones and the one rejected, where a draft was cut short), over the
            verified drafts so far, both scaled down by :meth:`forget` at each
            step: the counts behind :meth:`ceiling`. Unlike ``alpha`` (an EMA that
            moves 15 % toward each observation) they say how much is known.
    """

    alpha: np.ndarray
    rate: float = 0.15
    parents: tuple[int, ...] | None = None
    siblings: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    hits: float = 0.0
    trials: float = 0.0
    _paths: np.ndarray | None = field(default=None, repr=False)
    _expected: tuple[tuple[int, bytes, bytes], np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.parents is None:
            self.siblings = np.zeros((len(self.alpha), 0))
            return
        if len(self.parents) > len(self.alpha):
            raise ValueError(
                f"a shape of {len(self.parents)} nodes needs rates for as many depths, "
                f"got {len(self.alpha)}"
            )
        # a Draft of the shape checks the parents and gives each node's depth
        depth = [d - 1 for d in Draft(tuple(range(len(self.parents))), self.parents).depths()]
        rank: list[int] = []
        kids: dict[int, int] = {}
        for p in self.parents:
            rank.append(kids.get(p, 0))
            kids[p] = rank[-1] + 1
        width = max(rank, default=0) + 1
        n = len(self.alpha)
        if self.siblings.shape != (n, width - 1):
            self.siblings = np.zeros((n, width - 1))
        # each node's path as indices into [alpha | siblings] flattened, padded with the
        # index of an appended 1.0
        one = n * width
        paths = np.full((len(self.parents), max(depth, default=0) + 1), one, dtype=np.int64)
        for i in range(len(self.parents)):
            node = i
            while node >= 0:
                paths[i, depth[node]] = depth[node] * width + rank[node]
                node = self.parents[node]
        self._paths = paths

    @classmethod
    def prior(cls, max_k: int, value: float, parents: tuple[int, ...] | None = None) -> Acceptance:
        """``value`` for the first candidate at every depth; with a tree shape the r-th
        further candidate starts at ``value * (1 - value) ** r`` (a geometric guess that the
        estimates replace within a few steps)."""
        a = cls(np.full(max_k, value, dtype=np.float64), parents=parents)
        if a.siblings.size:
            ranks = np.arange(1, a.siblings.shape[1] + 1)
            a.siblings[:] = value * (1.0 - value) ** ranks
        return a

    def update(self, k: int, n_accepted: int) -> None:
        """A chain draft of length ``k`` had its first ``n_accepted`` tokens accepted."""
        for i in range(min(n_accepted, len(self.alpha))):
            self.alpha[i] += self.rate * (1.0 - self.alpha[i])
        if n_accepted < k and n_accepted < len(self.alpha):
            self.alpha[n_accepted] += self.rate * (0.0 - self.alpha[n_accepted])
        else:
            self._follow(k)

    def _follow(self, depth: int) -> None:
        """Full acceptance to ``depth`` says nothing about deeper positions, which a
        controller that settled on that depth would never observe: let them follow the
        last observed one."""
        if 0 < depth < len(self.alpha):
            self.alpha[depth:] += self.rate * (self.alpha[depth - 1] - self.alpha[depth:])
            self.siblings[depth:] += self.rate * (self.siblings[depth - 1] - self.siblings[depth:])

    def learn(self, draft: Draft, verdict: Verdict) -> None:
        """Learn from one verified draft (a chain, or a tree)."""
        n = verdict.n_accepted
        if draft.is_tree:
            cut = bool(draft.children(verdict.path[-1] if verdict.path else -1))
        else:
            cut = n < draft.k
        self.hits += n
        self.trials += n + cut
        if not draft.is_tree:
            self.update(draft.k, n)
        elif self.parents is None:  # a tree of no fixed shape: per depth, like a chain
            self.update(max(draft.depths()), n)
        else:
            self._learn_tree(draft, verdict.path)

    def _learn_tree(self, draft: Draft, path: tuple[int, ...]) -> None:
        """Each depth the verdict reached: the accepted parent's candidates, by rank, were
        accepted (1) or not (0); a path that ends at a leaf says nothing deeper."""
        n, width = len(self.alpha), self.siblings.shape[1] + 1
        parent = -1
        for depth in range(len(path) + 1):
            kids = draft.children(parent)
            if not kids:  # accepted to a leaf
                self._follow(depth)
                return
            if depth >= n:
                return
            taken = path[depth] if depth < len(path) else None
            for r, node in enumerate(kids[:width]):
                hit = 1.0 if node == taken else 0.0
                if r == 0:
                    self.alpha[depth] += self.rate * (hit - self.alpha[depth])
                else:
                    self.siblings[depth, r - 1] += self.rate * (hit - self.siblings[depth, r - 1])
            if taken is None:
                return
            parent = taken

    def ceiling(self, z: float) -> float:
        """The upper end of the Wilson score interval of ``z`` standard deviations around
        ``hits / trials``: the best per-token acceptance the drafts verified so far leave
        plausible (1.0 before any; ``z = 0``: 1.0 always, i.e. no limit).

        The interval, not the rate itself, because a new prompt can make a proposer good:
        few trials (a proposer rarely probed, or counts just scaled down by
        :meth:`forget`) leave room up to 1, many trials of a poor proposer do not."""
        if not z or self.trials <= 0:
            return 1.0
        n, p = self.trials, self.hits / self.trials
        z2 = z * z
        centre = p + z2 / (2 * n)
        spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
        return min(1.0, (centre + spread) / (1 + z2 / n))

    def forget(self, keep: float) -> None:
        """Scale the counts behind :meth:`ceiling` by ``keep`` (each step: what earlier
        text showed weighs less and less, so a proposer that was poor there is probed again
        on text that may suit it)."""
        self.hits *= keep
        self.trials *= keep

    def expected_tokens_all(self, k_max: int) -> np.ndarray:
        """``float64[k_max + 1]``, read-only: ``E(k)`` for k = 0..k_max in one pass (a draft
        of k nodes; with a tree shape, the first k nodes of it), cached while the rates
        are unchanged."""
        key = (k_max, self.alpha.tobytes(), self.siblings.tobytes())
        if self._expected is not None and self._expected[0] == key:
            return self._expected[1]  # the rates move only when a draft is verified
        e = np.ones(k_max + 1)
        if self._paths is None:
            e[1:] += np.cumsum(np.cumprod(self.alpha[:k_max]))
        else:
            rates = np.append(np.column_stack([self.alpha, self.siblings]).ravel(), 1.0)
            nodes = rates[self._paths[:k_max]].prod(axis=1)
            e[1 : len(nodes) + 1] += np.cumsum(nodes)
            e[len(nodes) + 1 :] = e[len(nodes)]
        e.flags.writeable = False  # shared by the calls until the rates move
        self._expected = (key, e)
        return e

    def expected_tokens(self, k: int) -> float:
        """``E(k)``: expected new tokens of a step with a k-token draft (bonus included)."""
        if k <= 0:
            return 1.0
        return float(self.expected_tokens_all(k)[k])


@dataclass
class Choice:
    """The controller's decision for one step.

    Attributes:
        proposer: who drafts (None: plain decoding).
        k: the draft length (0: plain decoding).
        expected_rate: the expected tokens per second of the step.
        fallbacks: with a fixed k, the other proposers in order of expected rate at that k;
            the step asks them in turn when ``proposer`` drafts nothing (an n-gram lookup
            without a match), so every named proposer gets to draft.
    """

    proposer: str | None
    k: int
    expected_rate: float
    fallbacks: tuple[str, ...] = ()


@dataclass
class Controller:
    """Per step: argmax over (proposer, k) of expected tokens per second, k = 0 included.

    Attributes:
        verify: the target's cost curve.
        acceptance: per proposer acceptance estimates.
        draft_cost: per proposer seconds per drafted token at drift 1 (EMA over propose
            calls; a draft model's catch-up is not charged). The controller multiplies
            them by the cost curve's drift: the host's speed moves drafting and verifying
            alike.
        max_k: largest k considered.
        fixed_k: when set, always this k (less when the room is smaller), drafted by the
            proposer with the most expected tokens ``E(k)`` (live acceptance, not timings, so
            seeded runs repeat); the others, in that order, are its fallbacks.
        allow_plain: whether k = 0 may be chosen.
        switch_penalty: seconds (at drift 1) a speculative step costs on top of
            ``c_verify`` because the backend changes batch shape (measured by the probe as
            ``c_verify(0)``); charged to every k > 0 so that speculation must win by more
            than it costs to switch.
        margin: speculation is chosen over plain decoding only when its expected rate is
            at least this fraction higher (estimates are noisy; plain is the safe default).
        ceiling_z: :meth:`could_win` tests each proposer at the upper end of this many
            standard deviations' interval around its verified acceptance
            (:meth:`Acceptance.ceiling`); 0: at perfect acceptance.
    """

    verify: CostCurve
    acceptance: dict[str, Acceptance]
    max_k: int = 8
    fixed_k: int | None = None
    allow_plain: bool = True
    draft_cost: dict[str, float] = field(default_factory=dict)
    switch_penalty: float = 0.0
    margin: float = 0.05
    ceiling_z: float = 0.0

    def expected_rate(self, proposer: str | None, k: int) -> float:
        """Expected tokens per second of one step."""
        if proposer is None or k == 0:
            return 1.0 / self.verify(1)
        drift = self.verify.drift
        cost = self.verify(k + 1) + drift * self.switch_penalty
        cost += k * drift * self.draft_cost.get(proposer, 0.0)
        return self.acceptance[proposer].expected_tokens(k) / cost

    def choose(self, limit: int) -> Choice:
        """The best (proposer, k) with k <= ``limit`` (room left in budget and context)."""
        names = list(self.acceptance)
        if self.fixed_k is not None:
            k = min(self.fixed_k, limit)
            if k == 0:
                return Choice(None, 0, self.expected_rate(None, 0))
            # most expected tokens at k first (ties: the order named); not the rate, whose
            # drafting costs are wall-clock timings, so that seeded runs repeat exactly
            ranked = sorted(names, key=lambda n: -self.acceptance[n].expected_tokens(k))
            return Choice(ranked[0], k, self.expected_rate(ranked[0], k), tuple(ranked[1:]))
        plain = self.expected_rate(None, 0)
        best = Choice(None, 0, plain)
        bar = plain * (1.0 + self.margin) if self.allow_plain else -1.0
        k_max = min(self.max_k, limit, *(len(a.alpha) for a in self.acceptance.values()))
        if k_max < 1:
            return best
        verify = self._verify_list(k_max)
        for name in names:
            k_best, rate_best = self._best_k(name, k_max, verify)
            if rate_best > bar and rate_best > best.expected_rate:
                best = Choice(name, k_best, rate_best)
        return best

    def perfect_rate(self, proposer: str, limit: int, alpha: float = 1.0) -> float:
        """The best expected tokens per second of ``proposer`` over k = 1 .. min(max_k,
        ``limit``) were every drafted token accepted with probability ``alpha``, one
        after the other (``E(k) = 1 + alpha + ... + alpha^k``; k + 1 tokens a step at 1), at
        the costs learned so far: the most that probing it could find. 0 when no k fits."""
        k_max = min(self.max_k, limit, len(self.acceptance[proposer].alpha))
        if k_max < 1:
            return 0.0
        verify = self._verify_list(k_max)
        per_token = self.verify.drift * self.draft_cost.get(proposer, 0.0)
        tokens = np.cumsum(alpha ** np.arange(k_max + 1)).tolist()
        return max(tokens[k] / (verify[k - 1] + k * per_token) for k in range(1, k_max + 1))

    def probe_length(self, proposer: str, limit: int) -> int:
        """The draft length ``proposer`` would do best at by its current estimates (its
        acceptance, its drafting cost, the cost curve), k in 1 .. min(max_k, ``limit``): the
        length :meth:`choose` would give it were plain decoding not a candidate. A probe of
        that length pays most if the estimates are right and loses least if they are not.
        At least 1."""
        k_max = min(self.max_k, limit, len(self.acceptance[proposer].alpha))
        if k_max < 1:
            return 1
        return self._best_k(proposer, k_max, self._verify_list(k_max))[0]

    def _verify_list(self, k_max: int) -> list[float]:
        """The seconds of verifying a draft of k = 1..k_max (c_verify(k + 1) and the switch
        penalty, at the current drift) as plain floats, for :meth:`_best_k` and
        :meth:`perfect_rate`."""
        table = self.verify.table(k_max + 1).tolist()
        switch = self.verify.drift * self.switch_penalty
        return [table[k + 1] + switch for k in range(1, k_max + 1)]

    def _best_k(self, proposer: str, k_max: int, verify: list[float]) -> tuple[int, float]:
        """(k, rate): the draft length in 1..k_max with the most expected tokens per second
        (the first of equal rates) and that rate, given ``verify[k - 1]``, the seconds of
        verifying a draft of k. In plain floats: a dozen values, where each NumPy call
        costs more than the arithmetic (this runs every step)."""
        per_token = self.verify.drift * self.draft_cost.get(proposer, 0.0)
        tokens = self.acceptance[proposer].expected_tokens_all(k_max).tolist()
        k_best, rate_best = 0, -math.inf
        for k in range(1, k_max + 1):
            rate = tokens[k] / (verify[k - 1] + k * per_token)
            if rate > rate_best:
                k_best, rate_best = k, rate
        return k_best, rate_best

    def could_win(self, proposer: str, limit: int) -> bool:
        """Whether ``proposer`` could beat plain decoding by the margin at all, at the best
        acceptance its verified drafts leave plausible (:meth:`Acceptance.ceiling` with
        ``ceiling_z``; perfect acceptance before any, or with ``ceiling_z = 0``); always True
        where plain decoding is not an option. Where it cannot (verifying costs as much as
        the tokens it could save, at any acceptance it could plausibly have), a probe can
        only lose time."""
        if not self.allow_plain:
            return True
        alpha = self.acceptance[proposer].ceiling(self.ceiling_z)
        bar = self.expected_rate(None, 0) * (1 + self.margin)
        return self.perfect_rate(proposer, limit, alpha) > bar

    def record_draft(self, proposer: str, k: int, seconds: float, ema: float = 0.2) -> None:
        """Learn a proposer's drafting cost from one call that drafted ``k`` tokens (stored
        at drift 1)."""
        per = seconds / max(k, 1) / self.verify.drift
        old = self.draft_cost.get(proposer)
        self.draft_cost[proposer] = per if old is None else (1 - ema) * old + ema * per
