"""Tree attention over a KV cache (kernels/tree_attention.py) against the NumPy reference
(kernels/reference.py ``tree_attention``, evaluated in float64) and against attention written
out naively, one row and head at a time.

Tolerance: :func:`attention_bound`, a first-order forward error bound of the float32
evaluation derived from the expression (Higham's ``gamma_n`` for the dot products and the two
sums over the cache, one unit roundoff per elementwise operation, two for ``exp``). The error
actually measured, as a fraction of it, is printed by
``python benchmarks/tvm_tree_attention.py`` (docs/tvm.md).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm")

from edgespec.errors import EdgespecError  # noqa: E402
from edgespec.kernels import KERNELS, reference  # noqa: E402
from edgespec.kernels.tree_attention import (  # noqa: E402
    AttentionShape,
    TreeAttention,
    aligned_zeros,
    attention_bound,
    bucket_for,
    tree_attention,
)

H, HKV, D = 6, 2, 64  # query heads, KV heads (GQA groups of 3), head size


@pytest.fixture(scope="module")
def kern() -> TreeAttention:
    """One compiled-kernel cache for the module (each bucket compiles once, about a second)."""
    return TreeAttention()


def cache(
    rng: np.random.Generator, m_rows: int, prefix: int, n_heads: int = H, n_kv: int = HKV
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``q [M, H, D]`` and ``k, v [P+M, H_kv, D]``, float32, k scaled so the softmax is peaked
    enough to matter (scores of a few units) but not one-hot."""
    q = rng.standard_normal((m_rows, n_heads, D)).astype(np.float32)
    k = (rng.standard_normal((prefix + m_rows, n_kv, D)) * 0.5).astype(np.float32)
    v = rng.standard_normal((prefix + m_rows, n_kv, D)).astype(np.float32)
    return q, k, v


def random_tree(rng: np.random.Generator, m_rows: int) -> np.ndarray:
    """The ancestor-or-self mask of a random tree on M nodes in topological order (node i's
    parent is one of 0..i-1)."""
    mask = np.eye(m_rows, dtype=bool)
    for i in range(1, m_rows):
        parent = int(rng.integers(0, i))
        mask[i] |= mask[parent]
    return mask


def exact(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    f64 = np.float64
    return reference.tree_attention(q.astype(f64), k.astype(f64), v.astype(f64), mask)


def naive_causal(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Causal attention of the last M cache rows, float64, one row and head at a time."""
    m_rows, n_heads, hd = q.shape
    prefix = k.shape[0] - m_rows
    group = n_heads // k.shape[1]
    out = np.zeros(q.shape)
    for i in range(m_rows):
        for h in range(n_heads):
            kk = k[: prefix + i + 1, h // group].astype(np.float64)
            s = kk @ q[i, h].astype(np.float64) / np.sqrt(hd)
            p = np.exp(s - s.max())
            out[i, h] = (p / p.sum()) @ v[: prefix + i + 1, h // group].astype(np.float64)
    return out


def assert_within_bound(y: np.ndarray, q: np.ndarray, k, v, mask, want: np.ndarray) -> float:
    """Every element of ``y`` within :func:`attention_bound` of ``want``; returns the worst
    error as a fraction of the bound."""
    bound = attention_bound(q, k, v, mask)
    err = np.abs(y - want)
    ratio = float((err / bound).max())
    assert (err <= bound).all(), ratio
    return ratio


@pytest.mark.parametrize(("m_rows", "prefix"), [(1, 0), (1, 300), (3, 1), (9, 0), (16, 257)])
def test_matches_reference_within_bound(kern: TreeAttention, m_rows: int, prefix: int) -> None:
    """Random trees, P = 0, 1 and a few hundred, buckets 1, 4 and 16 (padded and full)."""
    rng = np.random.default_rng(m_rows * 1000 + prefix)
    q, k, v = cache(rng, m_rows, prefix)
    mask = random_tree(rng, m_rows)
    y = kern(q, k, v, mask)
    assert y.shape == (m_rows, H, D) and y.dtype == np.float32
    assert_within_bound(y, q, k, v, mask, exact(q, k, v, mask))


def test_bound_catches_a_wrong_mask(kern: TreeAttention) -> None:
    """The bound is tight enough to see one extra visible position: the kernel's result for a
    tree is outside the bound of the reference that also shows a sibling branch's row."""
    rng = np.random.default_rng(1)
    q, k, v = cache(rng, 3, 40)
    tree = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 1]], bool)  # root, two children
    y = kern(q, k, v, tree)
    leaky = tree.copy()
    leaky[2, 1] = True  # row 2 also sees its sibling
    err = np.abs(y - exact(q, k, v, leaky))
    assert (err[2] > attention_bound(q, k, v, leaky)[2]).any()


def test_chain_equals_naive_causal_attention(kern: TreeAttention) -> None:
    rng = np.random.default_rng(2)
    q, k, v = cache(rng, 9, 120)
    chain = np.tril(np.ones((9, 9), bool))
    y = kern(q, k, v, chain)
    assert_within_bound(y, q, k, v, chain, naive_causal(q, k, v))


def two_branch_tree() -> tuple[np.ndarray, list[int], list[int]]:
    """A root, branch A (rows 1, 3: a chain) and branch B (rows 2, 4, 5), interleaved in the
    cache as a tree flattened breadth-first would be."""
    parent = {1: 0, 2: 0, 3: 1, 4: 2, 5: 4}
    mask = np.eye(6, dtype=bool)
    for i in range(1, 6):
        mask[i] |= mask[parent[i]]
    return mask, [0, 1, 3], [0, 2, 4, 5]


