"""Plain decoding: one target forward per new token. The baseline every strategy must match."""

from __future__ import annotations

import time
from collections.abc import Iterator

from edgespec.sampling import sample
from edgespec.strategies import Strategy


class Autoregressive(Strategy):
    """Prefill the prompt in one forward, then feed back one sampled token at a time."""

    name = "autoregressive"
    summary = "plain decoding, one target forward per token (the default)"

    def steps(self, prompt_ids: list[int]) -> Iterator[list[int]]:
        ctx, rec = self.ctx, self.ctx.rec
        t = time.perf_counter()
        logits = ctx.target.forward(prompt_ids, all_logits=False)
        rec.prefill_s += time.perf_counter() - t
        rec.span("prefill", t, time.perf_counter() - t)
        rec.target_forwards += 1
        while True:
            with rec.phase("sample"):
                token = sample(logits[-1], ctx.params, ctx.rng)
            yield [token]
            t = time.perf_counter()
            logits = ctx.target.forward([token], all_logits=False)
            rec.verify_s += time.perf_counter() - t
            rec.span("decode", t, time.perf_counter() - t)
            rec.target_forwards += 1
