"""Drafting with a smaller model of the same vocabulary (Leviathan et al. 2023).

The draft keeps its own KV cache, synchronised lazily: at each ``propose`` it rolls back to
the longest prefix it shares with the committed context and catches up on the missing
tokens in one batched forward, then drafts up to k tokens one at a time. Drafting stops
early when the draft's top probability falls below ``min_confidence`` (an adaptive draft
length in the spirit of PEARL / AdaEDL: don't pay for tokens that will likely be rejected).

:class:`LayerSkipProposer` is the same loop over a self-draft: the target's own first N
layers and head (LayerSkip / SWIFT-style early exit, no training), derived as a separate
GGUF so that every backend can run it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.model import Model
from edgespec.sampling import GenerationParams, confidence_probs, draw, target_probs
from edgespec.speculative.base import Proposer
from edgespec.speculative.types import EMPTY_DRAFT, Draft, Verdict

if TYPE_CHECKING:
    from edgespec.runtime import Runtime
    from edgespec.speculative.config import SpecConfig


def draft_of(runtime: Runtime, config: SpecConfig) -> Model:
    """The runtime's draft model, requantized when ``config.draft_quant`` names a type
    (:meth:`Runtime.draft_requantized`), then narrowed to a frequent-token head when
    ``config.draft_head`` asks for one, or by default where
    :func:`~edgespec.draft_head.default_size` says so (:meth:`Runtime.draft_with_head`),
    with ``config.draft_head_prompt`` prompt slots."""
    from edgespec.draft_head import default_size

    assert runtime.draft is not None
    quant = config.draft_quant
    base = runtime.draft if quant is None else runtime.draft_requantized(quant)
    size = config.draft_head
    size = default_size(base) if size is None else size
    if not size:
        return base
    return runtime.draft_with_head(size, config.draft_head_corpus, config.draft_head_prompt, quant)


#: tokens a draft model's cache can lag behind after a speculative step (its last drafted
#: token, never fed, and the target's bonus token): more is a catch-up (``Draft.catchup_s``)
STEADY_LAG = 2


class DraftModelProposer(Proposer):
    """Options: ``model`` (a :class:`Model`, required), ``min_confidence`` (default 0.3)."""

    name = "draft"
    needs_draft_model = True
    prior_acceptance = 0.7

    @classmethod
    def create(cls, runtime: Runtime, config: SpecConfig) -> DraftModelProposer:
        if runtime.draft is None:
            raise EdgespecError(f"proposer '{cls.name}' needs a draft model; pass --draft MODEL")
        return cls(draft_of(runtime, config), min_confidence=config.min_confidence)

    def __init__(self, model: Model, min_confidence: float = 0.3, **options: Any) -> None:
        super().__init__(**options)
        self.model = model
        self.min_confidence = min_confidence
        self.cached: list[int] = []  # tokens in the draft's KV cache, in order
        self.params = GenerationParams()
        self.catchup_s = 0.0  # of the last _sync (see Draft.catchup_s)

    def begin(self, prompt_ids: Sequence[int], params: GenerationParams) -> None:
        self.params = params
        self.model.fit_head(prompt_ids)  # a draft head's prompt slots (no-op otherwise)
        self.model.reset()
        self.cached = []

    def adopt(self, cached: Sequence[int]) -> None:
        """Someone else fed or cut the draft model: its cache now holds exactly ``cached``
        (a two-model strategy that also lets the draft write, see
        :mod:`edgespec.strategies.composition`)."""
        self.cached = list(cached)

    def _sync(self, context: Sequence[int]) -> np.ndarray:
        """Make the cache hold ``context``; return the logits ``float[V]`` after it. Sets
        ``catchup_s`` to the forward's seconds when it fed more than :data:`STEADY_LAG`
        tokens, else 0."""
        common = 0
        limit = min(len(self.cached), len(context) - 1)
        while common < limit and self.cached[common] == context[common]:
            common += 1
        self.model.truncate(common)
        self.cached = list(context[:common])
        missing = list(context[common:])
        t = time.perf_counter()
        logits = self.model.forward(missing, all_logits=False)[-1]
        self.catchup_s = time.perf_counter() - t if len(missing) > STEADY_LAG else 0.0
        self.cached.extend(missing)
        return logits

    def propose(self, context: Sequence[int], k: int, rng: np.random.Generator) -> Draft:
        if k <= 0:
            return EMPTY_DRAFT
        try:
            logits = self._sync(context)
            forwards = 1
            tokens: list[int] = []
            probs: list[np.ndarray] = []
            while True:
                p = target_probs(logits, self.params)
                tok = int(np.argmax(p)) if self.params.greedy else draw(p, rng)
                tokens.append(tok)
                probs.append(p)
                sure = float(confidence_probs(logits, self.params)[tok])
                if len(tokens) >= k or sure < self.min_confidence:
                    break
                logits = self.model.forward([tok], all_logits=False)[-1]
                forwards += 1
                self.cached.append(tok)
        except EdgespecError:
            raise
        except Exception as exc:  # a native crash in the draft must not kill generation
            raise DraftFailure(f"draft model failed: {type(exc).__name__}: {exc}") from exc
        return Draft(
            tuple(tokens),
            draft_probs=np.stack(probs),
            source=self.name,
            forwards=forwards,
            catchup_s=self.catchup_s,
        )

    def feedback(self, draft: Draft, verdict: Verdict) -> None:
        """Nothing to do: the next ``propose`` re-synchronises the cache lazily."""

    def close(self) -> None:
        self.model.close()


class LayerSkipProposer(DraftModelProposer):
    """A self-draft: the target truncated to its first ``layerskip_layers`` layers."""

    name = "layerskip"
    needs_draft_model = False
    prior_acceptance = 0.5

    @classmethod
    def create(cls, runtime: Runtime, config: SpecConfig) -> LayerSkipProposer:
        from edgespec.speculative.layerskip import load_layerskip_draft

        model = load_layerskip_draft(runtime, config.layerskip_layers)
        return cls(model, min_confidence=config.min_confidence)


class DraftFailure(RuntimeError):
    """The draft model raised; the strategy falls back to plain decoding."""
