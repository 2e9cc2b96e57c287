"""Decoding strategies: one registry, one file per strategy.

A strategy turns a prompt into *steps*: each step is the list of new tokens one target
forward produced (one for plain decoding, up to k+1 for speculation). The engine
(:mod:`edgespec.engine`) consumes steps, applies EOS, stop strings and limits, and closes the
generator when done, so a strategy never does work past what is consumed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.model import Model
from edgespec.registry import Registry
from edgespec.sampling import GenerationParams
from edgespec.stats import StatsRecorder


@dataclass
class GenContext:
    """Everything a strategy may use for one generation.

    Attributes:
        target: the model whose output is the contract.
        params: sampling parameters.
        rng: seeded generator for every random draw in this generation.
        rec: statistics recorder.
        n_ctx: KV-cache capacity of the target, in tokens.
        budget: most new tokens the engine will consume (the strategy may stop early).
        draft: an optional smaller model with the same vocabulary.
        config: strategy-specific options (for example a speculative config).
        eos_ids: tokens that end generation.
    """

    target: Model
    params: GenerationParams
    rng: np.random.Generator
    rec: StatsRecorder
    n_ctx: int
    budget: int
    draft: Model | None = None
    config: Any = None
    eos_ids: frozenset[int] = field(default_factory=frozenset)


class Strategy(ABC):
    """Base class. Subclasses set ``name`` (and ``lossy``) and implement :meth:`steps`."""

    name: ClassVar[str]
    lossy: ClassVar[bool] = False

    def __init__(self, ctx: GenContext) -> None:
        self.ctx = ctx

    @classmethod
    def prepare(cls, runtime: Any, config: Any) -> Any:
        """Turn the user's ``config`` into what :attr:`GenContext.config` holds (once per
        call of ``Runtime.start``; may build and cache state on the runtime)."""
        return config

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Validate user options (from the command line or a bench spec) before any model
        is loaded; one-line :class:`EdgespecError` on a problem. Default: no options."""
        if options:
            raise EdgespecError(
                f"strategy '{cls.name}' takes no options, got {', '.join(sorted(options))}"
            )

    @abstractmethod
    def steps(self, prompt_ids: list[int]) -> Iterator[list[int]]:
        """Prefill ``prompt_ids`` into an empty cache, then yield new tokens step by step."""


STRATEGIES: Registry[type[Strategy]] = Registry("strategy")
STRATEGIES.add_lazy("autoregressive", "edgespec.strategies.autoregressive:Autoregressive")
STRATEGIES.add_lazy("speculative", "edgespec.strategies.speculative:Speculative")
STRATEGIES.add_lazy("auto", "edgespec.strategies.speculative:Auto")
STRATEGIES.add_lazy("entropy-switch", "edgespec.strategies.entropy_switch:EntropySwitch")
STRATEGIES.add_lazy("sentence-lead", "edgespec.strategies.sentence_lead:SentenceLead")

__all__ = ["STRATEGIES", "GenContext", "Strategy"]
