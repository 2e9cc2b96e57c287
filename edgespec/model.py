"""The backend-neutral model interface every runtime implements.

A :class:`Model` owns one KV cache. ``forward`` appends T tokens to the cache and returns the
next-token logits for each of them; ``truncate`` drops cached positions so that speculative
decoding can roll back rejected draft tokens.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgespec.errors import EdgespecError

if TYPE_CHECKING:
    from edgespec.tokenizer import Tokenizer


@dataclass(frozen=True)
class ModelInfo:
    """Architecture facts about a loaded model.

    Attributes:
        arch: architecture family as GGUF names it ("llama", "qwen2", "gemma3").
        n_layers: number of transformer blocks.
        hidden_size: model width (embedding length).
        vocab_size: number of logits per position (V).
        context_length: the longest sequence the model supports, in tokens.
        source: where the weights came from (path or zoo name), for stats and manifests.
        extra: backend-specific facts (quantization, file type, ...).
    """

    arch: str
    n_layers: int
    hidden_size: int
    vocab_size: int
    context_length: int
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Model(ABC):
    """One model instance with its own KV cache.

    Subclasses implement :meth:`forward`, :meth:`truncate` and :attr:`n_past`.

    Attributes:
        info: architecture facts.
        backend: registry name of the backend that made this model ("numpy", "llamacpp", ...).
    """

    info: ModelInfo
    backend: str = ""
    #: a draft's frequent-token head (:mod:`edgespec.draft_head`): the distinct ids
    #: ``int64[N]`` whose logits ``forward`` computes, in output-row order; every other
    #: logit is ``-inf``. None: the full vocabulary.
    head_ids: np.ndarray | None = None

    def own_tokenizer(self) -> Tokenizer | None:
        """A tokenizer reading the vocabulary this model already loaded (the llamacpp
        backend's, shared rather than built twice), or None: the source's own is loaded."""
        return None

    @property
    def takes_head(self) -> bool:
        """True when :meth:`with_head` can narrow this model."""
        return False

    def with_head(self, ids: np.ndarray, slots: int = 0) -> Model:
        """A frequent-token draft head (:mod:`edgespec.draft_head`): a model sharing this
        one's weights whose output layer computes the logits of ``ids`` only (the others
        ``-inf``), with its own empty KV cache.

        Args:
            ids: distinct token ids ``int64[N]``.
            slots: the last ``slots`` of ``ids`` are prompt slots, fillers that
                :meth:`fit_head` replaces with a prompt's tokens the others lack.
        Raises:
            EdgespecError: the backend has no such head.
        """
        raise EdgespecError(
            f"backend '{self.backend}' has no frequent-token draft head; drop draft_head or "
            "load the draft with --draft-backend tvm"
        )

    def fit_head(self, prompt: Sequence[int]) -> int:
        """Put ``prompt``'s tokens that a head with prompt slots lacks into its slots (most
        frequent in the prompt first, then most recent), so that the draft can copy them;
        slots left over keep their fillers. A model without slots does nothing.

        Args:
            prompt: the token ids a generation starts from.
        Returns:
            the prompt tokens now in slots (0 without slots).
        """
        return 0

    @property
    @abstractmethod
    def n_past(self) -> int:
        """Number of positions currently held in the KV cache."""

    @abstractmethod
    def forward(self, tokens: Sequence[int], *, all_logits: bool = True) -> np.ndarray:
        """Append ``tokens`` to the cache and score them.

        Args:
            tokens: T >= 1 new token ids, placed at positions ``n_past .. n_past+T-1``.
            all_logits: if True, return logits for every new position; if False, only for
                the last one (what plain decoding needs; some backends compute less).

        Returns:
            ``float32[T, V]`` (or ``float32[1, V]`` when ``all_logits`` is False): row i is
            the distribution over the token that follows ``tokens[i]``.
        """

    @abstractmethod
    def truncate(self, length: int) -> None:
        """Keep only the first ``length`` cached positions (0 <= length <= n_past)."""

    #: True when :meth:`forward_tree` and :meth:`commit_tree_path` are implemented.
    supports_tree: bool = False

    def forward_tree(self, tokens: Sequence[int], parents: Sequence[int]) -> np.ndarray:
        """Score a token tree in one forward (tree attention).

        Args:
            tokens: T node tokens in topological order.
            parents: ``int[T]``; ``parents[i]`` is the batch index of node i's parent, or -1
                when its parent is the last cached position. Node i sits at position
                ``n_past + depth(i) - 1`` and attends to the cache and its ancestors only.

        Returns:
            ``float32[T, V]``: row i is the distribution after node i given its ancestors.
            All T nodes are appended to the cache until :meth:`commit_tree_path`.
        """
        raise NotImplementedError(f"backend '{self.backend}' cannot verify token trees")

    def commit_tree_path(self, base: int, path: Sequence[int]) -> None:
        """After :meth:`forward_tree` at cache length ``base``, keep only the nodes ``path``.

        ``path`` holds batch indices, root to leaf; afterwards ``n_past == base + len(path)``.
        """
        raise NotImplementedError(f"backend '{self.backend}' cannot verify token trees")

    def rollback(self, n: int) -> None:
        """Drop the last ``n`` cached positions."""
        if n < 0 or n > self.n_past:
            raise ValueError(f"cannot roll back {n} of {self.n_past} cached positions")
        self.truncate(self.n_past - n)

    def reset(self) -> None:
        """Empty the cache."""
        self.truncate(0)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release native resources. Safe to call twice."""

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SlotCacheModel(Model):
    """A model whose KV cache is preallocated slots ``0 .. n_ctx-1`` of which the first
    ``n_past`` are valid: ``truncate`` only moves the count (the NumPy and TVM models)."""

    _n_past: int = 0

    @property
    def n_past(self) -> int:
        """Number of positions currently held in the KV cache."""
        return self._n_past

    def truncate(self, length: int) -> None:
        """Keep only the first ``length`` cached positions (0 <= length <= n_past)."""
        check_truncate(length, self._n_past)
        self._n_past = int(length)


