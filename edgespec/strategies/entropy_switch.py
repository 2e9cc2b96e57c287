"""Entropy Adaptive Decoding: switch between a small and a large model by uncertainty (lossy).

EAD (Simonds et al. 2025, "Entropy Adaptive Decoding: Dynamic Model Switching for Efficient
Inference", arXiv 2502.06833): the small model generates while the rolling mean entropy
``H̄`` of the next-token distribution over the last ``w`` tokens stays at or below ``τ``; when
it rises above ``τ`` the large model takes over, and hands back once ``H̄ <= τ`` again. A
switch happens only after at least ``d_min`` (``min_run``) tokens on the current model.

Details that make the rule exact and cheap:

- ``H_t`` is the entropy, in nats, of ``softmax(logits)`` (temperature 1) of the model that
  produced token t, so no extra forward is ever run just to measure entropy.
- Before the first token nothing has run: the small model prefills the prompt and its first
  distribution alone decides who starts (``H_0 > τ``: the large model). So ``τ = +inf`` is
  exactly the small model's decoding and ``τ = -inf`` exactly the large model's.
- Each model keeps its own KV cache and remembers how much of the sequence it holds. The
  model that takes over catches up on the tokens it has not seen in ONE batched forward (its
  first one is the prompt plus everything so far); nothing is ever re-prefilled.
- Composition (``spec_k > 0``): while the large model is in charge it decodes speculatively
  with the small one as its draft (greedy or chain rejection verifier: lossless within the
  stretch). The switch rule is then checked after each verify step, so a hand-back can come
  up to ``spec_k`` tokens later than without speculation.

Stats: ``token_share`` (accepted draft tokens count as draft tokens, as in speculation),
``switches``, ``entropy_trace`` (``H_t`` per token) and ``model_trace`` (per token, "d" when
the small model was in charge, "t" when the large one was). The output may differ from the
large model's, so the strategy is ``lossy``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.model import Model
from edgespec.sampling import draw, sample, target_probs
from edgespec.spec.base import VERIFIERS
from edgespec.spec.types import Draft
from edgespec.strategies import Strategy

if TYPE_CHECKING:
    import argparse

    from edgespec.runtime import Runtime

#: roles, as written in ``model_trace``
SMALL, LARGE = "d", "t"


def entropy(logits: np.ndarray) -> float:
    """Entropy in nats of ``softmax(logits)`` (``logits``: ``float[V]``)."""
    z = logits.astype(np.float64)
    z = z - z.max()
    e = np.exp(z)
    s = e.sum()
    p = e / s
    # H = log(s) - sum(p * z), stable where p underflows to 0
    return float(math.log(s) - float(np.dot(p, z)))


def _float(value: Any, name: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise EdgespecError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(x):
        raise EdgespecError(f"{name} must be a number (or +inf/-inf), got NaN")
    return x


def _int(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise EdgespecError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class SwitchConfig:
    """How ``entropy-switch`` decides which model writes the next token.

    Attributes:
        tau: entropy threshold τ in nats; +inf = small model only, -inf = large model only.
        window: w, the number of most recent tokens whose entropies are averaged (>= 1).
        min_run: d_min, tokens the current model writes before a switch is allowed (>= 1).
        spec_k: draft length when the large model speculates with the small one as draft
            (0 = the large model decodes one token per forward).
    """

    tau: float = 1.5
    window: int = 4
    min_run: int = 4
    spec_k: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "tau", _float(self.tau, "tau"))
        object.__setattr__(self, "window", _int(self.window, "window", 1))
        object.__setattr__(self, "min_run", _int(self.min_run, "min_run", 1))
        object.__setattr__(self, "spec_k", _int(self.spec_k, "spec_k", 0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: an infinite τ becomes the string "inf" or "-inf"."""
        d = asdict(self)
        if math.isinf(self.tau):
            d["tau"] = str(self.tau)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SwitchConfig:
        return cls(**_known(cls, d, "entropy-switch"))


