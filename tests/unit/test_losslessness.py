"""The near-tie rule used to judge lossless strategies, and the measured bound behind it."""

from collections.abc import Sequence

import numpy as np
import pytest

from edgespec.losslessness import (
    calibration_tokens,
    check,
    first_divergence,
    measure_near_tie_bound,
    plain_reference,
    verify_chunk_sizes,
)
from edgespec.testing import CharTokenizer, PrefixModel

pytestmark = pytest.mark.unit


class NoisyBatchModel(PrefixModel):
    """A PrefixModel whose multi-token forwards move each row's best logit up by a known
    amount: ``chain`` at even positions and ``chain / 2`` at odd ones, ``tree`` in tree
    forwards. One-token forwards are exact, so the top-2 gap changes by exactly that much."""

    def __init__(self, chain: float, tree: float = 0.0) -> None:
        super().__init__(vocab_size=32, seed=5)
        self.chain, self.tree = chain, tree

    def _noisy(self, rows: np.ndarray, first: int, amount: float) -> np.ndarray:
        rows = rows.copy()
        for i, row in enumerate(rows):
            row[int(np.argmax(row))] += amount if (first + i) % 2 == 0 else amount / 2
        return rows

    def forward(self, tokens: Sequence[int], *, all_logits: bool = True) -> np.ndarray:
        first = self.n_past
        rows = super().forward(tokens, all_logits=True)
        if len(tokens) > 1:
            rows = self._noisy(rows, first, self.chain)
        return rows if all_logits else rows[-1:]

    def forward_tree(self, tokens: Sequence[int], parents: Sequence[int]) -> np.ndarray:
        first = self.n_past
        return self._noisy(super().forward_tree(tokens, parents), first, self.tree)


def test_reference_matches_plain_greedy_and_keeps_sorted_candidates():
    m = PrefixModel(vocab_size=16, seed=3)
    ref = plain_reference(m, [1, 2, 3], 12)
    assert ref.tokens == m.greedy([1, 2, 3], 12)
    assert (np.diff(ref.top_logits, axis=1) <= 0).all()
    assert m.n_past == 0


def test_check_exact_near_tie_and_bug():
    m = PrefixModel(vocab_size=16, seed=3)
    ref = plain_reference(m, [1, 2, 3], 10)
    assert check(ref.tokens, ref, 0.0).near_tie
    second = int(ref.top_ids[4, 1])
    out = ref.tokens[:4] + [second]
    gap = float(ref.top_logits[4, 0] - ref.top_logits[4, 1])
    c = check(out, ref, bound=gap + 1e-6)
    assert (c.index, c.near_tie) == (4, True) and c.gap == pytest.approx(gap)
    assert not check(out, ref, bound=gap - 1e-6).near_tie
    assert not check(out, ref, bound=0.0).near_tie  # exact backends: any divergence fails
    assert first_divergence([1, 2], [1, 2, 3]) is None


def test_divergence_to_a_token_outside_the_candidates_is_never_a_near_tie():
    m = PrefixModel(vocab_size=64, seed=3)
    ref = plain_reference(m, [1, 2, 3], 6)
    outside = next(t for t in range(64) if t not in ref.top_ids[2])
    assert not check(ref.tokens[:2] + [outside], ref, bound=1e9).near_tie


def test_exact_batching_measures_zero():
    m = PrefixModel(vocab_size=32, seed=5)
    ids = calibration_tokens(CharTokenizer(), 80)
    assert measure_near_tie_bound(m, ids, verify_chunk_sizes(8)) == 0.0
    assert m.n_past == 0


@pytest.mark.parametrize("chain", [0.25, 1.5])
def test_measured_bound_equals_the_known_batch_noise(chain):
    m = NoisyBatchModel(chain)
    ids = calibration_tokens(CharTokenizer(), 80)
    assert measure_near_tie_bound(m, ids, verify_chunk_sizes(4), trees=False) == pytest.approx(
        chain, abs=1e-5
    )
    assert m.n_past == 0


def test_tree_forwards_count_when_the_backend_scores_trees():
    m = NoisyBatchModel(chain=0.5, tree=1.25)
    ids = calibration_tokens(CharTokenizer(), 60)
    assert measure_near_tie_bound(m, ids, [3], trees=True) == pytest.approx(1.25, abs=1e-5)
    assert measure_near_tie_bound(m, ids, [3], trees=False) == pytest.approx(0.5, abs=1e-5)
    m.supports_tree = False
    assert measure_near_tie_bound(m, ids, [3], trees=True) == pytest.approx(0.5, abs=1e-5)


def test_one_token_chunks_measure_nothing_and_bad_arguments_fail():
    m = NoisyBatchModel(chain=3.0)
    ids = calibration_tokens(CharTokenizer(), 40)
    assert measure_near_tie_bound(m, ids, [1], trees=False) == 0.0
    with pytest.raises(ValueError, match="calibration tokens"):
        measure_near_tie_bound(m, ids[:4], [2], start=8)
    with pytest.raises(ValueError, match="chunk sizes"):
        measure_near_tie_bound(m, ids, [])
    with pytest.raises(ValueError):
        verify_chunk_sizes(0)


def test_calibration_tokens_are_fixed_and_fill_the_length():
    tok = CharTokenizer()
    a = calibration_tokens(tok, 500)
    assert a == calibration_tokens(tok, 500) and len(a) == 500
    assert all(0 <= t < tok.vocab_size for t in a)
    assert verify_chunk_sizes(3) == [2, 3, 4]
