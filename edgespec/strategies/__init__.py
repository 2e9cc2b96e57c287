"""Decoding strategies: one registry, one file per strategy.

A strategy turns a prompt into *steps*: each step is the list of new tokens one target
forward produced (one for plain decoding, up to k+1 for speculation). The engine
(:mod:`edgespec.engine`) consumes steps, applies EOS, stop strings and limits, and closes the
generator when done, so a strategy never does work past what is consumed.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.model import Model
from edgespec.options import Flag, Options, collect_flags
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
    """Base class. Subclasses set ``name`` (and ``lossy``, ``options_class``) and implement
    :meth:`steps`."""

    name: ClassVar[str]
    lossy: ClassVar[bool] = False
    #: the strategy's options (None: it takes none); their fields make the CLI flags and
    #: the bench spec syntax (:mod:`edgespec.options`)
    options_class: ClassVar[type[Options] | None] = None
    #: one line for ``--help``
    summary: ClassVar[str] = ""

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
        is loaded; one-line :class:`EdgespecError` on a problem."""
        if cls.options_class is not None:
            cls.options_class.from_dict(options)
        elif options:
            raise EdgespecError(
                f"strategy '{cls.name}' takes no options, got {', '.join(sorted(options))}"
            )

    @classmethod
    def check_args(cls, a: argparse.Namespace, options: dict[str, Any]) -> None:
        """Checks of the command line beyond the options themselves (a needed ``--draft``),
        before any model is loaded. Default: none."""
        return None

    @abstractmethod
    def steps(self, prompt_ids: list[int]) -> Iterator[list[int]]:
        """Prefill ``prompt_ids`` into an empty cache, then yield new tokens step by step."""


def option_classes() -> dict[str, type[Options] | None]:
    """{strategy name: its options class} for every registered strategy (imports them)."""
    return {name: STRATEGIES.get(name).options_class for name in STRATEGIES.names()}


def option_flags() -> list[Flag]:
    """The command-line flags of every registered strategy's options, merged by spelling."""
    return collect_flags(option_classes())


STRATEGIES: Registry[type[Strategy]] = Registry("strategy")
STRATEGIES.add_lazy("autoregressive", "edgespec.strategies.autoregressive:Autoregressive")
STRATEGIES.add_lazy("speculative", "edgespec.strategies.speculative:Speculative")
STRATEGIES.add_lazy("auto", "edgespec.strategies.speculative:Auto")
STRATEGIES.add_lazy("entropy-switch", "edgespec.strategies.entropy_switch:EntropySwitch")
STRATEGIES.add_lazy("sentence-lead", "edgespec.strategies.sentence_lead:SentenceLead")

__all__ = ["STRATEGIES", "GenContext", "Strategy", "option_classes", "option_flags"]