def test_each_branch_equals_its_chain_alone(kern: TreeAttention) -> None:
    """What speculative tree verification relies on: each branch's rows are exactly (bit for
    bit: the same values summed in the same order, the other branch's positions adding 0.0)
    the causal attention of that branch verified alone as a chain."""
    rng = np.random.default_rng(3)
    prefix = 50
    q, k, v = cache(rng, 6, prefix)
    mask, *branches = two_branch_tree()
    y = kern(q, k, v, mask)
    for rows in branches:
        at = [prefix + r for r in rows]
        kc = np.concatenate([k[:prefix], k[at]])
        vc = np.concatenate([v[:prefix], v[at]])
        chain = np.tril(np.ones((len(rows), len(rows)), bool))
        alone = kern(q[rows], kc, vc, chain)
        np.testing.assert_array_equal(y[rows], alone)
        assert_within_bound(alone, q[rows], kc, vc, chain, naive_causal(q[rows], kc, vc))


@pytest.mark.parametrize("poison", [1e30, np.inf, np.nan])
def test_masked_rows_never_reach_the_result(kern: TreeAttention, poison: float) -> None:
    """Poisoning the keys and values of branch B (and the scores they would give) changes
    nothing in branch A's rows, not even with inf or NaN: masked positions are selected
    away, never multiplied by 0."""
    rng = np.random.default_rng(4)
    prefix = 30
    q, k, v = cache(rng, 6, prefix)
    mask, branch_a, branch_b = two_branch_tree()
    clean = kern(q, k, v, mask)
    only_b = [prefix + r for r in branch_b if r not in branch_a]
    kp, vp = k.copy(), v.copy()
    kp[only_b] = poison
    vp[only_b] = poison
    dirty = kern(q, kp, vp, mask)
    np.testing.assert_array_equal(dirty[branch_a], clean[branch_a])
    b_rows = [r for r in branch_b if r not in branch_a]
    assert not np.array_equal(dirty[b_rows], clean[b_rows])  # the poison is there to be read


def test_gqa_groups_query_heads_by_kv_head(kern: TreeAttention) -> None:
    """H = 6 over H_kv = 2: query head h reads KV head h // 3. Equal bit for bit to the same
    cache with each KV head repeated 3 times (H_kv = H), which a wrong grouping (h % 2)
    would not be."""
    rng = np.random.default_rng(5)
    q, k, v = cache(rng, 4, 64)
    mask = random_tree(rng, 4)
    group = H // HKV
    y = kern(q, k, v, mask)
    y_rep = kern(q, np.repeat(k, group, axis=1), np.repeat(v, group, axis=1), mask)
    np.testing.assert_array_equal(y, y_rep)
    assert_within_bound(y, q, k, v, mask, exact(q, k, v, mask))


def test_cache_read_in_place_from_a_preallocated_buffer(kern: TreeAttention) -> None:
    """A preallocated aligned cache sliced to its first P + M rows is used without a copy and
    gives the result of a fresh copy of the same rows."""
    rng = np.random.default_rng(6)
    q, k, v = cache(rng, 2, 70)
    kbuf = aligned_zeros((512, HKV, D), np.float32)
    vbuf = aligned_zeros((512, HKV, D), np.float32)
    kbuf[:72], vbuf[:72] = k, v
    kbuf[72:] = np.nan  # the unused tail of the cache is never read
    mask = np.tril(np.ones((2, 2), bool))
    np.testing.assert_array_equal(kern(q, kbuf[:72], vbuf[:72], mask), kern(q, k, v, mask))


def test_registry_and_float64_inputs(kern: TreeAttention) -> None:
    assert KERNELS.get("tree_attention:tvm") is tree_attention
    assert KERNELS.get("tree_attention:numpy") is reference.tree_attention
    rng = np.random.default_rng(7)
    q, k, v = cache(rng, 2, 5)
    mask = np.tril(np.ones((2, 2), bool))
    y64 = tree_attention(q.astype(np.float64), k, v, mask)
    assert y64.dtype == np.float64
    np.testing.assert_array_equal(y64, tree_attention(q, k, v, mask))


def test_buckets_and_keys() -> None:
    assert [bucket_for(m) for m in (1, 2, 3, 9, 16)] == [1, 2, 4, 16, 16]
    assert AttentionShape(4, 9, 3, 64).key == "tree_attention-m4-h9-kv3-d64"


def ok() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(8)
    q, k, v = cache(rng, 3, 10)
    return {"q": q, "k": k, "v": v, "mask": np.tril(np.ones((3, 3), bool))}


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"q": np.zeros((3, 6))}, "q [M, H, D]"),
        ({"v": np.zeros((13, 2, 32), np.float32)}, "of one shape"),
        ({"q": np.zeros((3, 5, D), np.float32)}, "multiple of the KV heads"),
        ({"k": np.zeros((2, 2, D)), "v": np.zeros((2, 2, D))}, "must end with the 3 new rows"),
        ({"mask": np.ones((3, 4), bool)}, "bool [M, M] = [3, 3]"),
        ({"mask": np.zeros((3, 3), bool)}, "mask[i, i] = True"),
        (
            {
                "q": np.zeros((17, 6, D), np.float32),
                "k": np.zeros((17, 2, D), np.float32),
                "v": np.zeros((17, 2, D), np.float32),
                "mask": np.eye(17, dtype=bool),
            },
            "largest tree attention bucket (16)",
        ),
    ],
)
def test_bad_shapes_are_one_line_errors(change: dict[str, np.ndarray], says: str) -> None:
    args = ok() | change
    for fn in (tree_attention, reference.tree_attention):
        if fn is reference.tree_attention and "bucket" in says:
            continue  # the reference has no row limit
        with pytest.raises(EdgespecError) as info:
            fn(**args)
        assert says in str(info.value) and "\n" not in str(info.value)