def check_truncate(length: int, n_past: int) -> None:
    """Shared argument check for :meth:`Model.truncate` implementations."""
    if not 0 <= length <= n_past:
        raise ValueError(f"truncate({length}) is outside the cache (0..{n_past})")


def tree_ancestors(parents: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Validate a token tree's ``parents`` and return ``(anc, depth)``.

    Args:
        parents: ``int[T]``; node i's parent is an earlier node index, or -1 (the cache).

    Returns:
        ``anc bool[T, T]`` (``anc[i, j]``: j is i or an ancestor of i) and ``depth int64[T]``
        (1 for children of the cache).

    Raises:
        ValueError: an empty tree, or a parent that is not an earlier node or -1.
    """
    par = [int(p) for p in parents]
    t = len(par)
    if t == 0 or any(not -1 <= p < i for i, p in enumerate(par)):
        raise ValueError("parents must list, for each node, an earlier node or -1")
    anc = np.eye(t, dtype=bool)
    depth = np.ones(t, dtype=np.int64)
    for i, p in enumerate(par):
        if p >= 0:
            anc[i] |= anc[p]
            depth[i] = depth[p] + 1
    return anc, depth


def tree_path_rows(base: int, path: Sequence[int], n_past: int) -> np.ndarray:
    """The cache slots ``int64[len(path)]`` of tree nodes ``path`` (batch indices) scored
    after ``base``, for :meth:`Model.commit_tree_path`.

    Raises:
        ValueError: a node outside the pending tree (slots ``base .. n_past-1``).
    """
    rows = base + np.asarray(path, dtype=np.int64)
    if rows.size and (rows.min() < base or rows.max() >= n_past):
        raise ValueError(f"path {list(path)} is outside the pending tree")
    return rows
