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


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``float32`` fused multiply-add ``a * b + c`` rounded once, as the hardware's FMA.

    ``a * b`` is exact in float64 (48 significant bits); ``a * b + c`` is rounded to odd in
    float64 (TwoSum gives the rounding error; an inexact even result moves one ulp towards
    it), and rounding to odd at 53 bits followed by rounding to nearest at 24 bits is the
    correctly rounded result (53 >= 24 + 2: Boldo and Melquiond, *Emulation of FMA and
    correctly rounded sums: proved algorithms using rounding to odd*, 2008).
    """
    p = np.asarray(a, np.float64) * np.asarray(b, np.float64)
    c64 = np.broadcast_to(np.asarray(c, np.float64), p.shape)
    s = p + c64
    bv = s - p
    err = (p - (s - bv)) + (c64 - bv)
    even = (s.view(np.int64) & 1) == 0
    fix = (err != 0) & even
    s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)


def quantize_q8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Activations as int8 per block of 32 (llama.cpp's ``Q8_0`` / ``Q8_1`` arithmetic on x86).

    Per row and block: ``amax = max |x|``, ``q = round_half_even(x * float32(127 / amax))``
    (0 when ``amax`` is 0), ``dx = float16(amax / 127)``, ``qs = sum q``, ``sx =
    float16(amax / 127 * qs)`` (float32 products).

    Args:
        x: ``float32[T, K]``, K a multiple of 32.

    Returns:
        ``(q int8[T, K], dx float32[T, K/32], qs int32[T, K/32], sx float32[T, K/32])``.
    """
    x = np.asarray(x, np.float32)
    t, k = x.shape
    xb = x.reshape(t, k // 32, 32)
    amax = np.abs(xb).max(axis=2)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(xb * inv[:, :, None]).astype(np.int32)
    d32 = (amax / np.float32(127)).astype(np.float32)
    qs = q.sum(axis=2).astype(np.int32)
    dx = d32.astype(np.float16).astype(np.float32)
    sx = (d32 * qs.astype(np.float32)).astype(np.float16).astype(np.float32)
    return q.reshape(t, k).astype(np.int8), dx, qs, sx


def qlinear_q8(x: np.ndarray, code: np.ndarray, d: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    """``x @ W^T`` on int8 activations, the arithmetic of ``kernels/qlinear_q8.py`` exactly.

    ``W = d * code + m`` per block of 32 weights along a row. With :func:`quantize_q8`'s
    ``q, dx, sx``, per block ``isum = code . q`` (exact integers), and over the blocks in
    order ``y = fma(m, sx, fma(d * dx, isum, y))`` in float32 (``d * dx`` is exact: two
    float16 values).

    Args:
        x: ``float32[T, K]``.
        code: integer codes ``int[N, K]``.
        d: ``float32[N, K/32]`` (float16 values).
        m: ``float32[N, K/32]`` or None (no offset).

    Returns:
        ``float32[T, N]``.
    """
    q, dx, _, sx = quantize_q8(x)
    t, k = q.shape
    n = code.shape[0]
    nb = k // 32
    isum = np.einsum(
        "tbr,nbr->tnb",
        q.reshape(t, nb, 32).astype(np.int64),
        np.asarray(code, np.int64).reshape(n, nb, 32),
    )
    y = np.zeros((t, n), np.float32)
    for b in range(nb):
        scale = (d[None, :, b] * dx[:, b, None]).astype(np.float32)
        y = fma32(scale, isum[:, :, b].astype(np.float32), y)
        if m is not None:
            y = fma32(np.broadcast_to(m[None, :, b], y.shape), sx[:, b, None], y)
    return y


def qlinear_q8_bound(
    x: np.ndarray, code: np.ndarray, d: np.ndarray, m: np.ndarray | None
) -> np.ndarray:
    """How far :func:`qlinear_q8` may be from ``x @ W^T`` in exact arithmetic, ``float64[T, N]``
    (``W = d * code + m`` as in :func:`qlinear_q8`).

    Activations: ``q`` is ``x * 127/amax`` rounded (half a unit), and ``dx`` is ``amax/127``
    rounded to float16 (``2^-11`` relative), so ``|dx q - x| <= eps = amax (1/254 + 2^-11)
    (1 + 2^-20)`` per value of a block; ``sx`` is ``dx qs`` within ``2^-10 |qs| amax/127 <=
    2^-10 * 32 amax (1.01)``. So the exact sum with the quantized activations is within
    ``sum_b eps_b sum_r |W| + |m_b| 2^-10 32 amax_b 1.01`` of ``x @ W^T``. Float32: each
    block adds its terms by fused multiply-adds (one rounding each, ``n = K/32`` or ``2K/32``
    in all), within ``gamma_n`` times the sum of the terms' magnitudes (Higham eq. 3.5 with
    exact products), ``|d code| (|x| + eps) + |m| 32 amax 1.01``.
    """
    x = np.asarray(x, np.float64)
    t, k = x.shape
    nb = k // 32
    amax = np.abs(x.reshape(t, nb, 32)).max(axis=2)
    eps = amax * (1 / 254 + 2.0**-11) * (1 + 2.0**-20)
    dper = np.repeat(np.asarray(d, np.float64), 32, axis=1)
    mb = np.zeros_like(dper[:, ::32]) if m is None else np.abs(np.asarray(m, np.float64))
    dc = np.abs(dper * np.asarray(code, np.float64))
    w = np.abs(dper * code + (0 if m is None else np.repeat(np.asarray(m, np.float64), 32, 1)))
    xa = np.abs(x) + np.repeat(eps, 32, axis=1)
    msx = 32 * 1.01 * amax @ mb.T
    quant = eps @ w.reshape(w.shape[0], nb, 32).sum(axis=2).T + 2.0**-10 * msx
    u, g = 2.0**-24, nb * (1 if m is None else 2)
    return quant + g * u / (1 - g * u) * (xa @ dc.T + msx)


def quantize_q8k(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Activations as int8 per 256 (llama.cpp's ``Q8_K``): ``mx`` the first value of largest
    ``|x|``, ``e = float32(-127 / mx)``, ``q = min(127, round_half_even(e * x))``, ``dx =
    float32(1 / e)`` (``q = 0``, ``dx = 0`` when ``mx`` is 0), and the sums of ``q`` per 16.

    Args:
        x: ``float32[T, K]``, K a multiple of 256.

    Returns:
        ``(q int8[T, K], dx float32[T, K/256], bs int32[T, K/16])``.
    """
    x = np.asarray(x, np.float32)
    t, k = x.shape
    xb = x.reshape(t, k // 256, 256)
    mx = np.take_along_axis(xb, np.abs(xb).argmax(axis=2)[:, :, None], axis=2)[:, :, 0]
    with np.errstate(divide="ignore"):
        e = np.where(mx != 0, np.float32(-127) / mx, np.float32(0)).astype(np.float32)
        dx = np.where(e != 0, np.float32(1) / e, np.float32(0)).astype(np.float32)
    q = np.minimum(np.rint(xb * e[:, :, None]), 127).astype(np.int32)
    bs = q.reshape(t, -1, 16).sum(axis=2).astype(np.int32)
    return q.reshape(t, k).astype(np.int8), dx, bs


def qlinear_q8k(
    x: np.ndarray,
    code: np.ndarray,
    d: np.ndarray,
    m: np.ndarray | None,
    sd: np.ndarray,
    sm: np.ndarray | None,
) -> np.ndarray:
    """``x @ W^T`` for K-quant weights on int8 activations, ``kernels/qlinear_q8k.py``'s
    arithmetic exactly: ``W = d * sd * code + m * sm`` per group (``g = K / sd.shape[1]``
    weights) with :func:`quantize_q8k`'s ``q, dx, bs``; per super-block ``acc = sum_g sd *
    (code . q)``, ``accm = sum_g sm * sum q`` (exact integers), then ``y = fma(m * dx,
    accm, fma(d * dx, acc, y))`` over the super-blocks in order (float32, ``d * dx`` rounded).

    Args:
        x: ``float32[T, K]``.
        code: ``int[N, K]``.
        d, m: ``float32[N, K/256]`` (``m`` None: no offset).
        sd, sm: integers ``[N, K/g]``.

    Returns:
        ``float32[T, N]``.
    """
    q, dx, bs = quantize_q8k(x)
    t, k = q.shape
    n, ng = sd.shape
    g, ns = k // ng, k // 256
    dots = np.einsum(
        "tgr,ngr->tng",
        q.reshape(t, ng, g).astype(np.int64),
        np.asarray(code, np.int64).reshape(n, ng, g),
    )
    gsum = bs.reshape(t, ng, g // 16).sum(axis=2).astype(np.int64)
    acc = (dots * np.asarray(sd, np.int64)[None]).reshape(t, n, ns, -1).sum(axis=3)
    y = np.zeros((t, n), np.float32)
    accm = None
    if m is not None and sm is not None:
        accm = (gsum[:, None, :] * np.asarray(sm, np.int64)[None]).reshape(t, n, ns, -1).sum(3)
    for s in range(ns):
        y = fma32((d[None, :, s] * dx[:, s, None]).astype(np.float32), acc[:, :, s], y)
        if m is not None and accm is not None:
            y = fma32((m[None, :, s] * dx[:, s, None]).astype(np.float32), accm[:, :, s], y)
    return y


def qlinear_q8k_bound(x: np.ndarray, dcode: np.ndarray, moff: np.ndarray) -> np.ndarray:
    """How far :func:`qlinear_q8k` may be from ``x @ W^T``, ``W = dcode + moff``, in exact
    arithmetic, ``float64[T, N]``.

    ``dcode = d sd code`` and ``moff = m sm`` per weight (``float[N, K]``). With the
    quantized activations the kernel's integer sums are exactly ``sum_r W_r dx q_r`` per
    super-block, and ``|x - dx q| <= eps = amax (1/254 + 2^-22)`` (``q`` rounded within
    half a unit of ``e x``, ``e`` and ``dx = 1/e`` each within ``2^-24`` relative). Float32:
    per super-block the scale ``d dx`` (``m dx``), the conversion of the integer sum and one
    fused multiply-add each round once, ``n = 3 (2 K/256)`` roundings along a row's sum at
    most: ``gamma_n`` times ``sum_r (|dcode_r| + |moff_r|) (|x_r| + eps)``.
    """
    x = np.asarray(x, np.float64)
    t, k = x.shape
    amax = np.abs(x.reshape(t, k // 256, 256)).max(axis=2)
    eps = np.repeat(amax * (1 / 254 + 2.0**-22), 256, axis=1)
    w = np.abs(np.asarray(dcode, np.float64) + moff)
    mag = (np.abs(x) + eps) @ (np.abs(dcode) + np.abs(moff)).T
    u, g = 2.0**-24, 3 * 2 * (k // 256)
    return eps @ w.T + g * u / (1 - g * u) * mag
