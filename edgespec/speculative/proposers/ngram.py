"""Prompt lookup / n-gram drafting (Saxena 2023, "prompt lookup decoding").

Find the most recent earlier occurrence of the longest suffix of the context (``ngram_max``
down to ``ngram_min`` tokens) and propose the tokens that followed it. Costs microseconds,
needs no model, and shines when the output quotes the input (summaries, code edits, JSON).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edgespec.speculative.base import Proposer
from edgespec.speculative.types import EMPTY_DRAFT, Draft

if TYPE_CHECKING:
    from edgespec.runtime import Runtime
    from edgespec.speculative.config import SpecConfig


class NGramProposer(Proposer):
    """Options: ``ngram_min`` (default 1), ``ngram_max`` (default 4)."""

    name = "ngram"

    def __init__(self, ngram_min: int = 1, ngram_max: int = 4, **options: Any) -> None:
        super().__init__(**options)
        self.ngram_min, self.ngram_max = ngram_min, ngram_max

    @classmethod
    def create(cls, runtime: Runtime, config: SpecConfig) -> NGramProposer:
        return cls(ngram_min=config.ngram_min, ngram_max=config.ngram_max)

    def propose(self, context: Sequence[int], k: int, rng: np.random.Generator) -> Draft:
        ctx = np.asarray(context, dtype=np.int64)
        n = len(ctx)
        for size in range(min(self.ngram_max, n - 1), self.ngram_min - 1, -1):
            suffix = ctx[n - size :]
            # windows[i] = ctx[i : i + size]; search every start except the suffix itself
            windows = np.lib.stride_tricks.sliding_window_view(ctx[: n - 1], size)
            hits = np.flatnonzero((windows == suffix).all(axis=1))
            if hits.size:
                start = int(hits[-1]) + size  # most recent match
                follow = ctx[start : start + k]
                if follow.size:
                    return Draft(tuple(int(t) for t in follow), source=self.name)
        return EMPTY_DRAFT
