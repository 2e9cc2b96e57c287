"""Dynamic token trees from draft probabilities (after DySpec, Xiong et al. 2024).

DySpec grows the tree greedily at the node whose path probability (the product of draft
probabilities from the root) is highest, because that estimates how likely the target is
to accept it. We apply the same rule with one restriction that keeps drafting cheap on a
CPU: only nodes on the draft's own main path are expanded (one draft forward per depth);
each expanded node offers its next-best tokens as sibling leaves. The k nodes with the
highest path probability form the tree, so its width follows the draft's uncertainty:
confident stretches give a deep chain, uncertain ones a bushy tree.

Nodes carry no draft probabilities (``draft_probs=None``): the tree verifier treats them as
point masses, which is lossless for any candidate set (see ``edgespec.speculative.verify``).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.sampling import confidence_probs, draw, target_probs
from edgespec.speculative.proposers.draft_model import DraftFailure, DraftModelProposer
from edgespec.speculative.types import EMPTY_DRAFT, Draft

if TYPE_CHECKING:
    from edgespec.runtime import Runtime
    from edgespec.speculative.config import SpecConfig

#: sibling candidates considered per expanded node
SIBLINGS = 3
#: stop expanding the main path when its probability falls below this
MIN_PATH_PROB = 0.02


class DynamicTreeProposer(DraftModelProposer):
    """A tree of up to k nodes around the draft model's main path."""

    name = "tree"
    needs_draft_model = False
    prior_acceptance = 0.6

    @classmethod
    def create(cls, runtime: Runtime, config: SpecConfig) -> DynamicTreeProposer:
        """Uses ``--draft`` when given, else the layer-skip self-draft."""
        if runtime.draft is not None:
            from edgespec.speculative.proposers.draft_model import draft_of

            return cls(draft_of(runtime, config), min_confidence=0.0)
        from edgespec.speculative.layerskip import load_layerskip_draft

        return cls(load_layerskip_draft(runtime, config.layerskip_layers), min_confidence=0.0)

    def propose(self, context: Sequence[int], k: int, rng: np.random.Generator) -> Draft:
        if k <= 0:
            return EMPTY_DRAFT
        # candidates: (-score, order, token, parent candidate id)
        cands: list[tuple[float, int, int, int]] = []
        chain_ids: list[int] = []
        try:
            logits = self._sync(context)
            forwards = 1
            path_prob, parent = 1.0, -1
            for depth in range(k):
                q = target_probs(logits, self.params)
                main = int(np.argmax(q)) if self.params.greedy else draw(q, rng)
                p = confidence_probs(logits, self.params)
                top = [int(t) for t in np.argsort(-p)[: SIBLINGS + 1] if t != main][:SIBLINGS]
                main_id = len(cands)
                cands.append((-path_prob * float(p[main]), main_id, main, parent))
                for t in top:
                    if p[t] > 0:
                        cands.append((-path_prob * float(p[t]), len(cands), t, parent))
                chain_ids.append(main_id)
                path_prob *= float(p[main])
                parent = main_id
                if depth + 1 >= k or path_prob < MIN_PATH_PROB:
                    break
                logits = self.model.forward([main], all_logits=False)[-1]
                forwards += 1
                self.cached.append(main)
        except EdgespecError:
            raise
        except Exception as exc:
            raise DraftFailure(f"draft model failed: {type(exc).__name__}: {exc}") from exc
        chosen = heapq.nsmallest(k, cands)
        keep = {c[1] for c in chosen}
        # a node is only useful with its parent: drop orphans (possible at equal scores)
        order = sorted(c for c in cands if c[1] in keep)
        order.sort(key=lambda c: c[1])
        index: dict[int, int] = {}
        tokens: list[int] = []
        parents: list[int] = []
        for _, cid, tok, par in order:
            if par >= 0 and par not in index:
                continue
            index[cid] = len(tokens)
            tokens.append(tok)
            parents.append(index[par] if par >= 0 else -1)
        if not tokens:
            return EMPTY_DRAFT
        is_chain = parents == list(range(-1, len(tokens) - 1))
        parents_or_none = None if is_chain else tuple(parents)
        return Draft(tuple(tokens), parents_or_none, None, self.name, forwards, self.catchup_s)
