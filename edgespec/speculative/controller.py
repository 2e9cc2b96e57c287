"""Choose the proposer and draft length k that maximise expected tokens per second.

For proposer P and draft length k, one step costs ``c_verify(k + 1) + c_draft_P(k)`` seconds
and yields ``E_P(k) = 1 + sum_{j=1..k} prod_{i<=j} alpha_P,i`` tokens, where alpha_P,i is the
live estimate of P's acceptance at draft position i given the earlier ones were accepted.
Plain decoding (k = 0) yields 1 token for ``c_verify(1)`` and is always a candidate.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


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
        return float(self.at(np.array([n], dtype=np.float64))[0])

    def at(self, ns: np.ndarray) -> np.ndarray:
        """``c_verify`` at every size in ``ns`` (``float64[m]``, each >= 1) in one pass."""
        return self.drift * self._shape(ns)

    def _shape(self, ns: np.ndarray) -> np.ndarray:
        points = {x: y for x, y in self.points.items() if x >= 1}
        if not points:
            return 1.0 * ns  # no idea yet: assume linear, which discourages speculation
        order = sorted(points)
        xs = np.array(order, dtype=np.float64)
        ys = np.array([points[x] for x in order], dtype=np.float64)
        if len(xs) == 1:
            return np.where(ns > xs[0], ys[0] * ns / xs[0], ys[0])
        slope = max((ys[-1] - ys[-2]) / (xs[-1] - xs[-2]), 0.0)
        return np.where(ns <= xs[-1], np.interp(ns, xs, ys), ys[-1] + slope * (ns - xs[-1]))

    def table(self, n_max: int) -> np.ndarray:
        """``float64[n_max + 1]``: ``c_verify(n)`` for n = 0..n_max (entry 0 unused); the
        shape is cached while ``points`` is unchanged (every plain step changes them: one
        vectorised pass)."""
        if self._table is None or len(self._table) <= n_max or self._table_of != self.points:
            self._table_of = dict(self.points)
            ns = np.arange(1, n_max + 1, dtype=np.float64)
            self._table = np.concatenate([[0.0], self._shape(ns)])
        return self.drift * self._table[: n_max + 1]


@dataclass
class Acceptance:
    """Per-position conditional acceptance rates of one proposer (EMA with a prior).

    Attributes:
        alpha: ``float64[max_k]``; alpha[i] = P(accept position i | accepted 0..i-1).
        rate: EMA weight of one observation.
    """

    alpha: np.ndarray
    rate: float = 0.15

    @classmethod
    def prior(cls, max_k: int, value: float) -> Acceptance:
        return cls(np.full(max_k, value, dtype=np.float64))

    def update(self, k: int, n_accepted: int) -> None:
        """A draft of length ``k`` had its first ``n_accepted`` tokens accepted."""
        for i in range(min(n_accepted, len(self.alpha))):
            self.alpha[i] += self.rate * (1.0 - self.alpha[i])
        if n_accepted < k and n_accepted < len(self.alpha):
            self.alpha[n_accepted] += self.rate * (0.0 - self.alpha[n_accepted])
        elif 0 < k < len(self.alpha):
            # Full acceptance says nothing about positions past k, which a controller that
            # settled on k would never observe: let them follow the last observed one.
            self.alpha[k:] += self.rate * (self.alpha[k - 1] - self.alpha[k:])

    def expected_tokens_all(self, k_max: int) -> np.ndarray:
        """``float64[k_max + 1]``: ``E(k)`` for k = 0..k_max in one pass."""
        e = np.ones(k_max + 1)
        e[1:] += np.cumsum(np.cumprod(self.alpha[:k_max]))
        return e

    def expected_tokens(self, k: int) -> float:
        """``E(k)``: expected new tokens of a step with a k-token draft (bonus included)."""
        if k <= 0:
            return 1.0
        return 1.0 + float(np.cumprod(self.alpha[:k]).sum())


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
    """

    verify: CostCurve
    acceptance: dict[str, Acceptance]
    max_k: int = 8
    fixed_k: int | None = None
    allow_plain: bool = True
    draft_cost: dict[str, float] = field(default_factory=dict)
    switch_penalty: float = 0.0
    margin: float = 0.05

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
        ks = np.arange(1, k_max + 1)
        drift = self.verify.drift
        verify = self.verify.table(k_max + 1)[ks + 1] + drift * self.switch_penalty
        for name in names:  # vectorised expected_rate over k = 1..k_max
            cost = verify + ks * (drift * self.draft_cost.get(name, 0.0))
            rates = self.acceptance[name].expected_tokens_all(k_max)[1:] / cost
            i = int(np.argmax(rates))
            if rates[i] > bar and rates[i] > best.expected_rate:
                best = Choice(name, int(ks[i]), float(rates[i]))
        return best

    def record_draft(self, proposer: str, k: int, seconds: float, ema: float = 0.2) -> None:
        """Learn a proposer's drafting cost from one call that drafted ``k`` tokens (stored
        at drift 1)."""
        per = seconds / max(k, 1) / self.verify.drift
        old = self.draft_cost.get(proposer)
        self.draft_cost[proposer] = per if old is None else (1 - ema) * old + ema * per
