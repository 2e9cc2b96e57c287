"""Token-level and chunk-level activation sparsity (BlockFFN's TLS and CLS).

A block (or neuron) is *active* for a token when its router weight is positive. A chunk of T
consecutive tokens needs the union of its tokens' active blocks: that is what a verify
forward of T tokens must compute. Sparsity is the inactive fraction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
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
        n_blocks: units per layer (E expert blocks, or F neurons for neuron sparsity).
        n_layers: layers.
        forwards: forwards seen per T.
        token_active: per T, ``int64[L]``: summed per-token active unit counts of each layer.
        union_active: per T, ``int64[L]``: summed chunk-union unit counts of each layer (over
            forwards): the units actually computed.
        unions: per T, ``int64[L]``: the unions summed in ``union_active``, one per
            :meth:`record` (a forward longer than a compiled kernel's rows is computed in
            groups, each over its own union: several per forward).
        unit: what a unit is, for messages ("block" or "neuron").
        lossy: the sparse path changes the model's output (training-free thresholds on a
            dense model, or a kernel that quantizes the weights, ``tvm-q8``); False for
            BlockFFN on float weights, whose routers are the model's own.
        trace: None, or a list that every :meth:`record` appends ``(layer, active)`` to
            (:func:`sparsity_curve` reads whole sequences this way).
    """

    n_blocks: int
    n_layers: int
    forwards: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    token_active: dict[int, np.ndarray] = field(default_factory=dict)
    union_active: dict[int, np.ndarray] = field(default_factory=dict)
    unions: dict[int, np.ndarray] = field(default_factory=dict)
    unit: str = "block"
    lossy: bool = False
    trace: list[tuple[int, np.ndarray]] | None = None

    def _row(self, table: dict[int, np.ndarray], T: int) -> np.ndarray:
        if T not in table:
            table[T] = np.zeros(self.n_layers, dtype=np.int64)
        return table[T]

    def record(self, T: int, active: np.ndarray, layer: int) -> None:
        """Add one layer of one forward of T tokens: ``active: bool[T', E]`` of layer
        ``layer``, the T' <= T rows computed over one union (all T, or one group of them)."""
        self._row(self.token_active, T)[layer] += int(active.sum())
        self._row(self.union_active, T)[layer] += int(active.any(axis=0).sum())
        self._row(self.unions, T)[layer] += 1
        if self.trace is not None:
            self.trace.append((layer, np.array(active, dtype=bool)))

    def end_forward(self, T: int) -> None:
        """Count a finished forward of T tokens."""
        self.forwards[T] += 1

    def reset(self) -> None:
        """Forget everything recorded."""
        self.forwards.clear()
        self.token_active.clear()
        self.union_active.clear()
        self.unions.clear()

    def to_dict(self) -> dict[str, Any]:
        """``{"n_blocks", "n_layers", "unit", "by_chunk": {"T": {forwards, token_sparsity,
        chunk_sparsity, blocks_per_forward, token_sparsity_per_layer,
        chunk_sparsity_per_layer}}}``. Sparsities are inactive fractions (chunk sparsity per
        union: a forward computed in groups counts each group's union against all units);
        blocks_per_forward is the units computed by one forward of T tokens, summed over
        layers."""
        by_chunk = {}
        for T in sorted(self.forwards):
            f = self.forwards[T]
            cells = f * self.n_blocks  # per layer
            tok = self._row(self.token_active, T)
            union = self._row(self.union_active, T)
            # each union against all units (one per forward unless computed in groups)
            union_cells = np.maximum(self._row(self.unions, T), 1) * self.n_blocks
            by_chunk[str(T)] = {
                "forwards": f,
                "token_sparsity": 1.0 - float(tok.sum()) / (cells * T * self.n_layers),
                "chunk_sparsity": 1.0 - float(union.sum()) / float(union_cells.sum()),
                "blocks_per_forward": float(union.sum()) / f,
                "token_sparsity_per_layer": (1.0 - tok / (cells * T)).round(4).tolist(),
                "chunk_sparsity_per_layer": (1.0 - union / union_cells).round(4).tolist(),
            }
        return {
            "n_blocks": self.n_blocks,
            "n_layers": self.n_layers,
            "unit": self.unit,
            "lossy": self.lossy,
            "by_chunk": by_chunk,
        }


