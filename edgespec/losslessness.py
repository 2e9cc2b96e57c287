"""Checking a lossless strategy against plain greedy decoding, near-ties included.

On backends whose batched forward is exact (NumPy reference, ONNX Runtime fp32) a lossless
strategy must reproduce plain greedy decoding token for token. Quantized kernels (llama.cpp)
compute a batch slightly differently from one token at a time, so there the contract is:
identical, or the first divergence is a near-tie, where plain decoding's logits of the two
competing tokens differ by less than the backend's measured batch noise
(:attr:`edgespec.model.Model.batch_noise`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgespec.model import Model
from edgespec.quality import exact_prefix

#: candidates kept per position of a reference run
TOP = 16


@dataclass(frozen=True)
class PlainReference:
    """Plain greedy decoding of one prompt, with the top candidates of every step.

    Attributes:
        tokens: ``int[n]`` the greedy tokens.
        top_ids: ``int[n, TOP]`` best token ids per step, best first.
        top_logits: ``float[n, TOP]`` their logits.
    """

    tokens: list[int]
    top_ids: np.ndarray
    top_logits: np.ndarray

    def gap(self, i: int, token: int) -> tuple[float, bool]:
        """Logit of the greedy token minus that of ``token`` at step i, and whether that is
        exact (True) or only a lower bound (``token`` was not among the top candidates)."""
        hits = np.flatnonzero(self.top_ids[i] == token)
        if hits.size:
            return float(self.top_logits[i, 0] - self.top_logits[i, hits[0]]), True
        return float(self.top_logits[i, 0] - self.top_logits[i, -1]), False


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token, or None when one is a prefix of the other."""
    n = exact_prefix(a, b)
    return None if n == min(len(a), len(b)) else n


def plain_reference(model: Model, prompt: Sequence[int], n: int) -> PlainReference:
    """Plain greedy decoding evaluated exactly as the autoregressive strategy does it
    (prompt in one forward, then one token at a time); the cache is reset afterwards."""
    model.reset()
    logits = model.forward(list(prompt), all_logits=False)[-1]
    tokens, ids, vals = [], [], []
    for step in range(n):
        top = np.argsort(-logits, kind="stable")[:TOP]
        ids.append(top)
        vals.append(logits[top].astype(np.float64))
        tokens.append(int(top[0]))
        if step + 1 < n:
            logits = model.forward([tokens[-1]], all_logits=False)[-1]
    model.reset()
    return PlainReference(tokens, np.stack(ids), np.stack(vals))


@dataclass(frozen=True)
class Check:
    """How one output compares with the plain reference.

    Attributes:
        index: first differing position, or None when identical.
        gap: plain decoding's logit margin there (None when identical).
        near_tie: True when identical or the divergence is within the batch noise.
    """

    index: int | None
    gap: float | None
    near_tie: bool


def check(tokens: Sequence[int], ref: PlainReference, batch_noise: float) -> Check:
    """Compare ``tokens`` with ``ref`` under the near-tie rule."""
    i = first_divergence(tokens, ref.tokens)
    if i is None:
        return Check(None, None, True)
    gap, exact = ref.gap(i, int(tokens[i]))
    return Check(i, gap, exact and gap < batch_noise)
