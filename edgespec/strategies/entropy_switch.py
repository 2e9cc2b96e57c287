"""Entropy Adaptive Decoding: switch between a small and a large model by uncertainty (lossy).

EAD (Simonds et al. 2025, "Entropy Adaptive Decoding: Dynamic Model Switching for Efficient
Inference", arXiv 2502.06833): the small model generates while the rolling mean entropy
``H̄`` of the next-token distribution over the last ``w`` tokens stays at or below ``τ``; when
it rises above ``τ`` the large model takes over, and hands back once ``H̄ <= τ`` again. A
switch happens only after at least ``d_min`` (``min_run``) tokens on the current model.

Details that make the rule exact and cheap:

- ``H_t`` is the entropy, in nats, of ``softmax(logits)`` (temperature 1) of the model that
  produced token t, so no extra forward is ever run just to measure entropy.
- Before the first token nothing has run: the small model prefills the prompt and its first
  distribution alone decides who starts (``H_0 > τ``: the large model). So ``τ = +inf`` is
  exactly the small model's decoding and ``τ = -inf`` exactly the large model's.
- Catch-up in one batched forward, hand-overs at exact tokens, composition with speculation
  (``spec_k``, default ``"auto"``: the speculative engine's controller picks the draft length
  while the large model is in charge) and the stats are those of
  :mod:`edgespec.strategies.two_model`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from edgespec.options import Options, at_least, number, option
from edgespec.sampling import entropy
from edgespec.strategies.two_model import LARGE, SMALL, TwoModelStrategy, spec_k_field


@dataclass(frozen=True)
class SwitchConfig(Options):
    """How ``entropy-switch`` decides which model writes the next token.

    Attributes:
        tau: entropy threshold τ in nats; +inf = small model only, -inf = large model only.
        window: w, the number of most recent tokens whose entropies are averaged (>= 1).
        min_run: d_min, tokens the current model writes before a switch is allowed (>= 1).
        spec_k: speculation while the large model is in charge, with the small one as draft:
            "auto" (the controller picks k in 0..8 each step), N > 0 (always N draft tokens)
            or 0 (one token per large-model forward).
    """

    kind = "entropy-switch"

    tau: float = option(
        1.5,
        "entropy threshold in nats (inf: small model only, -inf: large model only)",
        check=number,
        dump=lambda t: str(t) if math.isinf(t) else t,  # JSON has no infinity
    )
    window: int = option(4, "tokens in the rolling entropy mean", check=at_least(1))
    min_run: int = option(4, "tokens on a model before it may hand over", check=at_least(1))
    spec_k: int | str = spec_k_field()


class EntropySwitch(TwoModelStrategy):
    """EAD: the small model writes while the window's mean entropy stays <= τ."""

    name = "entropy-switch"
    summary = "lossy; the small --draft model writes while its entropy stays <= --tau"
    options_class = SwitchConfig

    def begin(self) -> None:
        self.run = 0
        self.hs: list[float] = []

    def window_mean(self) -> float:
        w = self.hs[-self.options.window :]
        return sum(w) / len(w)

    def choose(self, current: str | None) -> str:
        cfg: SwitchConfig = self.options
        if current is None:
            return LARGE if self._h0 > cfg.tau else SMALL
        if self.run < cfg.min_run:
            return current
        want = LARGE if self.window_mean() > cfg.tau else SMALL
        if want != current:
            self.run = 0
        return want

    def observe(self, token: int, h: float, role: str) -> None:
        self.run += 1
        self.hs.append(h)


__all__ = ["LARGE", "SMALL", "EntropySwitch", "SwitchConfig", "entropy"]
