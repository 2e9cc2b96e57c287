"""The values passed between proposer, target and verifier."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Draft:
    """Proposed continuation tokens, as a chain or a tree.

    Attributes:
        tokens: ``int[k]`` drafted token ids. For a tree, nodes in topological order
            (every parent before its children).
        parents: ``None`` for a chain; for a tree, ``int[k]`` where ``parents[i]`` is the index
            of node i's parent in ``tokens``, or -1 when its parent is the root (the last
            committed token, which the target scores first).
        draft_probs: ``float64[k, V]`` or None. Row i is the distribution node i was drawn
            from (the proposer's, after the same temperature/top-k/top-p as the target).
            None means the proposer is deterministic (n-gram lookup, recycling); verifiers
            then treat each token as a point mass, which is still lossless.
        source: the proposer's registry name.
        forwards: forward calls the proposer ran on a draft model to make it (the
            ``--draft`` model or a layer-skip self-draft; 0 for lookups such as n-gram).
            Strategies add it to ``stats.draft_forwards``.
        catchup_s: seconds of the call the proposer spent catching its own state up on
            committed tokens it had not seen, beyond what a speculative step leaves behind
            (a draft model's batched forward over the prompt or after plain steps; its first
            drafted token came out of that forward). Not what drafting costs per token:
            the controller learns that from the rest of the call.
    """

    tokens: tuple[int, ...]
    parents: tuple[int, ...] | None = None
    draft_probs: np.ndarray | None = None
    source: str = ""
    forwards: int = 0
    catchup_s: float = 0.0

    def __post_init__(self) -> None:
        if self.parents is not None and len(self.parents) != len(self.tokens):
            raise ValueError("parents must have one entry per token")
        if self.parents is not None:
            for i, p in enumerate(self.parents):
                if not -1 <= p < i:
                    raise ValueError(f"node {i} has parent {p}; parents must come first")

    @property
    def k(self) -> int:
        return len(self.tokens)

    @property
    def is_tree(self) -> bool:
        return self.parents is not None

    def chain_parents(self) -> tuple[int, ...]:
        """``parents`` as a tree, also for a chain (``[-1, 0, 1, ...]``)."""
        return self.parents if self.parents is not None else tuple(range(-1, self.k - 1))

    def depths(self) -> list[int]:
        """Depth of each node (1 for children of the root)."""
        d: list[int] = []
        for p in self.chain_parents():
            d.append(1 if p < 0 else d[p] + 1)
        return d

    def children(self, node: int) -> list[int]:
        """Indices of the children of ``node`` (-1 = root), in order."""
        return [i for i, p in enumerate(self.chain_parents()) if p == node]


@dataclass(frozen=True)
class Verdict:
    """What the verifier kept.

    Attributes:
        path: indices into ``Draft.tokens`` of the accepted nodes, root to leaf.
        tokens: the accepted draft tokens followed by the bonus token (``len(path) + 1``).
    """

    path: tuple[int, ...]
    tokens: tuple[int, ...]

    @property
    def n_accepted(self) -> int:
        return len(self.path)

    @property
    def bonus_token(self) -> int:
        return self.tokens[-1]


EMPTY_DRAFT = Draft(tokens=())
