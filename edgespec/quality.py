"""Quality of a lossy output, measured against the large model.

- :func:`exact_prefix`: how many leading tokens equal the reference (the large model's own
  greedy output).
- :func:`edit_similarity`: ``1 - levenshtein(a, b) / max(len(a), len(b))`` over tokens.
- :func:`mean_nll`: mean negative log-likelihood (nats per token) of the output under a model;
  ``exp`` of it is the perplexity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgespec.model import Model

#: tokens scored per forward by :func:`mean_nll` (bounds the ``[T, V]`` logits in memory)
NLL_CHUNK = 64


def exact_prefix(output: Sequence[int], reference: Sequence[int]) -> int:
    """Length of the longest common prefix of ``output`` and ``reference``."""
    n = 0
    for a, b in zip(output, reference, strict=False):
        if a != b:
            break
        n += 1
    return n


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance over tokens (insert, delete, substitute each cost 1)."""
    if not a or not b:
        return max(len(a), len(b))
    xb = np.asarray(b)
    prev = np.arange(len(b) + 1)
    for i, x in enumerate(a, start=1):
        sub = prev[:-1] + (xb != x)
        cur = np.empty_like(prev)
        cur[0] = i
        cur[1:] = np.minimum(sub, prev[1:] + 1)
        # insertions: cur[j] = min(cur[j], cur[j-1] + 1), a running minimum of cur[j] - j
        cur = np.minimum.accumulate(cur - np.arange(len(cur))) + np.arange(len(cur))
        prev = cur
    return int(prev[-1])


def edit_similarity(output: Sequence[int], reference: Sequence[int]) -> float:
    """``1 - edit_distance / max(len)`` in [0, 1]; 1.0 when both are empty."""
    n = max(len(output), len(reference))
    return 1.0 if n == 0 else 1.0 - edit_distance(output, reference) / n


def mean_nll(model: Model, prompt: Sequence[int], output: Sequence[int]) -> float:
    """Mean negative log-likelihood, nats per token, of ``output`` after ``prompt``.

    Resets the model's cache before and after. ``prompt`` must not be empty.
    """
    if not prompt:
        raise ValueError("mean_nll needs a non-empty prompt")
    if not output:
        return 0.0
    model.reset()
    try:
        last = model.forward(list(prompt), all_logits=False)[-1]
        total = 0.0
        out = list(output)
        for start in range(0, len(out), NLL_CHUNK):
            chunk = out[start : start + NLL_CHUNK]
            rows = np.concatenate([last[None, :], model.forward(chunk, all_logits=True)])
            z = rows[:-1].astype(np.float64)
            z -= z.max(axis=1, keepdims=True)
            logp = z[np.arange(len(chunk)), chunk] - np.log(np.exp(z).sum(axis=1))
            total -= float(logp.sum())
            last = rows[-1]
        return total / len(out)
    finally:
        model.reset()


@dataclass(frozen=True)
class Agreement:
    """How one output compares with the reference.

    Attributes:
        prefix: exact-prefix length in tokens.
        prefix_frac: prefix / len(reference) (1.0 when the reference is empty).
        edit_similarity: token edit similarity in [0, 1].
        nll: mean NLL of the output under the large model (nats/token), or None.
    """

    prefix: int
    prefix_frac: float
    edit_similarity: float
    nll: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def agreement(
    output: Sequence[int],
    reference: Sequence[int],
    *,
    model: Model | None = None,
    prompt: Sequence[int] = (),
) -> Agreement:
    """Compare ``output`` with ``reference``; with ``model`` and ``prompt``, also its NLL."""
    p = exact_prefix(output, reference)
    return Agreement(
        prefix=p,
        prefix_frac=p / len(reference) if reference else 1.0,
        edit_similarity=edit_similarity(output, reference),
        nll=mean_nll(model, prompt, output) if model is not None else None,
    )
