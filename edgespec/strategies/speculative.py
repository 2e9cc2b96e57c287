"""Lossless speculative decoding with a device-aware controller.

Each step (:func:`edgespec.speculative.step.speculative_step`): the controller picks
(proposer, k) to maximise expected tokens per second from the measured cost curve and live
acceptance; the proposer drafts; the target scores the pending token plus the draft in one
forward (a tree forward when the draft is a tree and the backend supports it); the verifier
accepts a prefix or path; the cache keeps only what was accepted. k = 0 is a plain decoding
step, so "auto" falls back to plain decoding wherever drafts do not pay; its per-step
bookkeeping (choice, verification, recycling's top-k) still costs a few percent of a step on
models as small as SmolLM2 (docs/benchmarks.md section 18).

Cache discipline: the target's cache holds every committed token except the last one,
``pending``, which is fed at the start of the next forward together with the draft.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from edgespec.errors import EdgespecError
from edgespec.sampling import sample
from edgespec.speculative.base import PROPOSERS
from edgespec.speculative.config import SpecConfig
from edgespec.speculative.session import SpecSession, check_proposers
from edgespec.speculative.step import VERIFIER_FOR, Scorer, StepRecorder, speculative_step
from edgespec.strategies import Strategy

if TYPE_CHECKING:
    from edgespec.runtime import Runtime

__all__ = ["AUTO_PROPOSERS", "DEFAULT_PROPOSERS", "VERIFIER_FOR", "Auto", "Speculative"]


class Speculative(Strategy):
    """Speculation with the proposers and (optional) fixed k of the session's config."""

    name = "speculative"
    options_class = SpecConfig
    summary = (
        "lossless; the proposers you name (default ngram) draft, --k fixes the draft "
        "length, else the controller picks it each step"
    )

    @classmethod
    def prepare(cls, runtime: Runtime, config: Any) -> SpecSession:
        """The runtime's session for ``config`` (a SpecConfig, a dict, or None)."""
        cfg = _config(config)
        if cfg.proposers is None:
            cfg = replace(cfg, proposers=DEFAULT_PROPOSERS)
        return runtime.spec_session(cfg, allow_plain=cfg.allow_plain)

    @classmethod
    def check_args(cls, a: argparse.Namespace, options: dict[str, Any]) -> None:
        """Before loading: every named proposer exists and has the model it needs."""
        names = options.get("proposers") or ()
        for name in names:
            PROPOSERS.get(name)
        check_proposers(names, has_draft=getattr(a, "draft", None) is not None)

    def steps(self, prompt_ids: list[int]) -> Iterator[list[int]]:
        ctx, rec = self.ctx, self.ctx.rec
        session: SpecSession = ctx.config
        session.begin(prompt_ids, ctx.params)
        target, hook = Scorer(ctx.target), StepRecorder(rec)
        t = time.perf_counter()
        logits = target.catch_up(prompt_ids)
        rec.prefill_s += time.perf_counter() - t
        rec.span("prefill", t, time.perf_counter() - t)
        rec.target_forwards += 1
        with rec.phase("sample"):
            pending = sample(logits, ctx.params, ctx.rng)
        seq = [*prompt_ids, pending]
        yield [pending]
        while True:
            produced = len(seq) - len(prompt_ids)
            room = max(min(ctx.n_ctx - len(seq), ctx.budget - produced - 1), 0)
            step = speculative_step(session, target, seq, room, ctx.params, ctx.rng, hook)
            rec.from_draft += step.verdict.n_accepted
            seq.extend(step.tokens)
            yield list(step.tokens)


class Auto(Speculative):
    """Speculation where plain decoding is always a candidate (the default for users)."""

    name = "auto"
    summary = (
        "speculative with plain decoding (k = 0) always allowed; --k is only the largest "
        "draft length, and by default ngram, recycle and --draft are all tried"
    )

    @classmethod
    def prepare(cls, runtime: Runtime, config: Any) -> SpecSession:
        """Every applicable cheap proposer (plus the draft model when loaded), k = 0 allowed.

        A user-given ``k`` becomes the upper bound ``max_k``.
        """
        cfg = _config(config)
        if not cfg.allow_plain:
            raise EdgespecError(
                "strategy 'auto' always allows plain decoding; for allow_plain=false use "
                "strategy 'speculative'"
            )
        names = cfg.proposers or AUTO_PROPOSERS + (("draft",) if runtime.draft is not None else ())
        cfg = replace(
            cfg, proposers=names, allow_plain=True, k=None, max_k=cfg.k if cfg.k else cfg.max_k
        )
        return runtime.spec_session(cfg, allow_plain=True)


#: what "speculative" uses when the user names no proposer
DEFAULT_PROPOSERS = ("ngram",)
#: what "auto" tries when the user names no proposer (plus the draft model when loaded)
AUTO_PROPOSERS = ("ngram", "recycle")


def _config(config: Any) -> SpecConfig:
    if config is None:
        return SpecConfig()
    if isinstance(config, SpecConfig):
        return config
    return SpecConfig.from_dict(dict(config))