def summary_lines(d: dict[str, Any]) -> list[str]:
    """What ``--stats`` prints for a :meth:`ForwardSparsity.to_dict`: one line per chunk
    size (token and chunk sparsity, units computed per forward, chunk sparsity per layer)."""
    lines = []
    unit, total = d.get("unit", "block"), d["n_blocks"] * d["n_layers"]
    for T, r in d["by_chunk"].items():
        per_layer = " ".join(f"{x:.2f}" for x in r["chunk_sparsity_per_layer"])
        lines.append(
            f"FFN sparsity T={T} ({r['forwards']} forwards): token {r['token_sparsity']:.3f}, "
            f"chunk {r['chunk_sparsity']:.3f}, {r['blocks_per_forward']:.1f}/{total} "
            f"{unit}s per forward; chunk per layer [{per_layer}]"
        )
    return lines


def sparsity_curve(
    model: Any, ids: Sequence[int], sizes: Sequence[int] = tuple(range(1, 17))
) -> dict[str, Any]:
    """Token- and chunk-level sparsity of a chunk-sparse ``model`` on the sequence ``ids``,
    for each chunk size T in ``sizes``: what a verify chunk of T consecutive tokens of this
    text leaves inactive (``edgespec profile`` plots it).

    ``model`` (one with ``sparsity`` counters and ``fork``) is not changed: a fork runs
    ``ids`` (cut to its cache) once and its per-token active sets are read back.

    Returns:
        ``{"tokens": N, "chunk_sizes": [...], "per_layer": [[sparsity at each T] per layer],
        "mean": [...], "unit": ...}`` (:func:`sparsity_table`; T = 1 is token-level).
    """
    m = model.fork()
    m.reset()
    ids = list(ids)[: max(1, m.n_ctx - 1)] if hasattr(m, "n_ctx") else list(ids)
    m.sparsity.trace = []
    m.forward(ids, all_logits=False)
    trace = m.sparsity.trace
    m.sparsity.trace = None
    per_layer: dict[int, list[np.ndarray]] = defaultdict(list)
    for layer, active in trace:
        per_layer[layer].append(active)
    actives = [np.concatenate(per_layer[li]) for li in sorted(per_layer)]
    usable = [T for T in sizes if T <= len(ids)]
    return {"tokens": len(ids), "unit": m.sparsity.unit, **sparsity_table(actives, tuple(usable))}


#: verify-sized forwards reported by :func:`report_lines` (longer ones are prompts)
REPORT_MAX_T = 16


def merge_by_chunk(dicts: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Several :meth:`ForwardSparsity.to_dict` results (runs of one configuration) pooled per
    chunk size T: ``{T: {forwards, token_sparsity, chunk_sparsity, blocks_per_forward}}``,
    each sparsity weighted by the forwards behind it (every forward of one T covers the same
    number of units)."""
    acc: dict[int, list[float]] = {}
    for d in dicts:
        for key, r in d.get("by_chunk", {}).items():
            f = r["forwards"]
            a = acc.setdefault(int(key), [0.0, 0.0, 0.0, 0.0])
            a[0] += f
            a[1] += f * r["token_sparsity"]
            a[2] += f * r["chunk_sparsity"]
            a[3] += f * r["blocks_per_forward"]
    return {
        T: {
            "forwards": int(f),
            "token_sparsity": tok / f,
            "chunk_sparsity": chunk / f,
            "blocks_per_forward": blocks / f,
        }
        for T, (f, tok, chunk, blocks) in sorted(acc.items())
        if f
    }


def report_lines(per_label: dict[str, list[dict[str, Any]]]) -> list[str]:
    """The "FFN sparsity" section of a bench report: per configuration (``{label: [Stats
    sparsity of each run]}``) and chunk size T <= :data:`REPORT_MAX_T`, the pooled token-
    and chunk-level sparsity and the units computed per forward; [] when no run was sparse."""
    rows = []
    for label, dicts in per_label.items():
        if not dicts:
            continue
        total = dicts[0]["n_blocks"] * dicts[0]["n_layers"]
        unit = dicts[0].get("unit", "block")
        for T, r in merge_by_chunk(dicts).items():
            if T <= REPORT_MAX_T:
                rows.append(
                    f"| {label} | {T} | {r['forwards']} | {r['token_sparsity']:.3f} | "
                    f"{r['chunk_sparsity']:.3f} | {r['blocks_per_forward']:.1f} / {total} "
                    f"{unit}s |"
                )
    if not rows:
        return []
    return [
        "",
        "## FFN sparsity",
        "",
        "Chunk-sparse targets, pooled over runs, per forward size T (1: plain steps, k+1: "
        "verify chunks; prompts left out): token-level sparsity, chunk-level sparsity (units "
        "outside the forward's union) and units computed per forward (all layers).",
        "",
        "| config | T | forwards | token sparsity | chunk sparsity | computed per forward |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
