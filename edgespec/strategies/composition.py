"""Speculation inside the large model's stretches of a two-model strategy (lossless there).

While the large model is in charge (entropy-switch, sentence-lead), each of its steps goes
through the speculative engine's :class:`~edgespec.speculative.session.SpecSession` with the small
model as the ``draft`` proposer: the controller picks the draft length k that maximises

    E(k) / (c_verify(k + 1) + k · c_draft),   E(k) = 1 + Σ_{j=1..k} Π_{i≤j} α_i

from the large model's cost curve (a stored ``edgespec calibrate`` profile or the session's
probe, then live forwards), the small model's live drafting cost and its live acceptance.
k = 0, a plain large-model step, is always a candidate (with the engine's 5 % margin and its
occasional probe), so composition does not make the large stretches slower than plain
decoding beyond the controller's estimation error.

``spec_k`` selects the mode:

- ``"auto"`` (the default): the controller above; up to ``max_k`` (8) draft tokens, and the
  draft stops early when its confidence falls below ``min_confidence`` (0.3), as in
  ``edgespec generate --strategy speculative --proposer draft``.
- ``N > 0``: always N draft tokens (no early stop), as before the controller existed.
- ``0``: no speculation; the large model decodes one token per forward.

The session lives on the runtime (``Runtime.spec_session``), so the cost curve and the
acceptance estimates carry over between generations, exactly as for ``speculative``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgespec.sampling import entropy
from edgespec.speculative.config import SpecConfig
from edgespec.speculative.proposers.draft_model import DraftModelProposer
from edgespec.speculative.step import StepRecorder, speculative_step

if TYPE_CHECKING:
    from edgespec.runtime import Runtime
    from edgespec.speculative.session import SpecSession
    from edgespec.strategies import GenContext
    from edgespec.strategies.two_model import Seat

#: ``spec_k`` value that lets the controller choose k each step
AUTO = "auto"
#: the speculative engine's proposer that drafts with ``--draft``
PROPOSER = "draft"


def spec_config(spec_k: int | str) -> SpecConfig | None:
    """The speculative options for ``spec_k`` (None: no speculation)."""
    if spec_k == 0:
        return None
    # the small model's own weights (Runtime.file_draft): the drafter shares its cache
    if spec_k == AUTO:
        return SpecConfig(proposers=(PROPOSER,), tree=False, draft_quant="file")
    return SpecConfig(
        proposers=(PROPOSER,), k=int(spec_k), min_confidence=0.0, tree=False, draft_quant="file"
    )


def session(runtime: Runtime, spec_k: int | str) -> SpecSession | None:
    """The runtime's speculation session for ``spec_k`` (built once, then reused)."""
    cfg = spec_config(spec_k)
    return None if cfg is None else runtime.spec_session(cfg, allow_plain=True)


class Stretch:
    """The large model's steps for one generation: plain or speculative, as chosen.

    Args:
        ctx: the generation's context (params, rng, stats recorder).
        session: the speculation session (its ``draft`` proposer drafts with ``small``).
        small: the small model's seat (its cache is shared with the proposer).
        large: the large model's seat.
    """

    def __init__(self, ctx: GenContext, session: SpecSession, small: Seat, large: Seat) -> None:
        self.ctx, self.session, self.small, self.large = ctx, session, small, large
        drafter = session.proposers[PROPOSER]
        assert isinstance(drafter, DraftModelProposer)
        self.drafter = drafter
        self.hook = StepRecorder(ctx.rec, plain_span="large")

    def begin(self, prompt_ids: list[int]) -> None:
        """Per generation: reset the session's per-generation state (and the small model)."""
        self.session.begin(prompt_ids, self.ctx.params)

    def step(self, seq: list[int], room: int) -> tuple[list[int], list[float], int]:
        """One large-model step after ``seq`` (the committed sequence, ``int[n]``, unchanged):
        :func:`~edgespec.speculative.step.speculative_step` with the large model's seat as
        the scorer (it catches up on what the small model wrote in the same forward).

        Args:
            seq: prompt and output so far.
            room: the most tokens this step may yield (>= 1).
        Returns:
            (new tokens ``int[m]``, 1 <= m <= room; the large model's entropy in nats at each;
            how many of them, from the front, the small model drafted).
        """
        small, ctx = self.small, self.ctx
        self.drafter.adopt(seq[: small.seen])  # the drafter shares the small model's cache
        adopted = self.drafter.cached
        step = speculative_step(
            self.session, self.large, seq, max(room - 1, 0), ctx.params, ctx.rng, self.hook
        )
        n = step.verdict.n_accepted
        if self.drafter.cached is not adopted:  # it drafted: cut what was rejected
            small.seen, small.logits = len(self.drafter.cached), None
            small.keep(min(small.seen, len(seq) + n))
        return list(step.tokens), [entropy(step.rows[i]) for i in range(n + 1)], n
