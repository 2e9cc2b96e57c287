"""The near-tie rule used to judge lossless strategies on quantized backends."""

import numpy as np
import pytest

from edgespec.losslessness import check, first_divergence, plain_reference
from edgespec.testing import PrefixModel

pytestmark = pytest.mark.unit


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
    c = check(out, ref, batch_noise=gap + 1e-6)
    assert (c.index, c.near_tie) == (4, True) and c.gap == pytest.approx(gap)
    assert not check(out, ref, batch_noise=gap - 1e-6).near_tie
    assert first_divergence([1, 2], [1, 2, 3]) is None
