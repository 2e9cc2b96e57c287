"""kernels/reference.py: the gathered FFN against the dense one (differential tests)."""

from __future__ import annotations

import numpy as np
import pytest

from edgespec.kernels import KERNELS
from edgespec.kernels.reference import block_rows, dense_ffn, sparse_ffn

pytestmark = pytest.mark.unit

#: float64 agreement of the gathered and dense FFN. Measured: the largest |difference| over
#: the cases below is 3.6e-14 on outputs of magnitude ~100 (summation order only); run
#: `pytest tests/sparse/test_reference.py -q -s` with EDGESPEC_PRINT_DIFF=1 to print it.
ATOL = 1e-12


def _ffn(rng: np.random.Generator, M: int, d: int, F: int, gated: bool):
    x = rng.normal(size=(M, d))
    gate = rng.normal(size=(F, d)) if gated else None
    up = rng.normal(size=(F, d))
    down = rng.normal(size=(d, F)) * F**-0.5
    return x, gate, up, down


def _report(diff: float) -> None:
    import os

    if os.environ.get("EDGESPEC_PRINT_DIFF"):
        print(f"max |sparse - dense| = {diff:.3g}")


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("act", ["silu", "relu", "gelu_tanh"])
def test_all_rows_active_equals_dense(gated: bool, act: str) -> None:
    rng = np.random.default_rng(0)
    x, gate, up, down = _ffn(rng, 5, 32, 96, gated)
    rows = np.arange(96)
    y = sparse_ffn(x, rows, gate, up, down, act=act)
    ref = dense_ffn(x, gate, up, down, act=act)
    _report(float(np.abs(y - ref).max()))
    np.testing.assert_allclose(y, ref, rtol=0, atol=ATOL)


@pytest.mark.parametrize("M", [1, 2, 4, 8])
@pytest.mark.parametrize("gated", [True, False])
def test_sparse_equals_dense_of_masked_ffn(M: int, gated: bool) -> None:
    """Only the gathered rows contribute: equal to the dense FFN with a 0/1 neuron mask, and
    the rows left out are never read (they hold NaN here)."""
    rng = np.random.default_rng(M)
    F = 128
    x, gate, up, down = _ffn(rng, M, 32, F, gated)
    keep = rng.random(F) < 0.3
    rows = np.flatnonzero(keep)
    weights = rng.random((M, F)) * keep  # per-token weights, 0 off the rows
    ref = dense_ffn(x, gate, up, down, scale=weights)
    poisoned_up, poisoned_down = up.copy(), down.copy()
    poisoned_up[~keep] = np.nan
    poisoned_down[:, ~keep] = np.nan
    poisoned_gate = None
    if gate is not None:
        poisoned_gate = gate.copy()
        poisoned_gate[~keep] = np.nan
    y = sparse_ffn(x, rows, poisoned_gate, poisoned_up, poisoned_down, scale=weights[:, rows])
    _report(float(np.abs(y - ref).max()))
    np.testing.assert_allclose(y, ref, rtol=0, atol=ATOL)
    # and the mask matters: the unmasked dense FFN is far from it
    assert np.abs(dense_ffn(x, gate, up, down) - ref).max() > 1e3 * ATOL


def test_empty_rows_give_zeros_and_float32_stays_float32() -> None:
    rng = np.random.default_rng(3)
    x, gate, up, down = (a.astype(np.float32) for a in _ffn(rng, 3, 16, 32, True))
    y = sparse_ffn(x, np.array([], dtype=np.int64), gate, up, down)
    assert y.shape == (3, 16) and y.dtype == np.float32 and not y.any()
    assert sparse_ffn(x, np.arange(4), gate, up, down).dtype == np.float32


def test_block_rows_and_registry() -> None:
    assert block_rows(np.array([0, 2]), 3).tolist() == [0, 1, 2, 6, 7, 8]
    assert KERNELS.get("sparse_ffn:numpy") is sparse_ffn
    assert KERNELS.get("dense_ffn:numpy") is dense_ffn
    with pytest.raises(ValueError, match="unknown activation"):
        dense_ffn(np.ones((1, 2)), None, np.ones((2, 2)), np.ones((2, 2)), act="tanh")


@pytest.mark.parametrize("n_runs", [3, 80])
def test_runs_and_gather_paths_agree(n_runs: int) -> None:
    """Whole-block rows (sliced in place) and scattered rows (gathered) give the dense
    masked FFN; both paths of sparse_ffn are exercised."""
    from edgespec.kernels.reference import MAX_RUNS, row_runs

    rng = np.random.default_rng(n_runs)
    F = 400
    x, gate, up, down = _ffn(rng, 4, 16, F, True)
    starts = np.sort(rng.choice(F // 4, n_runs, replace=False)) * 4
    rows = np.unique(np.concatenate([np.arange(s, s + 2) for s in starts]))
    assert (len(row_runs(rows)) > MAX_RUNS) == (n_runs > MAX_RUNS)
    keep = np.zeros(F, dtype=bool)
    keep[rows] = True
    ref = dense_ffn(x, gate, up, down, scale=np.broadcast_to(keep, (4, F)).astype(float))
    y = sparse_ffn(x, rows, gate, up, down)
    np.testing.assert_allclose(y, ref, rtol=0, atol=ATOL)
    assert row_runs(np.array([0, 1, 2, 6, 7])) == [(0, 3), (6, 8)]
