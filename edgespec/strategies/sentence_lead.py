"""Sentence-leading (lossy): the large model starts each sentence, the small one finishes it.

FoReaL-Decoding ("Follow the Leader", 2025): the first tokens of a sentence steer where it
goes, so the large model writes the first ``lead_tokens`` tokens of each sentence and the
small model completes it. A stochastic gate decides per sentence whether the large model leads
at all: it does with probability ``lead_prob``, drawn from its own generator seeded with
``lead_seed`` (so the gate never disturbs the sampler's random numbers, and seeded runs
repeat exactly).

A sentence ends after a token whose text, with trailing spaces removed, ends in one of
``SENTENCE_END`` (``.``, ``!``, ``?``, a newline); generation starts a sentence. Model
switches, catch-up in one batched forward, composition with speculation (``spec_k``,
default ``"auto"``; a speculative step never drafts past the led tokens left) and the stats
work as in :mod:`edgespec.strategies.two_model`.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.options import Options, at_least, number, option
from edgespec.strategies.two_model import LARGE, SMALL, TwoModelStrategy, spec_k_field
from edgespec.tokenizer import Tokenizer

if TYPE_CHECKING:
    from edgespec.runtime import Runtime

#: characters that end a sentence when a token's text (right-stripped of spaces) ends in one
SENTENCE_END = (".", "!", "?", "\n")

_ENDS: weakref.WeakKeyDictionary[Tokenizer, frozenset[int]] = weakref.WeakKeyDictionary()


def sentence_end_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """Token ids that end a sentence (computed once per tokenizer)."""
    if tokenizer not in _ENDS:
        ends = set()
        for i in range(tokenizer.vocab_size):
            text = tokenizer.decode_bytes([i]).decode("utf-8", errors="ignore").rstrip(" \t")
            if text.endswith(SENTENCE_END):
                ends.add(i)
        _ENDS[tokenizer] = frozenset(ends)
    return _ENDS[tokenizer]


def _token_set(value: Any, name: str) -> frozenset[int] | None:
    return None if value is None else frozenset(int(t) for t in value)


def _probability(value: Any, name: str) -> float:
    p = number(value, name)
    if not 0.0 <= p <= 1.0:
        raise EdgespecError(f"{name} must be in [0, 1], got {value!r}")
    return p


@dataclass(frozen=True)
class LeadConfig(Options):
    """How ``sentence-lead`` shares each sentence between the models.

    Attributes:
        lead_tokens: n, tokens the large model writes at the start of a led sentence (>= 0;
            0 = the small model writes everything).
        lead_prob: probability that the large model leads a given sentence (0..1).
        lead_seed: seed of the gate's own random generator.
        spec_k: speculation while the large model leads, with the small one as draft:
            "auto" (the controller picks k each step), N > 0 (always N draft tokens, fewer
            at the end of the lead) or 0 (one token per large-model forward).
        sentence_ends: token ids that end a sentence; None = derived from the tokenizer.
    """

    kind = "sentence-lead"

    lead_tokens: int = option(
        4, "tokens the large model writes at each sentence start", check=at_least(0)
    )
    lead_prob: float = option(
        1.0, "probability that the large model leads a sentence", check=_probability
    )
    lead_seed: int = option(0, "seed of the lead gate", check=at_least(0))
    spec_k: int | str = spec_k_field()
    sentence_ends: frozenset[int] | None = option(
        None,
        "token ids that end a sentence (default: from the tokenizer)",
        flags=(),
        check=_token_set,
    )


class SentenceLead(TwoModelStrategy):
    """FoReaL-style decoding: the large model leads each (gated) sentence for n tokens."""

    name = "sentence-lead"
    summary = "lossy; the large model writes the first --lead-tokens of each sentence"
    options_class = LeadConfig

    @classmethod
    def complete(cls, runtime: Runtime, options: LeadConfig) -> LeadConfig:
        """Derive the sentence-ending tokens from the tokenizer unless they were given."""
        if options.sentence_ends is not None:
            return options
        return LeadConfig(
            **{**asdict(options), "sentence_ends": sentence_end_ids(runtime.tokenizer)}
        )

    def begin(self) -> None:
        cfg: LeadConfig = self.options
        self.gate = np.random.default_rng(cfg.lead_seed)
        self.in_sentence = 0  # tokens written in the current sentence
        self.led = self._draw_gate()

    def _draw_gate(self) -> bool:
        p = self.options.lead_prob
        return bool(p >= 1.0 or (p > 0.0 and self.gate.random() < p))

    def choose(self, current: str | None) -> str:
        cfg: LeadConfig = self.options
        return LARGE if self.led and self.in_sentence < cfg.lead_tokens else SMALL

    def stretch_limit(self) -> int | None:
        """The led tokens left in this sentence (a new led sentence may follow)."""
        return max(int(self.options.lead_tokens) - self.in_sentence, 1)

    def observe(self, token: int, h: float, role: str) -> None:
        ends = self.options.sentence_ends or frozenset()
        if token in ends:
            self.in_sentence = 0
            self.led = self._draw_gate()
        else:
            self.in_sentence += 1


__all__ = ["SMALL", "LARGE", "LeadConfig", "SentenceLead", "sentence_end_ids"]
