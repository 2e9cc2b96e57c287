"""Verifiers: which draft tokens the target keeps, and the bonus token it adds.

Names follow the papers: ``q`` is the target's distribution (after temperature, top-k and
top-p, via :func:`edgespec.sampling.target_probs`), ``p`` the draft's, ``x`` a drafted token.

- :class:`GreedyVerifier`: keep drafted tokens while they equal the target's argmax.
- :class:`ChainRejectionVerifier`: speculative sampling for a chain (Leviathan et al. 2023,
  Algorithm 1; Chen et al. 2023).
- :class:`TreeRejectionVerifier`: the same step applied to each candidate child of a tree
  node in turn (SpecInfer's multi-step speculative sampling, Miao et al. 2024; cf. SpecTr,
  Sun et al. 2023, and Recursive Speculative Decoding, Jeon et al. 2024).

Every random draw comes from the ``rng`` passed in, in a fixed order, so seeded runs repeat
bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from edgespec.sampling import GenerationParams, draw, target_probs
from edgespec.speculative.base import Verifier
from edgespec.speculative.types import Draft, Verdict

# --- shared helpers -----------------------------------------------------------------------


def _check_rows(draft: Draft, target_logits: np.ndarray) -> None:
    """The target must score the root and every node: ``target_logits`` is ``float[k + 1, V]``."""
    if target_logits.ndim != 2 or target_logits.shape[0] < draft.k + 1:
        raise ValueError(
            f"target_logits must have shape [k + 1, V] = [{draft.k + 1}, V], "
            f"got {tuple(target_logits.shape)}"
        )


def _children(draft: Draft) -> list[list[int]]:
    """``children[node + 1]``: the children of ``node`` (-1 = root), in draft order."""
    kids: list[list[int]] = [[] for _ in range(draft.k + 1)]
    for i, parent in enumerate(draft.chain_parents()):
        kids[parent + 1].append(i)
    return kids


def _point_mass(x: int, v: int) -> np.ndarray:
    """``float64[V]`` one-hot at ``x``: the "distribution" of a deterministic draft token."""
    p = np.zeros(v, dtype=np.float64)
    p[x] = 1.0
    return p


def _residual(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """``norm(max(0, q - p))``, ``float64[V]``: what to sample from after a rejection.

    Its mass is zero only when ``q == p``, where rejection cannot happen; rounding aside,
    fall back to ``q`` then.
    """
    r = np.maximum(q - p, 0.0)
    total = r.sum()
    return r / total if total > 0 else q


def _speculative_step(
    q: np.ndarray, p: np.ndarray, x: int, rng: np.random.Generator
) -> np.ndarray | None:
    """One step of Algorithm 1 (Leviathan et al. 2023) for a draft token ``x ~ p``.

    Accept ``x`` with probability ``min(1, q(x) / p(x))``: returns None. Otherwise returns the
    residual ``norm(max(0, q - p))``. Every output token then has probability
    ``min(p, q) + max(0, q - p) = q``. When ``q(x) == 0`` the rejection is certain and no
    random number is drawn.

    Args:
        q: ``float64[V]`` target distribution; p: ``float64[V]`` draft distribution.
    """
    if q[x] > 0 and rng.random() < min(1.0, q[x] / p[x] if p[x] > 0 else 1.0):
        return None
    return _residual(q, p)


def _draft_dist(draft: Draft, i: int, v: int) -> np.ndarray:
    """``p`` for node i, ``float64[V]``: its ``draft_probs`` row, or a point mass at its token."""
    if draft.draft_probs is None:
        return _point_mass(draft.tokens[i], v)
    return draft.draft_probs[i]


def _verdict(draft: Draft, path: Sequence[int], bonus: int) -> Verdict:
    return Verdict(path=tuple(path), tokens=(*(draft.tokens[i] for i in path), bonus))


# --- verifiers ----------------------------------------------------------------------------


class GreedyVerifier(Verifier):
    """Greedy verification of a chain or a tree; ignores the sampling parameters.

    From the root, follow the child whose token is the target's argmax (``numpy.argmax``: the
    first maximum, as :func:`edgespec.sampling.sample`); the bonus token is the argmax after the
    last accepted node. The output equals plain greedy decoding exactly.
    """

    name: ClassVar[str] = "greedy"

    def verify(
        self,
        draft: Draft,
        target_logits: np.ndarray,
        params: GenerationParams,
        rng: np.random.Generator,
    ) -> Verdict:
        _check_rows(draft, target_logits)
        kids = _children(draft)
        node = -1
        path: list[int] = []
        while True:
            t = int(np.argmax(target_logits[node + 1]))
            nxt = next((c for c in kids[node + 1] if draft.tokens[c] == t), None)
            if nxt is None:
                return _verdict(draft, path, t)
            path.append(nxt)
            node = nxt


class ChainRejectionVerifier(Verifier):
    """Speculative sampling of a chain: Leviathan et al. 2023, "Fast Inference from
    Transformers via Speculative Decoding", Algorithm 1; Chen et al. 2023, "Accelerating Large
    Language Model Decoding with Speculative Sampling".

    For i = 0..k-1, accept ``x_i`` with probability ``min(1, q_i(x_i) / p_i(x_i))``; at the first
    rejection, sample the replacement from ``norm(max(0, q_i - p_i))`` and stop. If all k are
    accepted, the bonus token is sampled from ``q_k``. ``p_i`` is ``draft.draft_probs[i]``, or a
    point mass at ``x_i`` for a deterministic drafter (then ``x_i`` is accepted with probability
    ``q_i(x_i)`` and the replacement comes from ``q_i`` without ``x_i``). Each output token is
    distributed exactly as ``q`` (Leviathan et al., Theorem 3.5). With greedy parameters ``q`` is
    one-hot at the argmax, and the result equals :class:`GreedyVerifier`'s.
    """

    name: ClassVar[str] = "chain"

    def verify(
        self,
        draft: Draft,
        target_logits: np.ndarray,
        params: GenerationParams,
        rng: np.random.Generator,
    ) -> Verdict:
        if draft.chain_parents() != tuple(range(-1, draft.k - 1)):
            raise ValueError("ChainRejectionVerifier verifies chains; use 'tree' for trees")
        _check_rows(draft, target_logits)
        v = target_logits.shape[1]
        for i, x in enumerate(draft.tokens):
            q = target_probs(target_logits[i], params)
            residual = _speculative_step(q, _draft_dist(draft, i, v), x, rng)
            if residual is not None:
                return _verdict(draft, range(i), draw(residual, rng))
        return _verdict(
            draft, range(draft.k), draw(target_probs(target_logits[draft.k], params), rng)
        )


class TreeRejectionVerifier(Verifier):
    """Lossless verification of a tree, or of several drafts sharing a root.

    Multi-step speculative sampling (Miao et al. 2024, "SpecInfer"), in the spirit
    of SpecTr (Sun et al. 2023) and Recursive Speculative Decoding (Jeon et al. 2024): at the
    current node, with target distribution ``q``, try its children in order with the chain step
    of :class:`ChainRejectionVerifier`, replacing ``q`` by the residual after each rejection.

    - A node with a single child uses that child's ``draft_probs`` row as ``p`` when there is one
      (the Leviathan step; the child must then be a draw from that row).
    - Otherwise each candidate ``c`` is a point mass: it is accepted with probability ``q(c)``;
      on rejection ``q(c)`` is set to 0 and ``q`` renormalised. Duplicates, and children whose
      ``q`` is already 0, are rejected at once.

    When a child is accepted, move to it and repeat with its target row. When all children are
    rejected (or there are none), the bonus token is drawn from the current ``q``.

    Why this is exact. Let ``q_0 = q`` and ``q_j`` be ``q_{j-1}`` with candidate ``c_j`` removed
    and renormalised; from stage j on, the output token is distributed as ``q_{j-1}``. That holds
    at the end (the bonus is drawn from ``q_m``), and if it holds for stage j + 1 then at stage j
    token ``c_j`` comes out with probability ``q_{j-1}(c_j)`` and any other ``y`` with
    ``(1 - q_{j-1}(c_j)) * q_j(y) = q_{j-1}(y)``. So the token leaving the node is distributed
    as ``q`` whatever the candidates are, provided they were chosen independently of the
    verifier's random numbers (they may depend on the drafter's own randomness in any way).
    A lone child drawn from ``p`` is covered by the same argument with ``p`` in place of the
    point mass (Leviathan et al. 2023, Theorem 3.5).
    A child's subtree is then verified against the target's distribution given that child, so by
    the chain rule the whole output is distributed as sampling the target token by token.
    """

    name: ClassVar[str] = "tree"

    def verify(
        self,
        draft: Draft,
        target_logits: np.ndarray,
        params: GenerationParams,
        rng: np.random.Generator,
    ) -> Verdict:
        _check_rows(draft, target_logits)
        kids, v = _children(draft), target_logits.shape[1]
        node = -1
        path: list[int] = []
        while True:
            q = target_probs(target_logits[node + 1], params)
            children = kids[node + 1]
            accepted: int | None = None
            for c in children:
                x = draft.tokens[c]
                p = _draft_dist(draft, c, v) if len(children) == 1 else _point_mass(x, v)
                residual = _speculative_step(q, p, x, rng)
                if residual is None:
                    accepted = c
                    break
                q = residual
            if accepted is None:
                return _verdict(draft, path, draw(q, rng))
            path.append(accepted)
            node = accepted