def _known(cls: Any, d: dict[str, Any], strategy: str) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise EdgespecError(
            f"unknown {strategy} option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return dict(d)


def check_pair(runtime: Runtime, strategy: str) -> None:
    """One-line errors for a missing draft or models whose vocabularies differ."""
    if runtime.draft is None:
        raise EdgespecError(
            f"strategy '{strategy}' needs a small model; pass --draft SMALL (same tokenizer)"
        )
    vt, vd = runtime.target.info.vocab_size, runtime.draft.info.vocab_size
    if vt != vd:
        raise EdgespecError(
            f"strategy '{strategy}': the draft has {vd} logits per token but the target has "
            f"{vt}; use a draft from the same model family (same tokenizer)"
        )


def need_draft_flag(a: argparse.Namespace, strategy: str) -> None:
    """Fail before loading anything when the command line names no small model."""
    if getattr(a, "draft", None) is None:
        raise EdgespecError(
            f"strategy '{strategy}' needs a small model; pass --draft SMALL (same tokenizer)"
        )


class _Seat:
    """One model and how many tokens of the shared sequence its cache holds."""

    def __init__(self, model: Model, role: str) -> None:
        self.model, self.role = model, role
        self.seen = 0
        self.logits: np.ndarray | None = None  # after the first ``seen`` tokens, when known

    def next_logits(self, seq: list[int]) -> np.ndarray:
        """Feed the tokens of ``seq`` this model has not seen, in one forward, and return the
        logits ``float[V]`` after ``seq`` (no forward when it has seen them all)."""
        missing = seq[self.seen :]
        if not missing and self.logits is not None:
            return self.logits
        self.logits = self.model.forward(missing, all_logits=False)[-1]
        self.seen = len(seq)
        return self.logits

    def keep(self, length: int) -> None:
        """Drop cached positions past ``length``."""
        self.model.truncate(length)
        self.seen, self.logits = length, None


class TwoModelStrategy(Strategy):
    """The loop shared by the lossy two-model strategies.

    ``ctx.target`` is the large model, ``ctx.draft`` the small one. Subclasses say who writes
    the next token (:meth:`choose`) and see every committed token (:meth:`observe`).
    """

    lossy: ClassVar[bool] = True

    def begin(self) -> None:
        """Reset per-generation state (called before the prompt is fed)."""

    def choose(self, current: str | None) -> str:
        """Who writes the next token: ``SMALL`` or ``LARGE``. ``current`` is who wrote the
        last one (None before the first token)."""
        raise NotImplementedError

    def observe(self, token: int, h: float, role: str) -> None:
        """Token ``token`` was committed by ``role``, from a distribution of entropy ``h``."""

    @property
    def spec_k(self) -> int:
        return int(getattr(self.ctx.config, "spec_k", 0))

    def steps(self, prompt_ids: list[int]) -> Iterator[list[int]]:
        ctx, rec = self.ctx, self.ctx.rec
        assert ctx.draft is not None, "prepare() checks that a draft is loaded"
        seats = {SMALL: _Seat(ctx.draft, SMALL), LARGE: _Seat(ctx.target, LARGE)}
        ctx.draft.reset()
        self.begin()
        seq = list(prompt_ids)
        t = time.perf_counter()
        self._h0 = entropy(seats[SMALL].next_logits(seq))
        rec.prefill_s += time.perf_counter() - t
        rec.draft_forwards += 1
        current: str | None = None
        produced = 0
        while True:
            role = self.choose(current)
            if current is not None and role != current:
                rec.switches += 1
            current = role
            n_drafted = 0
            if role == LARGE and self.spec_k > 0 and ctx.budget - produced > 1:
                tokens, hs, n_drafted = self._spec_step(seats, seq, ctx.budget - produced)
            else:
                logits = self._forward(seats[role], seq)
                tokens, hs = [sample(logits, ctx.params, ctx.rng)], [entropy(logits)]
            for i, (tok, h) in enumerate(zip(tokens, hs, strict=True)):
                seq.append(tok)
                rec.entropy_trace.append(h)
                rec.model_trace += role
                if role == SMALL or i < n_drafted:
                    rec.from_draft += 1
                self.observe(tok, h, role)
            produced += len(tokens)
            yield tokens

    def _forward(self, seat: _Seat, seq: list[int]) -> np.ndarray:
        rec = self.ctx.rec
        fresh = seat.seen < len(seq)
        t = time.perf_counter()
        logits = seat.next_logits(seq)
        dt = time.perf_counter() - t
        if fresh and seat.role == LARGE:
            rec.target_forwards += 1
            rec.verify_s += dt
        elif fresh:
            rec.draft_forwards += 1
            rec.draft_s += dt
        return logits

    def _spec_step(
        self, seats: dict[str, _Seat], seq: list[int], room: int
    ) -> tuple[list[int], list[float], int]:
        """One speculative step of the large model with the small one drafting k tokens
        (``k <= room - 1``, so the step yields at most ``room`` tokens).

        Returns (new tokens, the large model's entropy for each, accepted draft tokens).
        """
        ctx, rec = self.ctx, self.ctx.rec
        small, large = seats[SMALL], seats[LARGE]
        k = max(1, min(self.spec_k, room - 1))
        t = time.perf_counter()
        logits = self._forward(small, seq)
        drafted: list[int] = []
        probs: list[np.ndarray] = []
        while True:
            p = target_probs(logits, ctx.params)
            tok = int(np.argmax(p)) if ctx.params.greedy else draw(p, ctx.rng)
            drafted.append(tok)
            probs.append(p)
            if len(drafted) >= k:
                break
            logits = small.model.forward([tok], all_logits=False)[-1]
            rec.draft_forwards += 1
        small.seen, small.logits = len(seq) + k - 1, None  # the last drafted token is not fed
        rec.draft_s += time.perf_counter() - t
        draft = Draft(tuple(drafted), draft_probs=np.stack(probs), source="draft")
        base = large.seen
        missing = seq[base:]
        t = time.perf_counter()
        rows = large.model.forward(missing + drafted, all_logits=True)[len(missing) - 1 :]
        rec.verify_s += time.perf_counter() - t
        rec.target_forwards += 1
        name = "greedy" if ctx.params.greedy else "chain"
        verdict = VERIFIERS.get(name)().verify(draft, rows, ctx.params, ctx.rng)
        n = verdict.n_accepted
        large.keep(len(seq) + n)
        small.keep(min(small.seen, len(seq) + n))
        rec.accept_hist[n] += 1
        rec.k_trace.append(k)
        hs = [entropy(rows[i]) for i in range(n + 1)]
        return list(verdict.tokens), hs, n


class EntropySwitch(TwoModelStrategy):
    """EAD: the small model writes while the window's mean entropy stays <= τ."""

    name = "entropy-switch"

    @classmethod
    def prepare(cls, runtime: Runtime, config: Any) -> SwitchConfig:
        cfg = (
            config
            if isinstance(config, SwitchConfig)
            else SwitchConfig.from_dict(dict(config or {}))
        )
        check_pair(runtime, cls.name)
        return cfg

    @classmethod
    def config_from_args(cls, a: argparse.Namespace) -> dict[str, Any]:
        """The options given on the command line (``--tau``, ``--window``, ``--min-run``,
        ``--k`` for speculation while the large model is in charge)."""
        need_draft_flag(a, cls.name)
        d: dict[str, Any] = {}
        for flag, key in (
            ("tau", "tau"),
            ("window", "window"),
            ("min_run", "min_run"),
            ("k", "spec_k"),
        ):
            if getattr(a, flag, None) is not None:
                d[key] = getattr(a, flag)
        SwitchConfig.from_dict(d)  # validate before loading models
        return d

    def begin(self) -> None:
        self.run = 0
        self.hs: list[float] = []

    def window_mean(self) -> float:
        w = self.hs[-self.ctx.config.window :]
        return sum(w) / len(w)

    def choose(self, current: str | None) -> str:
        cfg: SwitchConfig = self.ctx.config
        if current is None:
            return LARGE if self._h0 > cfg.tau else SMALL
        if self.run < cfg.min_run:
            return current
        unsure = self.window_mean() > cfg.tau
        want = LARGE if unsure else SMALL
        if want != current:
            self.run = 0
        return want

    def observe(self, token: int, h: float, role: str) -> None:
        self.run += 1
        self.hs.append(h)
