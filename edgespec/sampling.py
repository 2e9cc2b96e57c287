"""Generation parameters and the logits -> token step.

Greedy when ``temperature == 0``; otherwise temperature, then top-k, then top-p (nucleus)
filtering, then a draw from a seeded ``numpy.random.Generator``. :func:`target_probs` exposes
the processed distribution, which rejection sampling needs as ``q``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgespec.errors import EdgespecError


@dataclass(frozen=True)
class GenerationParams:
    """What to generate.

    Attributes:
        max_new_tokens: upper bound on new tokens (>= 1).
        temperature: 0 for greedy decoding; > 0 samples from softmax(logits / temperature).
        top_k: keep only the k most likely tokens before sampling (0 = off).
        top_p: keep the smallest set of tokens whose probability reaches p (1.0 = off).
        seed: seed for the sampler; the same seed repeats a run exactly. None = random.
        stop: strings that end generation; the returned text stops before them.
        ignore_eos: keep generating past end-of-sequence tokens (benchmarks use this).
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens <= 0:
            raise EdgespecError(
                f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}"
            )
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise EdgespecError(f"temperature must be >= 0, got {self.temperature!r}")
        if self.top_k < 0:
            raise EdgespecError(f"top_k must be >= 0, got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise EdgespecError(f"top_p must be in (0, 1], got {self.top_p!r}")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenerationParams:
        d = dict(d)
        d["stop"] = tuple(d.get("stop", ()))
        return cls(**d)


def target_probs(logits: np.ndarray, params: GenerationParams) -> np.ndarray:
    """The distribution the sampler draws from.

    Args:
        logits: ``float[V]`` for one position.
    Returns:
        ``float64[V]`` probabilities, summing to 1; one-hot at the argmax when greedy.
    """
    v = logits.shape[-1]
    if params.greedy:
        p = np.zeros(v, dtype=np.float64)
        p[int(np.argmax(logits))] = 1.0
        return p
    z = logits.astype(np.float64) / params.temperature
    if 0 < params.top_k < v:
        kth = np.partition(z, -params.top_k)[-params.top_k]
        z = np.where(z < kth, -np.inf, z)
    z -= z.max()
    p = np.exp(z)
    p /= p.sum()
    if params.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, params.top_p)) + 1]
        mask = np.zeros(v, dtype=bool)
        mask[keep] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return p


def softmax(logits: np.ndarray) -> np.ndarray:
    """``float64[V]`` softmax at temperature 1 (a draft's confidence, even when greedy)."""
    z = logits.astype(np.float64)
    z -= z.max()
    e = np.exp(z)
    return e / e.sum()


def entropy(logits: np.ndarray) -> float:
    """Entropy in nats of ``softmax(logits)`` at temperature 1 (``logits``: ``float[V]``)."""
    z = logits.astype(np.float64)
    z = z - z.max()
    e = np.exp(z)
    s = e.sum()
    p = e / s
    # H = log(s) - sum(p * z), stable where p underflows to 0
    return float(math.log(s) - float(np.dot(p, z)))


def confidence_probs(logits: np.ndarray, params: GenerationParams) -> np.ndarray:
    """The distribution whose mass says how sure a draft is: the sampling distribution, or
    the plain softmax when decoding greedily (where the sampling one is one-hot)."""
    return softmax(logits) if params.greedy else target_probs(logits, params)


def sample(logits: np.ndarray, params: GenerationParams, rng: np.random.Generator) -> int:
    """One token id from ``logits`` (``float[V]``)."""
    if params.greedy:
        return int(np.argmax(logits))
    return draw(target_probs(logits, params), rng)


def draw(p: np.ndarray, rng: np.random.Generator) -> int:
    """Inverse-CDF draw from ``p`` (``float64[V]``), robust to rounding at the top end."""
    cdf = np.cumsum(p)
    u = rng.random() * cdf[-1]
    return int(min(np.searchsorted(cdf, u, side="right"), len(p) - 1))
