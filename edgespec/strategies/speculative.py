"""Lossless speculative decoding with a device-aware controller.

Each step: the controller picks (proposer, k) to maximise expected tokens per second from
the measured cost curve and live acceptance; the proposer drafts; the target scores the
pending token plus the draft in one forward (a tree forward when the draft is a tree and
the backend supports it); the verifier accepts a prefix or path; the cache keeps only what
was accepted. k = 0 is a plain decoding step, so "auto" is never meaningfully slower than
plain decoding.

Cache discipline: the target's cache holds every committed token except the last one,
``pending``, which is fed at the start of the next forward together with the draft.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from edgespec.sampling import sample
from edgespec.speculative.base import VERIFIERS
from edgespec.speculative.config import SpecConfig
from edgespec.speculative.proposers.draft_model import DraftFailure
from edgespec.speculative.session import SpecSession
from edgespec.speculative.types import EMPTY_DRAFT, Draft
from edgespec.strategies import Strategy

if TYPE_CHECKING:
    from edgespec.runtime import Runtime

#: (greedy?, tree?) -> verifier name
VERIFIER_FOR = {
    (True, False): "greedy",
    (True, True): "greedy",
    (False, False): "chain",
    (False, True): "tree",
}


class Speculative(Strategy):
    """Speculation with the proposers and (optional) fixed k of the session's config."""

    name = "speculative"

    @classmethod
    def prepare(cls, runtime: Runtime, config: Any) -> SpecSession:
        """The runtime's session for ``config`` (a SpecConfig, a dict, or None)."""
        cfg = _config(config)
        return runtime.spec_session(cfg, allow_plain=cfg.allow_plain)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        SpecConfig.from_dict(options)

    def steps(self, prompt_ids: list[int]) -> Iterator[list[int]]:
        ctx, rec = self.ctx, self.ctx.rec
        session: SpecSession = ctx.config
        session.begin(prompt_ids, ctx.params)
        target, params, rng = ctx.target, ctx.params, ctx.rng
        t = time.perf_counter()
        logits = target.forward(prompt_ids, all_logits=False)
        rec.prefill_s += time.perf_counter() - t
        rec.span("prefill", t, time.perf_counter() - t)
        rec.target_forwards += 1
        with rec.phase("sample"):
            pending = sample(logits[-1], params, rng)
        seq = list(prompt_ids) + [pending]
        produced = 1
        prev_n = 1
        yield [pending]
        while True:
            t_step = time.perf_counter()
            draft_dt = 0.0
            room = min(ctx.n_ctx - target.n_past - 1, ctx.budget - produced - 1)
            choice = session.choose(max(room, 0))
            draft = EMPTY_DRAFT
            if choice.proposer is not None and choice.k > 0:
                t = time.perf_counter()
                try:
                    draft = session.proposers[choice.proposer].propose(seq, choice.k, rng)
                except DraftFailure as exc:
                    rec.notes.append(f"{exc}; fell back to plain decoding")
                    session.disable(choice.proposer)
                    draft = EMPTY_DRAFT
                draft_dt = time.perf_counter() - t
                rec.draft_s += draft_dt
                rec.draft_forwards += draft.forwards
                rec.span("draft", t, draft_dt)
                session.controller.record_draft(choice.proposer, max(draft.k, 1), draft_dt)
                if draft.is_tree and not session.tree_ok:
                    draft = _main_chain(draft)
            rec.k_trace.append(draft.k)
            base = target.n_past
            feed = [pending, *draft.tokens]
            t = time.perf_counter()
            if draft.is_tree:
                parents = [-1] + [p + 1 for p in draft.chain_parents()]
                logits = target.forward_tree(feed, parents)
            else:
                logits = target.forward(feed, all_logits=draft.k > 0)
            dt = time.perf_counter() - t
            rec.verify_s += dt
            rec.span("verify", t, dt)
            rec.target_forwards += 1
            with rec.phase("sample"):
                verdict = VERIFIERS.get(VERIFIER_FOR[(params.greedy, draft.is_tree)])().verify(
                    draft, logits, params, rng
                )
            with rec.phase("rollback"):
                if draft.is_tree:
                    target.commit_tree_path(base, [0] + [i + 1 for i in verdict.path])
                else:
                    target.truncate(base + 1 + verdict.n_accepted)
            session.after_step(draft, verdict, feed, logits)
            # The cost curve learns whole steps (forward + verify + commit + bookkeeping),
            # drafting excluded (charged per proposer), chain steps only; a one-token step
            # right after another size carries the switch penalty, charged separately.
            if not draft.is_tree and (len(feed) > 1 or prev_n == 1):
                step_dt = time.perf_counter() - t_step - draft_dt
                session.controller.verify.observe(len(feed), step_dt)
            prev_n = len(feed)
            if draft.k:
                rec.accept_hist[verdict.n_accepted] += 1
                rec.from_draft += verdict.n_accepted
            seq.extend(verdict.tokens)
            pending = verdict.bonus_token
            produced += len(verdict.tokens)
            yield list(verdict.tokens)


class Auto(Speculative):
    """Speculation where plain decoding is always a candidate (the default for users)."""

    name = "auto"

    @classmethod
    def prepare(cls, runtime: Runtime, config: Any) -> SpecSession:
        """Every applicable cheap proposer (plus the draft model when loaded), k = 0 allowed.

        A user-given ``k`` becomes the upper bound ``max_k``.
        """
        cfg = _config(config)
        explicit = config is not None and "proposers" in _as_dict(config)
        names = (
            cfg.proposers
            if explicit
            else AUTO_PROPOSERS + (("draft",) if runtime.draft is not None else ())
        )
        cfg = replace(
            cfg, proposers=names, allow_plain=True, k=None, max_k=cfg.k if cfg.k else cfg.max_k
        )
        return runtime.spec_session(cfg, allow_plain=True)


#: what "auto" tries when the user names no proposer
AUTO_PROPOSERS = ("ngram", "recycle")


def _as_dict(config: Any) -> dict[str, Any]:
    return config.to_dict() if isinstance(config, SpecConfig) else dict(config)


def _config(config: Any) -> SpecConfig:
    if config is None:
        return SpecConfig()
    if isinstance(config, SpecConfig):
        return config
    return SpecConfig.from_dict(dict(config))


def _main_chain(draft: Draft) -> Draft:
    """The first-child path of a tree, for backends that cannot verify trees."""
    keep, node = [], -1
    while kids := draft.children(node):
        node = kids[0]
        keep.append(node)
    probs = None if draft.draft_probs is None else draft.draft_probs[keep]
    return Draft(tuple(draft.tokens[i] for i in keep), None, probs, draft.source, draft.forwards)
