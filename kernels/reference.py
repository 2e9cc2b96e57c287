"""NumPy references for the compute kernels (``edgespec.kernels.reference``).

Every other implementation of an op (TVM, OpenCL) is tested against the function of the same
name here. They favour clarity over speed, but they are the ``:numpy`` implementations that
the NumPy paths run, so they avoid needless copies.

Shapes use M for the tokens of a chunk (1 for plain decoding, k+1 for a verify, the node
count of a tree), d for the model width, F for the FFN width and A for the active rows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def silu(x: np.ndarray) -> np.ndarray:
    """``x * sigmoid(x)``, elementwise, in ``x``'s dtype."""
    return x / (1.0 + np.exp(-x))


def relu(x: np.ndarray) -> np.ndarray:
    """``max(x, 0)``, elementwise."""
    return np.maximum(x, 0)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (HF ``gelu_pytorch_tanh``), elementwise."""
    c = np.sqrt(2.0 / np.pi).astype(x.dtype)
    return 0.5 * x * (1.0 + np.tanh(c * (x + 0.044715 * x * x * x)))


#: activation name (as HF configs spell it, shortened) -> elementwise function
ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "silu": silu,
    "relu": relu,
    "gelu_tanh": gelu_tanh,
}


def _act(name: str) -> Callable[[np.ndarray], np.ndarray]:
    fn = ACTIVATIONS.get(name)
    if fn is None:
        raise ValueError(f"unknown activation '{name}'; known: {', '.join(ACTIVATIONS)}")
    return fn


def dense_ffn(
    x: np.ndarray,
    gate: np.ndarray | None,
    up: np.ndarray,
    down: np.ndarray,
    *,
    act: str = "silu",
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """The dense FFN every sparse variant is checked against.

    ``y = (act(x @ gate.T) * (x @ up.T) * scale) @ down.T``; without ``gate`` (BlockFFN's
    experts are not gated) the hidden state is ``act(x @ up.T) * scale``.

    Args:
        x: ``float[M, d]`` the normed inputs of the chunk.
        gate: ``float[F, d]`` gate projection (``nn.Linear`` layout), or None.
        up: ``float[F, d]`` up projection.
        down: ``float[d, F]`` down projection.
        act: "silu", "relu" or "gelu_tanh".
        scale: ``float[M, F]`` per-token weight of each neuron (BlockFFN's router weight of
            the neuron's block; 0 switches a neuron off for that token), or None for 1.

    Returns:
        ``float[M, d]`` in ``x``'s dtype.
    """
    fn = _act(act)
    h = fn(x @ gate.T) * (x @ up.T) if gate is not None else fn(x @ up.T)
    if scale is not None:
        h = h * scale
    return h @ down.T


def sparse_ffn(
    x: np.ndarray,
    rows: np.ndarray,
    gate: np.ndarray | None,
    up: np.ndarray,
    down: np.ndarray,
    *,
    act: str = "silu",
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """The FFN over the active rows only: gather rows of gate/up and columns of down.

    For a chunk, ``rows`` is the union of the neurons any of its tokens needs; the result
    equals :func:`dense_ffn` of the FFN whose other neurons are masked to zero (exactly,
    up to the summation order of the matmuls).

    Args:
        x: ``float[M, d]``.
        rows: ``int[A]`` indices into the F neurons, ascending. Up to :data:`MAX_RUNS`
            contiguous runs (whole blocks) are computed on slices of the weights in place;
            more scattered rows are gathered (copied) first.
        gate: ``float[F, d]`` or None (ungated experts).
        up: ``float[F, d]``.
        down: ``float[d, F]``; pass ``down_t.T`` when the model keeps ``down_t: float[F, d]``
            so that the column gather reads contiguous rows.
        act: "silu", "relu" or "gelu_tanh".
        scale: ``float[M, A]`` per-token weight of each *gathered* row, or None for 1.

    Returns:
        ``float[M, d]``; zeros when ``rows`` is empty.
    """
    if rows.size == 0:
        return np.zeros((x.shape[0], down.shape[0]), dtype=x.dtype)
    fn = _act(act)
    runs = row_runs(rows)
    if len(runs) > MAX_RUNS:  # scattered neurons: gather once (copies A rows of each matrix)
        u = up[rows]  # [A, d]
        h = fn(x @ gate[rows].T) * (x @ u.T) if gate is not None else fn(x @ u.T)
        if scale is not None:
            h = h * scale
        return h @ down[:, rows].T
    # whole blocks: contiguous runs of rows are read in place (slices, no copy)
    parts = []
    for a, b in runs:
        u = x @ up[a:b].T
        parts.append(fn(x @ gate[a:b].T) * u if gate is not None else fn(u))
    h = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]  # [M, A]
    if scale is not None:
        h = h * scale
    y = np.zeros((x.shape[0], down.shape[0]), dtype=np.result_type(x, down))
    off = 0
    for a, b in runs:
        y += h[:, off : off + b - a] @ down[:, a:b].T
        off += b - a
    return y


#: above this many contiguous runs of rows, :func:`sparse_ffn` gathers instead of slicing
MAX_RUNS = 32


def row_runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs of ascending ``rows`` as half-open ``(start, stop)`` pairs:
    ``[0, 1, 2, 6, 7] -> [(0, 3), (6, 8)]``."""
    rows = np.asarray(rows)
    if rows.size == 0:
        return []
    cut = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([rows[:1], rows[cut]])
    stops = np.concatenate([rows[cut - 1], rows[-1:]]) + 1
    return list(zip(starts.tolist(), stops.tolist(), strict=True))


def block_rows(blocks: np.ndarray, block_size: int) -> np.ndarray:
    """Neuron rows of whole blocks: ``int[B]`` block ids -> ``int[B * block_size]``, ascending
    when ``blocks`` is (block b holds rows ``b*S .. b*S+S-1``)."""
    offsets = np.arange(block_size, dtype=np.int64)
    return (np.asarray(blocks, dtype=np.int64)[:, None] * block_size + offsets).reshape(-1)


def qmatmul(x: np.ndarray, raw: np.ndarray, qtype: str) -> np.ndarray:
    """``x @ W^T`` for a GGUF block-quantized ``W``, dequantized by the ``gguf`` package.

    Args:
        x: ``float[M, K]`` (M = 1..16: one token, or the k+1 rows of a verify).
        raw: ``uint8[N, K/block * type_size]``, the tensor's blocks as ``GGUFReader`` gives
            them (one row per output feature, ``nn.Linear`` layout).
        qtype: the GGUF type name ("Q4_0", "Q4_1", "Q8_0", ...).

    Returns:
        ``float64[M, N]``, computed in float64 from ``gguf.quants.dequantize``.
    """
    from gguf import GGMLQuantizationType, quants

    w = quants.dequantize(raw, GGMLQuantizationType[qtype]).astype(np.float64)
    return np.asarray(x, dtype=np.float64) @ w.T


def qmatmul_bound(x: np.ndarray, raw: np.ndarray, qtype: str) -> np.ndarray:
    """The float32 error bound every :func:`qmatmul` implementation must meet, ``float64[M, N]``.

    A float32 sum of K products is within ``gamma_K * (|x| @ |W|^T)`` of the exact result,
    ``gamma_K = K u / (1 - K u)``, ``u = 2^-24`` (Higham, *Accuracy and Stability of Numerical
    Algorithms*, eq. 3.5). One more ``u`` covers the affine ``d*q + m`` of Q4_1/Q4_K (``d*q``
    itself is exact: an 11-bit float16 mantissa times a code of at most 8 bits).
    """
    from gguf import GGMLQuantizationType, quants

    w = np.abs(quants.dequantize(raw, GGMLQuantizationType[qtype]).astype(np.float64))
    k = np.asarray(x).shape[1] + 1
    u = 2.0**-24
    return k * u / (1 - k * u) * (np.abs(np.asarray(x, dtype=np.float64)) @ w.T)


def check_tree_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> int:
    """The prefix length P of a :func:`tree_attention` call, or one line naming the bad shape.

    Raises:
        EdgespecError: ranks, head counts, head size, cache length (< M) or mask shape that
            do not fit, or a mask whose diagonal is not all True (a row must see itself).
    """
    from edgespec.errors import EdgespecError

    if q.ndim != 3 or k.ndim != 3 or v.shape != k.shape:
        raise EdgespecError(
            f"tree attention wants q [M, H, D] and k, v [P+M, H_kv, D] of one shape; got "
            f"q {q.shape}, k {k.shape}, v {v.shape}"
        )
    m_rows, n_heads, hd = q.shape
    n_ctx, n_kv, hd_k = k.shape
    if hd_k != hd or n_kv == 0 or n_heads % n_kv:
        raise EdgespecError(
            f"tree attention: q has {n_heads} heads of {hd}, k/v {n_kv} heads of {hd_k}; "
            "the head sizes must match and the query heads be a multiple of the KV heads"
        )
    if m_rows == 0 or n_ctx < m_rows:
        raise EdgespecError(
            f"tree attention: the cache holds {n_ctx} rows but must end with the {m_rows} new "
            "rows (k, v [P+M, H_kv, D] with M >= 1)"
        )
    if np.shape(mask) != (m_rows, m_rows):
        raise EdgespecError(
            f"tree mask must be bool [M, M] = [{m_rows}, {m_rows}]; got {np.shape(mask)}"
        )
    if not np.asarray(mask, bool).diagonal().all():
        raise EdgespecError("tree mask: every row must see itself (set mask[i, i] = True)")
    return n_ctx - m_rows


def tree_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Attention of M new rows over a KV cache whose last M rows are those rows, under a tree
    (ancestor) mask among the new rows; every row sees the whole committed prefix.

    Args:
        q: ``float[M, H, D]`` the new rows' queries (RoPE applied), M = 1..16.
        k: ``float[P + M, H_kv, D]`` the cache's keys: the committed prefix of length P, then
            the M new rows in the order of ``q``; H a multiple of H_kv (GQA: query head h
            reads key head ``h // (H / H_kv)``).
        v: ``float[P + M, H_kv, D]`` the values, laid out like ``k``.
        mask: ``bool[M, M]``, ``mask[i, j]`` True iff new row j is row i itself or one of its
            ancestors (a chain is the lower triangle, ``np.tril``).

    Returns:
        ``float[M, H, D]`` in the inputs' dtype (float64 in, float64 out): ``softmax(q k^T /
        sqrt(D))`` over the visible positions (max subtracted first), times ``v``. Masked
        positions are dropped before the product, so their values cannot reach the result.
    """
    prefix = check_tree_attention(q, k, v, mask)
    m_rows, n_heads, hd = q.shape
    n_kv = k.shape[1]
    dt = np.result_type(q, k, v)
    mask = np.asarray(mask, bool)
    # query heads grouped by their KV head: qg [H_kv, G*M, D], row r = (g, i), head kv*G + g
    qg = q.transpose(1, 0, 2).reshape(n_kv, -1, hd).astype(dt, copy=False)
    kt = k.transpose(1, 2, 0)  # [H_kv, D, P+M]
    s = (qg @ kt) * dt.type(1.0 / np.sqrt(hd))  # [H_kv, G*M, P+M]
    seen = np.tile(mask, (n_heads // n_kv, 1))  # [G*M, M], rows as in qg
    new = s[:, :, prefix:]
    s[:, :, prefix:] = np.where(seen, new, -np.inf)  # a masked key's value never survives
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    vt = v.transpose(1, 0, 2)  # [H_kv, P+M, D]
    out = p[:, :, :prefix] @ vt[:, :prefix]  # [H_kv, G*M, D]
    # new rows: each query row multiplies only its visible values (masked ones set to 0, so a
    # poisoned or uninitialised masked row cannot reach the result through 0 * inf)
    vis = np.where(seen[None, :, :, None], vt[:, None, prefix:], 0.0)  # [H_kv, G*M, M, D]
    out += np.einsum("krj,krjd->krd", p[:, :, prefix:], vis)
    return out.reshape(n_heads, m_rows, hd).transpose(1, 0, 2).astype(dt, copy=False)
