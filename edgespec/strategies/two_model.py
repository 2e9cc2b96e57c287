"""The loop shared by the lossy two-model strategies (``entropy-switch``, ``sentence-lead``).

A small model and a large one write one token sequence together; a rule (the subclass) says
who writes the next token. ``ctx.draft`` is the small model, ``ctx.target`` the large one.

- Each model keeps its own KV cache and remembers how much of the sequence it holds
  (:class:`Seat`). The model that takes over catches up on the tokens it has not seen in ONE
  batched forward (its first one is the prompt plus everything so far); nothing is
  re-prefilled.
- The rule is asked after every committed token, so a hand-over happens at the same token
  whether or not the large model speculates: a speculative step whose tokens run past a
  hand-over is cut there, and both caches are cut with it.
- Composition (option ``spec_k``): while the large model is in charge it may decode
  speculatively with the small model as its draft, through the speculative engine's
  controller (:mod:`edgespec.strategies.composition`). That is lossless within the stretch,
  and with the exact hand-over points above, greedy output does not depend on ``spec_k``.

Stats: ``token_share`` (accepted draft tokens count as draft tokens, as in speculation),
``switches``, ``entropy_trace`` (``H_t`` of the distribution each token came from) and
``model_trace`` (per token, "d" when the small model was in charge, "t" when the large one
was). The output may differ from the large model's, so these strategies are ``lossy``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.model import Model
from edgespec.options import integer, number, option
from edgespec.sampling import entropy, sample
from edgespec.speculative.step import Scorer
from edgespec.strategies import Strategy, composition

if TYPE_CHECKING:
    import argparse

    from edgespec.runtime import Runtime
    from edgespec.speculative.session import SpecSession
    from edgespec.stats import StatsRecorder

#: roles, as written in ``model_trace``
SMALL, LARGE = "d", "t"


def spec_k_option(value: Any, name: str = "spec_k") -> int | str:
    """``spec_k``: ``"auto"`` (the controller picks k each step) or an integer >= 0."""
    if value == composition.AUTO:
        return composition.AUTO
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise EdgespecError(
            f"spec_k must be an integer >= 0 or '{composition.AUTO}', got {value!r}"
        )
    return int(value)


def spec_k_field() -> Any:
    """The ``spec_k`` option both two-model strategies declare (a fresh field each call)."""
    return option(
        composition.AUTO,
        "draft length while the large model is in charge (small model drafts; 0: no "
        "speculation; default auto: the controller chooses each step)",
        flags=("--k",),
        check=spec_k_option,
    )


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


@dataclass(frozen=True)
class Prepared:
    """What ``prepare`` hands a two-model strategy (``ctx.config``).

    Attributes:
        options: the strategy's options (``SwitchConfig``, ``LeadConfig``).
        session: the speculation session the large model uses while in charge (None when
            ``spec_k`` is 0).
        small: the small model, in its file's own types (``Runtime.file_draft``: the
            output depends on its weights, so a draft requantized for speculation is not it).
    """

    options: Any
    session: SpecSession | None = None
    small: Model | None = None

    def to_dict(self) -> dict[str, Any]:
        """The options, JSON-safe."""
        d: dict[str, Any] = self.options.to_dict()
        return d


class Seat(Scorer):
    """One model, its role, and how many tokens of the shared sequence its cache holds.

    Invariant (of :class:`~edgespec.speculative.step.Scorer`): the model's cache holds
    ``seq[:seen]`` of the committed sequence ``seq``. The large model's seat is the scorer of
    its speculative steps, so catching up and scoring are one forward.
    """

    def __init__(self, model: Model, role: str) -> None:
        super().__init__(model)
        self.role = role

    def next_logits(self, seq: list[int]) -> np.ndarray:
        """Feed the tokens of ``seq`` this model has not seen, in one forward, and return the
        logits ``float[V]`` after ``seq`` (no forward when it has seen them all)."""
        return self.catch_up(seq)

    def write(self, seq: list[int], rec: StatsRecorder) -> np.ndarray:
        """:meth:`next_logits`, timed and counted in ``rec`` by role (phase "small" or
        "large"; the large model's forwards are target forwards, the small one's draft
        forwards)."""
        fresh = self.seen < len(seq) or self.logits is None
        t = time.perf_counter()
        logits = self.next_logits(seq)
        dt = time.perf_counter() - t
        if not fresh:
            return logits
        if self.role == LARGE:
            rec.target_forwards += 1
            rec.verify_s += dt
            rec.span("large", t, dt)
        else:
            rec.draft_forwards += 1
            rec.draft_s += dt
            rec.span("small", t, dt)
        return logits


class TwoModelStrategy(Strategy):
    """The loop shared by the lossy two-model strategies.

    Subclasses set ``options_class`` (an :class:`~edgespec.options.Options` with a
    ``spec_k`` field), say who writes the next token (:meth:`choose`) and see every committed
    token (:meth:`observe`).
    """

    lossy: ClassVar[bool] = True

    @classmethod
    def prepare(cls, runtime: Runtime, config: Any) -> Prepared:
        """The options (from an options object, a dict or None), checked against the loaded
        pair, and the speculation session for ``spec_k``."""
        assert cls.options_class is not None
        opts = (
            config
            if isinstance(config, cls.options_class)
            else cls.options_class.from_dict(dict(config or {}))
        )
        check_pair(runtime, cls.name)
        opts = cls.complete(runtime, opts)
        return Prepared(opts, composition.session(runtime, opts.spec_k), runtime.file_draft())

    @classmethod
    def complete(cls, runtime: Runtime, options: Any) -> Any:
        """Fill options that depend on the loaded models (default: none)."""
        return options

    @classmethod
    def check_args(cls, a: argparse.Namespace, options: dict[str, Any]) -> None:
        """Before loading: the command line must name the small model."""
        need_draft_flag(a, cls.name)

    @property
    def options(self) -> Any:
        return self.ctx.config.options

    def begin(self) -> None:
        """Reset per-generation state (called before the prompt is fed)."""

    def choose(self, current: str | None) -> str:
        """Who writes the next token: ``SMALL`` or ``LARGE``. ``current`` is who wrote the
        last one (None before the first token). Called once per committed token."""
        raise NotImplementedError

    def observe(self, token: int, h: float, role: str) -> None:
        """Token ``token`` was committed by ``role``, from a distribution of entropy ``h``."""

    def stretch_limit(self) -> int | None:
        """The most tokens the large model will write before the rule may hand over (bounds
        a speculative step); None when the rule cannot tell in advance."""
        return None

    def steps(self, prompt_ids: list[int]) -> Iterator[list[int]]:
        ctx, rec = self.ctx, self.ctx.rec
        prepared: Prepared = ctx.config
        small = prepared.small
        assert small is not None, "prepare() checks that a draft is loaded"
        seats = {SMALL: Seat(small, SMALL), LARGE: Seat(ctx.target, LARGE)}
        stretch = None
        if prepared.session is not None:
            stretch = composition.Stretch(ctx, prepared.session, seats[SMALL], seats[LARGE])
            stretch.begin(prompt_ids)
        small.reset()
        self.begin()
        seq = list(prompt_ids)
        t = time.perf_counter()
        self._h0 = entropy(seats[SMALL].next_logits(seq))
        dt = time.perf_counter() - t
        rec.prefill_s += dt
        rec.span("prefill", t, dt)
        rec.draft_forwards += 1
        role, last = self.choose(None), None
        produced = 0
        while True:
            if last is not None and role != last:
                rec.switches += 1
            room = ctx.budget - produced
            if role == LARGE and stretch is not None:
                limit = self.stretch_limit()
                tokens, hs, drafted = stretch.step(seq, room if limit is None else min(room, limit))
            else:
                logits = seats[role].write(seq, rec)
                with rec.phase("sample"):
                    tokens = [sample(logits, ctx.params, ctx.rng)]
                hs, drafted = [entropy(logits)], 0
            kept, nxt = 0, role
            for i, (tok, h) in enumerate(zip(tokens, hs, strict=True)):
                seq.append(tok)
                rec.entropy_trace.append(h)
                rec.model_trace += role
                if role == SMALL or i < drafted:
                    rec.from_draft += 1
                self.observe(tok, h, role)
                kept += 1
                nxt = self.choose(role)
                if nxt != role:
                    break
            if kept < len(tokens):  # the hand-over came inside a speculative step: cut there
                for seat in seats.values():
                    seat.keep(min(seat.seen, len(seq) - 1))
            produced += kept
            role, last = nxt, role
            yield tokens[:kept]


__all__ = [
    "LARGE",
    "SMALL",
    "Prepared",
    "Seat",
    "TwoModelStrategy",
    "check_pair",
    "entropy",
    "integer",
    "need_draft_flag",
    "number",
    "spec_k_field",
    "spec_k_option",
]
