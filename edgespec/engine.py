"""The generation loop shared by every strategy: limits, EOS, stop strings, streaming, stats."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.sampling import GenerationParams
from edgespec.stats import Stats, StatsRecorder
from edgespec.strategies import STRATEGIES, GenContext
from edgespec.tokenizer import Tokenizer


@dataclass(frozen=True)
class GenerationResult:
    """The outcome of one generation.

    Attributes:
        text: the generated text (stop string and EOS excluded).
        token_ids: new token ids (EOS excluded).
        prompt_token_ids: the prompt as the model saw it.
        stats: timing and speculation statistics.
    """

    text: str
    token_ids: list[int]
    prompt_token_ids: list[int]
    stats: Stats

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "prompt_token_ids": self.prompt_token_ids,
            "stats": self.stats.to_dict(),
        }


class Generation:
    """An in-progress generation: iterate for text deltas, then read :attr:`result`.

    The text is streamed as it becomes final: incomplete UTF-8 sequences and anything that
    could still turn into a stop string are held back until resolved.
    """

    def __init__(
        self,
        ctx: GenContext,
        strategy: str,
        tokenizer: Tokenizer,
        prompt_ids: list[int],
    ) -> None:
        if not prompt_ids:
            raise EdgespecError("the prompt is empty; pass some text to continue")
        if len(prompt_ids) >= ctx.n_ctx:
            raise EdgespecError(
                f"the prompt has {len(prompt_ids)} tokens but the context holds {ctx.n_ctx}; "
                "shorten the prompt or raise --n-ctx"
            )
        self._cls = STRATEGIES.get(strategy)
        self.ctx = ctx
        self.tokenizer = tokenizer
        self.prompt_ids = list(prompt_ids)
        self.result: GenerationResult | None = None
        ctx.rec.lossy = self._cls.lossy
        ctx.rec.prompt_tokens = len(prompt_ids)

    def __iter__(self) -> Iterator[str]:
        ctx, params, rec = self.ctx, self.ctx.params, self.ctx.rec
        stops = params.stop
        hold = max((len(s) for s in stops), default=1) - 1
        out: list[int] = []
        emitted = 0
        text = ""
        ttft = 0.0
        stop_reason = "max_new_tokens"
        ctx.target.reset()
        rec.restart_clock()
        strategy = self._cls(ctx)
        steps = strategy.steps(self.prompt_ids)
        stream = self.tokenizer.stream()
        try:
            done = False
            for step in steps:
                for token in step:
                    if not out and not ttft:
                        ttft = time.perf_counter() - rec._t0
                    if token in ctx.eos_ids and not params.ignore_eos:
                        stop_reason, done = "eos", True
                        break
                    out.append(token)
                    with rec.phase("detokenize"):
                        text = stream.push(token)
                    cut = _find_stop(text, stops, max(0, emitted - hold))
                    if cut is not None:
                        text, stop_reason, done = text[:cut], "stop_string", True
                        break
                    if len(out) >= ctx.budget:
                        stop_reason = "max_new_tokens"
                        if ctx.budget < params.max_new_tokens:
                            stop_reason = "context"
                        done = True
                        break
                    safe = len(text) - hold
                    if text.endswith("\ufffd"):
                        safe = min(safe, len(text.rstrip("\ufffd")))
                    if safe > emitted:
                        yield text[emitted:safe]
                        emitted = safe
                if done:
                    break
        finally:
            getattr(steps, "close", lambda: None)()  # stop the strategy's generator
        if len(text) > emitted:
            yield text[emitted:]
        self.result = GenerationResult(
            text=text,
            token_ids=out,
            prompt_token_ids=self.prompt_ids,
            stats=rec.finish(len(out), ttft, stop_reason),
        )

    def run(self) -> GenerationResult:
        """Consume the whole generation and return its result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result


def _find_stop(text: str, stops: tuple[str, ...], start: int) -> int | None:
    hits = [i for s in stops if (i := text.find(s, start)) >= 0]
    return min(hits) if hits else None


def make_context(
    *,
    target: Any,
    params: GenerationParams,
    backend: str,
    strategy: str,
    n_ctx: int,
    prompt_len: int,
    eos_ids: frozenset[int],
    draft: Any = None,
    config: Any = None,
) -> GenContext:
    """A fresh :class:`GenContext` with a seeded RNG and an empty recorder."""
    return GenContext(
        target=target,
        params=params,
        rng=np.random.default_rng(params.seed),
        rec=StatsRecorder(backend=backend, strategy=strategy),
        n_ctx=n_ctx,
        budget=min(params.max_new_tokens, n_ctx - prompt_len),
        draft=draft,
        config=config,
        eos_ids=eos_ids,
    )
