"""Sentence-leading (lossy): the large model starts each sentence, the small one finishes it.

FoReaL-Decoding ("Follow the Leader", 2025): the first tokens of a sentence steer where it
goes, so the large model writes the first ``lead_tokens`` tokens of each sentence and the
small model completes it. A stochastic gate decides per sentence whether the large model leads
at all: it does with probability ``lead_prob``, drawn from its own generator seeded with
``lead_seed`` (so the gate never disturbs the sampler's random numbers, and seeded runs
repeat exactly).

A sentence ends after a token whose text, with trailing spaces removed, ends in one of
``SENTENCE_END`` (``.``, ``!``, ``?``, a newline); generation starts a sentence. Model
switches, catch-up in one batched forward, composition with speculation (``spec_k``) and the
stats work as in :mod:`edgespec.strategies.entropy_switch`.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.strategies.entropy_switch import (
    LARGE,
    SMALL,
    TwoModelStrategy,
    _float,
    _int,
    _known,
    check_pair,
    need_draft_flag,
)
from edgespec.tokenizer import Tokenizer

if TYPE_CHECKING:
    import argparse

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


@dataclass(frozen=True)
class LeadConfig:
    """How ``sentence-lead`` shares each sentence between the models.

    Attributes:
        lead_tokens: n, tokens the large model writes at the start of a led sentence (>= 0;
            0 = the small model writes everything).
        lead_prob: probability that the large model leads a given sentence (0..1).
        lead_seed: seed of the gate's own random generator.
        spec_k: draft length when the large model speculates with the small one as draft
            (0 = one token per forward).
        sentence_ends: token ids that end a sentence; None = derived from the tokenizer.
    """

    lead_tokens: int = 4
    lead_prob: float = 1.0
    lead_seed: int = 0
    spec_k: int = 0
    sentence_ends: frozenset[int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "lead_tokens", _int(self.lead_tokens, "lead_tokens", 0))
        p = _float(self.lead_prob, "lead_prob")
        if not 0.0 <= p <= 1.0:
            raise EdgespecError(f"lead_prob must be in [0, 1], got {self.lead_prob!r}")
        object.__setattr__(self, "lead_prob", p)
        object.__setattr__(self, "lead_seed", _int(self.lead_seed, "lead_seed", 0))
        object.__setattr__(self, "spec_k", _int(self.spec_k, "spec_k", 0))
        if self.sentence_ends is not None:
            object.__setattr__(self, "sentence_ends", frozenset(self.sentence_ends))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sentence_ends"] = None if self.sentence_ends is None else sorted(self.sentence_ends)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LeadConfig:
        return cls(**_known(cls, d, "sentence-lead"))


class SentenceLead(TwoModelStrategy):
    """FoReaL-style decoding: the large model leads each (gated) sentence for n tokens."""

    name = "sentence-lead"

    @classmethod
    def prepare(cls, runtime: Runtime, config: Any) -> LeadConfig:
        cfg = config if isinstance(config, LeadConfig) else LeadConfig.from_dict(dict(config or {}))
        check_pair(runtime, cls.name)
        if cfg.sentence_ends is None:
            cfg = LeadConfig(
                **{**asdict(cfg), "sentence_ends": sentence_end_ids(runtime.tokenizer)}
            )
        return cfg

    @classmethod
    def config_from_args(cls, a: argparse.Namespace) -> dict[str, Any]:
        """``--lead-tokens``, ``--lead-prob``, ``--lead-seed`` and ``--k`` (speculation while
        the large model leads)."""
        need_draft_flag(a, cls.name)
        d: dict[str, Any] = {}
        for flag, key in (
            ("lead_tokens", "lead_tokens"),
            ("lead_prob", "lead_prob"),
            ("lead_seed", "lead_seed"),
            ("k", "spec_k"),
        ):
            if getattr(a, flag, None) is not None:
                d[key] = getattr(a, flag)
        LeadConfig.from_dict(d)
        return d

    def begin(self) -> None:
        cfg: LeadConfig = self.ctx.config
        self.gate = np.random.default_rng(cfg.lead_seed)
        self.in_sentence = 0  # tokens written in the current sentence
        self.led = self._draw_gate()

    def _draw_gate(self) -> bool:
        p = self.ctx.config.lead_prob
        return bool(p >= 1.0 or (p > 0.0 and self.gate.random() < p))

    def choose(self, current: str | None) -> str:
        cfg: LeadConfig = self.ctx.config
        return LARGE if self.led and self.in_sentence < cfg.lead_tokens else SMALL

    def observe(self, token: int, h: float, role: str) -> None:
        ends = self.ctx.config.sentence_ends or frozenset()
        if token in ends:
            self.in_sentence = 0
            self.led = self._draw_gate()
        else:
            self.in_sentence += 1


__all__ = ["SMALL", "LARGE", "LeadConfig", "SentenceLead", "sentence_end_ids"]
