"""Token-level and chunk-level activation sparsity (BlockFFN's TLS and CLS).

A block (or neuron) is *active* for a token when its router weight is positive. A chunk of T
consecutive tokens needs the union of its tokens' active blocks: that is what a verify
forward of T tokens must compute. Sparsity is the inactive fraction.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def chunk_active_fraction(active: np.ndarray, T: int) -> float:
    """Mean active fraction of the union over consecutive, non-overlapping chunks of T tokens.

    Args:
        active: ``bool[N, E]`` one row per token of a sequence, in order.
        T: chunk size (1 gives the token-level active fraction). A last partial chunk is
            dropped, so every union covers exactly T tokens.

    Returns:
        the fraction of the E units in a chunk's union, averaged over the ``N // T`` chunks.
    """
    n = (active.shape[0] // T) * T
    if n == 0:
        raise ValueError(f"need at least {T} tokens for chunks of {T}, got {active.shape[0]}")
    union = active[:n].reshape(n // T, T, -1).any(axis=1)
    return float(union.mean())


def sparsity_table(
    actives: list[np.ndarray], chunk_sizes: tuple[int, ...] = (1, 2, 4, 8)
) -> dict[str, Any]:
    """Sparsity per layer and per chunk size of one sequence.

    Args:
        actives: one ``bool[N, E]`` per layer (see :func:`chunk_active_fraction`).
        chunk_sizes: the T to report.

    Returns:
        ``{"chunk_sizes": [...], "per_layer": [[sparsity at each T] per layer],
        "mean": [mean over layers at each T]}``; sparsity = 1 - active fraction.
    """
    per_layer = [[1.0 - chunk_active_fraction(a, T) for T in chunk_sizes] for a in actives]
    mean = np.mean(np.asarray(per_layer), axis=0).tolist() if per_layer else []
    return {"chunk_sizes": list(chunk_sizes), "per_layer": per_layer, "mean": mean}


@dataclass
class ForwardSparsity:
    """What the sparse FFN computed, accumulated over forwards, keyed by chunk size T.

    Attributes:
        n_blocks: expert blocks per layer (E).
        n_layers: layers.
        forwards: forwards seen per T.
        token_active: summed per-token active block counts per T (over tokens and layers).
        union_active: summed chunk-union block counts per T (over forwards and layers): the
            blocks actually computed.
    """

    n_blocks: int
    n_layers: int
    forwards: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    token_active: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    union_active: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    def record(self, T: int, active: np.ndarray) -> None:
        """Add one layer of one forward: ``active: bool[T, E]``."""
        self.token_active[T] += int(active.sum())
        self.union_active[T] += int(active.any(axis=0).sum())

    def end_forward(self, T: int) -> None:
        """Count a finished forward of T tokens."""
        self.forwards[T] += 1

    def reset(self) -> None:
        """Forget everything recorded."""
        self.forwards.clear()
        self.token_active.clear()
        self.union_active.clear()

    def to_dict(self) -> dict[str, Any]:
        """``{"n_blocks", "n_layers", "by_chunk": {T: {forwards, token_sparsity,
        chunk_sparsity, blocks_per_forward}}}``; blocks_per_forward sums over layers."""
        by_chunk = {}
        for T in sorted(self.forwards):
            f = self.forwards[T]
            cells = f * self.n_layers * self.n_blocks
            by_chunk[str(T)] = {
                "forwards": f,
                "token_sparsity": 1.0 - self.token_active[T] / (cells * T),
                "chunk_sparsity": 1.0 - self.union_active[T] / cells,
                "blocks_per_forward": self.union_active[T] / f,
            }
        return {"n_blocks": self.n_blocks, "n_layers": self.n_layers, "by_chunk": by_chunk}
