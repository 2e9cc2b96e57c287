"""Attention of M new rows over a KV cache under a tree mask, as TensorIR (TVM, CPU).

The M rows of a chunk (1 for plain decoding, k+1 to verify k drafts, the nodes of a token
tree) have been appended to the cache after the committed prefix of length P; row i sees all
P prefix positions and the new rows j with ``mask[i, j]`` (its ancestors and itself)::

    s[i, h, t] = q[i, h, :] . k[t, h // G, :] / sqrt(D)        t in [0, P + M)
    visible(i, t) = t < P  or  mask[i, t - P]
    out[i, h, :] = sum_t softmax_t(s | visible)[i, h, t] * v[t, h // G, :]

with the row maximum subtracted before ``exp`` (float32 throughout) and ``G = H / H_kv`` query
heads per KV head (GQA). A masked position enters the result through no arithmetic: its score
and its value are replaced by ``select`` (not multiplied by 0), so a poisoned, stale or
uninitialised cache row of another branch cannot change it, not even as inf or NaN.

The cache length ``n_ctx = P + M`` and P are ``tir.Var`` (P is a scalar argument): one kernel
per row bucket M (:data:`BUCKETS`; a call pads its rows up, padded rows see the prefix and
new row 0 and are dropped) serves every cache length. ``k``/``v`` are read in place (DLPack)
when they are float32, C-contiguous and 64-byte aligned, e.g. a preallocated cache sliced to
its first ``P + M`` rows.

Schedule (:func:`schedule_cpu`, untuned): parallel over (row, query head) pairs, one softmax
row per task (each reads its KV head's keys and values; nothing is shared between the query
heads of a GQA group, see docs/tvm.md for the grouped schedule tried); the scores' reduction
over D split into :data:`LANES` partial sums (``rfactor``) so the inner loop runs over
consecutive elements of one key row and vectorizes; the exponentials computed :data:`LANES`
at a time; the value product with D innermost (contiguous, vectorized).
:class:`TreeAttention` takes any :data:`~edgespec.kernels.tuning.Scheduler`; no MetaSchedule
record is made for it yet (the scalar P and the mask need valid values among MetaSchedule's
random arguments).

Tolerance: :func:`attention_bound`, a first-order float32 error bound derived from the
expression (tests/kernels/test_tree_attention.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgespec.kernels import compiled
from edgespec.kernels.compiled import (
    BUCKETS,
    CompiledKernels,
    aligned_zeros,
    as_operand,
)
from edgespec.kernels.compiled import tvm_module as _tvm
from edgespec.kernels.reference import check_tree_attention

if TYPE_CHECKING:
    from tvm.ir import IRModule
    from tvm.target import Target
    from tvm.tirx import PrimFunc

    from edgespec.kernels.tuning import Scheduler

#: name of the compiled TVM function
FUNC_NAME = "tree_attention"
#: partial-sum lanes of the score reduction over D (16 float32 = one AVX-512 register)
LANES = 16


@dataclass(frozen=True)
class AttentionShape:
    """What one compiled kernel is specialised for (the cache length and P are not).

    Attributes:
        m_rows: M, the row bucket.
        n_heads: H, query heads.
        n_kv: H_kv, key/value heads (H a multiple of it).
        head_dim: D.
    """

    m_rows: int
    n_heads: int
    n_kv: int
    head_dim: int

    @property
    def key(self) -> str:
        """The kernel-and-shape key, as tuning records name them: ``tree_attention-m4-h9-kv3
        -d64``."""
        return f"{FUNC_NAME}-m{self.m_rows}-h{self.n_heads}-kv{self.n_kv}-d{self.head_dim}"


def attention_func(shape: AttentionShape) -> PrimFunc:
    """The unscheduled TensorIR function ``tree_attention(q, k, v, mask, n_prefix, out)``.

    Operands: ``q f32[M, H, D]``, ``k, v f32[n_ctx, H_kv, D]``, ``mask int8[M, M]`` (nonzero:
    visible), ``n_prefix`` int64 (P), ``out f32[M, H, D]``. Blocks: ``s`` (scores, the
    reduction over D), ``mx`` (row maxima), ``e`` (``exp``, 0 where masked), ``z`` (row sums),
    ``o`` (the value product), ``out`` (``o / z``).
    """
    _tvm()
    from tvm import te, tirx

    m, heads, n_kv, hd = shape.m_rows, shape.n_heads, shape.n_kv, shape.head_dim
    group = heads // n_kv
    n_ctx = te.var("n_ctx", "int64")
    prefix = te.var("n_prefix", "int64")
    q = te.placeholder((m, heads, hd), "float32", name="q")
    k = te.placeholder((n_ctx, n_kv, hd), "float32", name="k")
    v = te.placeholder((n_ctx, n_kv, hd), "float32", name="v")
    mask = te.placeholder((m, m), "int8", name="mask")
    scale = tirx.const(float(1.0 / np.sqrt(hd)), "float32")
    lowest = tirx.min_value("float32")
    zero = tirx.const(0.0, "float32")

    def visible(i: Any, t: Any) -> Any:
        j = tirx.min(tirx.max(t - prefix, tirx.const(0, "int64")), tirx.const(m - 1, "int64"))
        return tirx.Or(t < prefix, mask[i, j] != tirx.const(0, "int8"))

    rd = te.reduce_axis((0, hd), name="rd")
    s = te.compute(
        (m, heads, n_ctx),
        lambda i, h, t: te.sum(q[i, h, rd] * k[t, h // group, rd], axis=rd),
        name="s",
    )
    rt = te.reduce_axis((0, n_ctx), name="rt")
    mx = te.compute(
        (m, heads),
        lambda i, h: te.max(tirx.Select(visible(i, rt), s[i, h, rt] * scale, lowest), axis=rt),
        name="mx",
    )
    e = te.compute(
        (m, heads, n_ctx),
        lambda i, h, t: tirx.Select(visible(i, t), tirx.exp(s[i, h, t] * scale - mx[i, h]), zero),
        name="e",
    )
    rz = te.reduce_axis((0, n_ctx), name="rz")
    z = te.compute((m, heads), lambda i, h: te.sum(e[i, h, rz], axis=rz), name="z")
    ro = te.reduce_axis((0, n_ctx), name="ro")
    o = te.compute(
        (m, heads, hd),
        lambda i, h, c: te.sum(
            tirx.Select(visible(i, ro), e[i, h, ro] * v[ro, h // group, c], zero), axis=ro
        ),
        name="o",
    )
    out = te.compute((m, heads, hd), lambda i, h, c: o[i, h, c] / z[i, h], name="out")
    func = te.create_prim_func([q, k, v, mask, prefix, out])
    return func.with_attr("global_symbol", FUNC_NAME)


def schedule_cpu(func: PrimFunc) -> IRModule:
    """The untuned CPU schedule (module docstring): one task per (row, head), its score row,
    maximum, exponentials, sum and value product computed inside it."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    # scores: D in LANES partial sums. rfactor before compute_at, so that the partial sums of
    # one key live in a local buffer inside the task and are summed right away (rfactor after
    # compute_at left s_rf as a global [M, H, n_ctx, LANES] buffer written by a loop of its
    # own: 9.6 MB for M = 16, P = 1024, H = 9)
    _, rv = sch.split(sch.get_loops(sch.get_sblock("s"))[-1], [None, LANES])
    rf = sch.rfactor(rv, factor_axis=3)  # s_rf[i, h, t, lane]
    blk_out = sch.get_sblock("out")
    i, h, _ = sch.get_loops(blk_out)
    ih = sch.fuse(i, h)
    sch.parallel(ih)
    for name in ("o", "z", "e", "mx", "s"):
        sch.compute_at(sch.get_sblock(name), ih)
    lane, t = sch.get_loops(sch.get_sblock("s"))[1:]
    sch.reorder(t, lane)
    sch.compute_at(rf, t)
    sch.set_scope(rf, 0, "local")
    d_lane, d_outer = sch.get_loops(rf)[-2:]
    sch.reorder(d_outer, d_lane)  # the lane loop innermost: one contiguous run of a key row
    sch.decompose_reduction(rf, d_outer)
    # exponentials: the loop split into LANES-wide vectors (13.6 -> 8.8 ms for M = 16,
    # P = 1024, H = 9, D = 64 on one core), though LLVM still calls the scalar expf per lane
    t_e = sch.get_loops(sch.get_sblock("e"))[-1]
    _, t_lanes = sch.split(t_e, [None, LANES])
    sch.vectorize(t_lanes)
    # value product: t outside, D innermost (contiguous rows of v, vectorized)
    blk_o = sch.get_sblock("o")
    c, ro = sch.get_loops(blk_o)[1:]
    sch.reorder(ro, c)
    sch.decompose_reduction(blk_o, ro)
    sch.vectorize(sch.get_loops(blk_out)[-1])
    return sch.mod


