"""Proposer and Verifier base classes and their registries."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgespec.registry import Registry
from edgespec.sampling import GenerationParams
from edgespec.speculative.types import Draft, Verdict

if TYPE_CHECKING:
    from edgespec.runtime import Runtime
    from edgespec.speculative.config import SpecConfig


class Proposer(ABC):
    """Drafts tokens that the target then verifies.

    Subclasses set ``name`` and implement :meth:`propose`. Proposers never touch the
    target's KV cache; a draft model keeps its own.

    Class attributes:
        name: registry name.
        needs_draft_model: True when the proposer needs ``--draft``.
        prior_acceptance: the controller's starting guess of per-position acceptance.
    """

    name: ClassVar[str]
    needs_draft_model: ClassVar[bool] = False
    prior_acceptance: ClassVar[float] = 0.5

    def __init__(self, **options: Any) -> None:
        self.options = options

    @classmethod
    def create(cls, runtime: Runtime, config: SpecConfig) -> Proposer:
        """Build the proposer for ``runtime`` from the options in ``config``."""
        return cls()

    def begin(self, prompt_ids: Sequence[int], params: GenerationParams) -> None:  # noqa: B027
        """Called once per generation, before the first :meth:`propose`."""

    @abstractmethod
    def propose(self, context: Sequence[int], k: int, rng: np.random.Generator) -> Draft:
        """Up to ``k`` draft tokens (or tree nodes) continuing ``context``.

        Args:
            context: every committed token so far (prompt + output), ``int[n]``.
            k: the most tokens (tree nodes) to propose; may return fewer, even zero.
        """

    def draft_shape(self, k: int) -> tuple[int, ...] | None:
        """The parents (``int[k]``, -1 = the root) of the tree this proposer drafts with k
        nodes when every candidate exists, if that shape is fixed and each shorter draft is
        its first nodes; None for chains and trees shaped by each draft (the controller then
        models a draft by its depth). The controller's expected tokens follow this shape
        (:class:`~edgespec.speculative.controller.Acceptance`)."""
        return None

    def feedback(self, draft: Draft, verdict: Verdict) -> None:  # noqa: B027
        """Learn from the outcome of the last draft (acceptance, committed tokens)."""

    def observe(self, tokens: Sequence[int], logits: np.ndarray) -> None:  # noqa: B027
        """See the target's logits ``float[T, V]`` for ``tokens`` (recycling uses them)."""

    def close(self) -> None:  # noqa: B027
        """Release resources (a draft model's cache)."""


class Verifier(ABC):
    """Decides which draft tokens to keep, and the bonus token, from the target's logits."""

    name: ClassVar[str]

    @abstractmethod
    def verify(
        self,
        draft: Draft,
        target_logits: np.ndarray,
        params: GenerationParams,
        rng: np.random.Generator,
    ) -> Verdict:
        """Accept a prefix (chain) or a root-to-leaf path (tree) of ``draft``.

        Args:
            draft: k proposed nodes.
            target_logits: ``float[k + 1, V]``. Row 0 is the target's distribution after the
                last committed token; row i + 1 is its distribution after node i (given the
                node's ancestors).
            params: sampling parameters (greedy when temperature is 0).
            rng: the generation's random generator.
        """


PROPOSERS: Registry[type[Proposer]] = Registry("proposer")
for _name, _target in {
    "ngram": "edgespec.speculative.proposers.ngram:NGramProposer",
    "recycle": "edgespec.speculative.proposers.recycle:RecycleProposer",
    "draft": "edgespec.speculative.proposers.draft_model:DraftModelProposer",
    "layerskip": "edgespec.speculative.proposers.draft_model:LayerSkipProposer",
    "tree": "edgespec.speculative.proposers.tree:DynamicTreeProposer",
}.items():
    PROPOSERS.add_lazy(_name, _target)

VERIFIERS: Registry[type[Verifier]] = Registry("verifier")
for _name, _target in {
    "greedy": "edgespec.speculative.verify:GreedyVerifier",
    "chain": "edgespec.speculative.verify:ChainRejectionVerifier",
    "tree": "edgespec.speculative.verify:TreeRejectionVerifier",
}.items():
    VERIFIERS.add_lazy(_name, _target)
