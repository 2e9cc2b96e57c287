"""Speculative-decoding options, one dataclass that round-trips through JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from edgespec.errors import EdgespecError


@dataclass(frozen=True)
class SpecConfig:
    """How to speculate.

    Attributes:
        proposers: proposer names the controller may choose from each step; None: the
            strategy's default (``speculative``: ngram; ``auto``: ngram, recycle and, when
            loaded, the draft model).
        k: fixed draft length; None lets the controller choose k in 0..max_k per step.
        max_k: the largest draft length (tree: node count) the controller considers.
        allow_plain: let the controller pick k = 0 (plain decoding) when it is faster.
            Always True for strategy "auto".
        ngram_min: shortest suffix the n-gram proposer matches.
        ngram_max: longest suffix the n-gram proposer tries first.
        recycle_topk: candidates per token in the recycling adjacency table.
        layerskip_layers: layer spec of the layer-skip self-draft ("first:N", "skip:A-B",
            "keep:..."; None skips the middle half).
        min_confidence: a model draft stops early when its top probability falls below this
            (adaptive draft length; 0 disables).
        probe_every: after this many plain steps, try the best proposer once with a short
            draft so acceptance estimates stay fresh (0 disables).
        tree: let proposers that can build token trees do so (needs a tree-capable backend).
    """

    proposers: tuple[str, ...] | None = None
    k: int | None = None
    max_k: int = 8
    allow_plain: bool = True
    ngram_min: int = 1
    ngram_max: int = 4
    recycle_topk: int = 4
    layerskip_layers: str | int | None = None
    min_confidence: float = 0.3
    probe_every: int = 24
    tree: bool = True

    def __post_init__(self) -> None:
        if self.k is not None and self.k < 0:
            raise EdgespecError(f"--k must be >= 0, got {self.k}")
        if self.max_k < 1 or self.max_k > 64:
            raise EdgespecError(f"max_k must be in 1..64, got {self.max_k}")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise EdgespecError(
                f"need 1 <= ngram_min <= ngram_max, got {self.ngram_min}, {self.ngram_max}"
            )
        if not math.isfinite(self.min_confidence) or not 0 <= self.min_confidence < 1:
            raise EdgespecError(f"min_confidence must be in [0, 1), got {self.min_confidence}")
        if self.proposers is not None:
            if not self.proposers:
                raise EdgespecError("speculation needs at least one proposer")
            object.__setattr__(self, "proposers", tuple(self.proposers))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["proposers"] = None if self.proposers is None else list(self.proposers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpecConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise EdgespecError(f"unknown speculative option(s): {', '.join(unknown)}")
        return cls(**d)