def cpu_scheduler(func: PrimFunc, target: Target, key: str) -> IRModule:
    """The untuned :data:`~edgespec.kernels.tuning.Scheduler`: :func:`schedule_cpu`."""
    return schedule_cpu(func)


def bucket_for(m_rows: int, buckets: Sequence[int] = BUCKETS) -> int:
    """The smallest bucket that holds ``m_rows`` rows."""
    return compiled.bucket_for(m_rows, buckets, "tree attention", "verify a smaller tree")


#: float32 roundings of one exponent's way from the score to ``exp``, relative: the product by
#: the scale and the scale's own rounding (2 x ``u |x|``), and ``exp`` itself (2: within one ulp
#: in LLVM's libm, as :data:`edgespec.kernels.sparse_ffn.ACT_ROUNDINGS` counts it)
EXP_ROUNDINGS = 2


def attention_bound(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A first-order forward error bound of the float32 kernel, ``float64[M, H, D]``.

    With ``gamma_n = n u / (1 - n u)``, ``u = 2^-24`` (Higham, eq. 3.5), the exact scaled
    scores ``x_t``, row maximum ``m``, probabilities ``p_t`` and result ``o`` (float64 from the
    float32 inputs) and L = P + M: each computed ``exp`` is ``e_t (1 + eta_t)`` with::

        eta_t = c gamma_D |q| . |k_t| + 2 u |x_t| + u |x_t - m| + EXP_ROUNDINGS u

    (the dot product, the scaling, the subtraction of the maximum, ``exp``; an error in the
    maximum is common to all t and cancels in the ratio). Then ``z = sum e`` and
    ``o' = sum e v`` carry ``gamma_L`` relative to their terms' magnitudes and the division
    one ``u``, so to first order::

        |out - o| <= sum_t p_t eta_t (|v_t| + |o|) + gamma_L sum_t p_t |v_t| + (gamma_L + u)|o|

    Masked positions have ``p_t = 0`` and contribute nothing. Terms of order ``u^2`` are left
    out.
    """
    u = 2.0**-24

    def gamma(n: int) -> float:
        return n * u / (1 - n * u)

    prefix = check_tree_attention(q, k, v, mask)
    m_rows, n_heads, hd = q.shape
    n_ctx, n_kv, _ = k.shape
    f64 = np.float64
    c = 1.0 / np.sqrt(hd)
    qg = np.asarray(q, f64).transpose(1, 0, 2).reshape(n_kv, -1, hd)  # [H_kv, G*M, D]
    kt = np.asarray(k, f64).transpose(1, 2, 0)  # [H_kv, D, L]
    vt = np.asarray(v, f64).transpose(1, 0, 2)  # [H_kv, L, D]
    seen = np.ones((qg.shape[1], n_ctx), bool)
    seen[:, prefix:] = np.tile(np.asarray(mask, bool), (n_heads // n_kv, 1))
    x = np.where(seen, c * (qg @ kt), -np.inf)
    mx = x.max(axis=-1, keepdims=True)
    p = np.exp(x - mx)
    p /= p.sum(axis=-1, keepdims=True)
    vis = np.where(seen[None, :, :, None], vt[:, None], 0.0)  # [H_kv, G*M, L, D]
    out = np.einsum("krt,krtd->krd", p, vis)
    dots = c * gamma(hd) * (np.abs(qg) @ np.abs(kt))
    xf = np.where(seen, x, 0.0)
    eta = dots + 2 * u * np.abs(xf) + u * np.abs(xf - mx) + EXP_ROUNDINGS * u
    pv = np.einsum("krt,krtd->krd", p, np.abs(vis))
    pe = p * eta
    err = np.einsum("krt,krtd->krd", pe, np.abs(vis)) + pe.sum(-1, keepdims=True) * np.abs(out)
    err += gamma(n_ctx) * pv + (gamma(n_ctx) + u) * np.abs(out)
    return err.reshape(n_heads, m_rows, hd).transpose(1, 0, 2)


class TreeAttention(CompiledKernels[AttentionShape]):
    """Compiled tree attention kernels per :class:`AttentionShape`.

    Args:
        target: default :func:`edgespec.kernels.tuning.host_target`.
        scheduler: the scheduled module of each shape (default :func:`cpu_scheduler`).
        buckets: the row counts compiled (lazily, on first use).
    """

    def __init__(
        self,
        *,
        target: Target | None = None,
        scheduler: Scheduler | None = None,
        buckets: Sequence[int] = BUCKETS,
    ) -> None:
        super().__init__(
            attention_func, FUNC_NAME, scheduler or cpu_scheduler, target=target, buckets=buckets
        )

    def __call__(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """See :func:`tree_attention`."""
        tvm = _tvm()
        prefix = check_tree_attention(q, k, v, mask)
        m_rows, n_heads, hd = q.shape
        bucket = bucket_for(m_rows, self.buckets)
        shape = AttentionShape(bucket, n_heads, k.shape[1], hd)
        qp = aligned_zeros((bucket, n_heads, hd), np.float32)
        qp[:m_rows] = q
        mp = np.zeros((bucket, bucket), np.int8)
        mp[:m_rows, :m_rows] = mask
        mp[m_rows:, 0] = 1  # padded rows see new row 0 (never a softmax over nothing)
        out = aligned_zeros((bucket, n_heads, hd), np.float32)
        self.function(shape)(
            tvm.runtime.from_dlpack(qp),
            as_operand(k),
            as_operand(v),
            tvm.runtime.tensor(mp),
            prefix,
            tvm.runtime.from_dlpack(out),
        )
        res = out[:m_rows]
        return res if q.dtype == np.float32 else res.astype(q.dtype)


_DEFAULT: TreeAttention | None = None


def default_kernels() -> TreeAttention:
    """The process-wide :class:`TreeAttention` of the registry entry: this CPU's target, the
    untuned schedule."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = TreeAttention()
    return _DEFAULT


def tree_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``KERNELS["tree_attention:tvm"]``: :func:`edgespec.kernels.reference.tree_attention`
    compiled, in float32.

    Args:
        q: ``float[M, H, D]``, M up to the largest bucket (16).
        k: ``float[P + M, H_kv, D]``: the prefix, then the M new rows (read in place when
            float32, C-contiguous and 64-byte aligned; else copied for the call).
        v: ``float[P + M, H_kv, D]``, like ``k``.
        mask: ``bool[M, M]`` ancestor-or-self mask among the new rows (True on the diagonal).

    Returns:
        ``float[M, H, D]`` in ``q``'s dtype, computed in float32.
    """
    return default_kernels()(q, k, v, mask)
