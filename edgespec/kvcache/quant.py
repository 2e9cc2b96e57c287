"""KV-cache quantizers: llama.cpp's q8_0/q4_0 blocks and GEAR's 4-bit + low-rank + sparse.

Two families, both pure functions over NumPy arrays (the stores in
:mod:`edgespec.kvcache.store` hold their outputs):

- **q8_0 / q4_0** (llama.cpp's ``ggml-quants.c``, ``quantize_row_q8_0_ref`` /
  ``quantize_row_q4_0_ref``): symmetric, one float16 scale ``d`` per group of 32 values along
  ``head_dim`` (the whole ``head_dim`` when it is not a multiple of 32). q8_0: ``d = amax/127``,
  ``q = round(x/d)``; q4_0: ``d = m/-8`` with ``m`` the signed value of largest magnitude,
  ``q = min(15, floor(x/d + 8.5))``, ``x^ = (q - 8) d``. Bytes per value 34/32 and 18/32, as
  llama.cpp's cache types.
- **GEAR** (Kang et al. 2024, "GEAR: An Efficient KV Cache Compression Recipe for
  Near-Lossless Generative Inference of LLM", arXiv:2403.05527), one block of ``B`` tokens of
  one layer at a time, per KV head, on ``X: float32[KV, B, hd]``:

  1. ``S``: the sparse outliers, the ``n_s = ceil(s B hd)`` entries per head that lie farthest
     from the mean of their quantization group, kept (float16 values, uint16 flat indices);
  2. ``D^ = Quant_4(X - S)``: uniform asymmetric 4-bit quantization of the rest (outliers set
     to their group's mean so that they do not stretch its range), with K grouped per channel
     over the block's ``B`` tokens and V per token over groups of ``hd`` (KIVI's layout,
     which GEAR-KIVI uses: keys have outlier channels, values do not);
  3. ``L = SVD_r(X - D^ - S)``: the rank-``r`` truncated SVD of what the quantizer missed,
     stored as float16 factors ``A [B, r]`` (``U_r Sigma_r``) and ``Bt [r, hd]`` (``V_r^T``).

  Reconstruction: ``X^ = D^ + A Bt``, then the outlier entries are overwritten by ``S``.

Error of the 4-bit part: the range ``[mn, mn + 15 scale]`` is rounded outwards to float16, so
every non-outlier value lies inside it and ``|x - d^| <= scale / 2``; the low-rank term can
only shrink the residual's Frobenius norm (to ``sqrt(sum_{i>r} sigma_i^2)``, plus the float16
rounding of the factors). ``tests/compress/test_kv_quant.py`` checks both bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: group size of q8_0/q4_0 along head_dim (llama.cpp's QK8_0 = QK4_0 = 32)
QK = 32


def q_group(head_dim: int) -> int:
    """Group size along ``head_dim`` for q8_0/q4_0: 32, or ``head_dim`` when 32 does not
    divide it (tiny test models)."""
    return QK if head_dim % QK == 0 else head_dim


def pack4(codes: np.ndarray) -> np.ndarray:
    """``uint8[..., n]`` codes in ``[0, 16)`` (n even) -> ``uint8[..., n/2]``, two per byte."""
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def unpack4(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack4`: ``uint8[..., n/2]`` -> ``uint8[..., n]``."""
    out = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


# --------------------------------------------------------------------------- q8_0 / q4_0


def quantize_q(x: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantize ``x: float[..., hd]`` as llama.cpp's q8_0 (``bits=8``) or q4_0 (``bits=4``).

    Returns:
        (codes, d): q8: ``int8[..., hd]``; q4: ``uint8[..., hd/2]`` (packed nibbles); and the
        scales ``float16[..., hd/g]`` (g = :func:`q_group`).
    """
    hd = x.shape[-1]
    g = q_group(hd)
    xg = x.astype(np.float32).reshape(*x.shape[:-1], hd // g, g)
    if bits == 8:
        d = np.abs(xg).max(axis=-1) / 127.0
        inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
        q = np.round(xg * inv[..., None]).astype(np.int8)
        return q.reshape(x.shape), d.astype(np.float16)
    if bits != 4:
        raise ValueError(f"bits must be 4 or 8, not {bits}")
    idx = np.abs(xg).argmax(axis=-1)[..., None]
    d = np.take_along_axis(xg, idx, axis=-1)[..., 0] / -8.0
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
    q = np.minimum(15, np.floor(xg * inv[..., None] + 8.5)).astype(np.uint8)
    return pack4(q.reshape(x.shape)), d.astype(np.float16)


def dequantize_q(codes: np.ndarray, d: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`quantize_q`: -> ``float32[..., hd]``."""
    q = codes.astype(np.float32) if bits == 8 else unpack4(codes).astype(np.float32) - 8.0
    hd = q.shape[-1]
    g = hd // d.shape[-1]
    x = q.reshape(*q.shape[:-1], hd // g, g) * d.astype(np.float32)[..., None]
    return x.reshape(q.shape)


# --------------------------------------------------------------------------- GEAR


@dataclass(frozen=True)
class GearConfig:
    """GEAR's knobs (defaults measured in docs/compression.md).

    Attributes:
        rank: r, rank of the low-rank correction per head and block (0: none).
        sparsity: s, share of each head's block kept as exact outliers (0: none).
        block: B, tokens compressed together (the low-rank and sparse parts are per block).
        window: recent tokens always kept in full precision (GEAR's streaming buffer).
    """

    rank: int = 4
    sparsity: float = 0.02
    block: int = 64
    window: int = 64

    def n_sparse(self, head_dim: int) -> int:
        """Outliers kept per head and block: ``ceil(s B hd)``."""
        return math.ceil(self.sparsity * self.block * head_dim)


def v_group(head_dim: int) -> int:
    """V's quantization group along head_dim: 64 when it divides ``head_dim``, else all."""
    return 64 if head_dim % 64 == 0 else head_dim


def _group_view(x: np.ndarray, kind: str) -> np.ndarray:
    """``x: [KV, B, hd]`` grouped for quantization: K as it is (a group is one channel over
    the block's B tokens: reduce axis 1); V as ``[KV, B, hd/g, g]`` (reduce axis -1)."""
    if kind == "k":
        return x
    KV, B, hd = x.shape
    g = v_group(hd)
    return x.reshape(KV, B, hd // g, g)


def _axis(kind: str) -> int:
    return 1 if kind == "k" else -1


def minmax_params(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float16 ``(mn, scale)`` of a 16-level uniform grid that covers ``[lo, hi]``: ``mn`` is
    rounded down and ``scale`` up to float16, so ``mn <= lo`` and ``mn + 15 scale >= hi``."""
    lo = lo.astype(np.float32)
    hi = hi.astype(np.float32)
    mn = lo.astype(np.float16)
    mn = np.where(mn.astype(np.float32) > lo, np.nextafter(mn, np.float16(-np.inf)), mn)
    scale = ((hi - mn.astype(np.float32)) / 15.0).astype(np.float16)
    top = mn.astype(np.float32) + np.float32(15.0) * scale.astype(np.float32)
    scale = np.where(top < hi, np.nextafter(scale, np.float16(np.inf)), scale)
    return mn.astype(np.float16), scale.astype(np.float16)


@dataclass
class GearBlock:
    """One compressed block ``[KV, B, hd]`` of K or V (shapes for ``kind``; ``G = hd/g``).

    Attributes:
        codes: ``uint8[KV, B, hd/2]`` packed 4-bit codes.
        mn, scale: float16 grid, K: ``[KV, 1, hd]``; V: ``[KV, B, G]``.
        a: ``float16[KV, B, r]`` and ``bt``: ``float16[KV, r, hd]``, the low-rank factors.
        sidx: ``uint16[KV, n_s]`` flat indices into ``B * hd``; ``sval``: ``float16[KV, n_s]``.
    """

    codes: np.ndarray
    mn: np.ndarray
    scale: np.ndarray
    a: np.ndarray
    bt: np.ndarray
    sidx: np.ndarray
    sval: np.ndarray


def _quant4(x: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4-bit min/max quantization of ``x: float32[KV, B, hd]`` in ``kind``'s groups ->
    (codes ``uint8[KV, B, hd]`` unpacked, mn, scale)."""
    xg = _group_view(x, kind)
    ax = _axis(kind)
    mn, scale = minmax_params(xg.min(axis=ax, keepdims=True), xg.max(axis=ax, keepdims=True))
    s32 = scale.astype(np.float32)
    inv = np.divide(1.0, s32, out=np.zeros_like(s32), where=s32 > 0)
    q = np.clip(np.round((xg - mn.astype(np.float32)) * inv), 0, 15).astype(np.uint8)
    if kind == "v":
        mn, scale = mn[..., 0], scale[..., 0]
    return q.reshape(x.shape), mn, scale


def _dequant4(q: np.ndarray, mn: np.ndarray, scale: np.ndarray, kind: str) -> np.ndarray:
    """``q: uint8[..., B, hd]`` (unpacked) with its grid -> ``float32[..., B, hd]``; works on
    any leading axes (one block, or many stacked)."""
    qf = q.astype(np.float32)
    if kind == "k":
        return qf * scale.astype(np.float32) + mn.astype(np.float32)
    hd = q.shape[-1]
    G = mn.shape[-1]
    qg = qf.reshape(*q.shape[:-1], G, hd // G)
    x = qg * scale.astype(np.float32)[..., None] + mn.astype(np.float32)[..., None]
    return x.reshape(q.shape)


def gear_compress(x: np.ndarray, kind: str, cfg: GearConfig) -> GearBlock:
    """Compress one block ``x: float[KV, B, hd]`` of keys (``kind="k"``) or values ("v")."""
    x = np.asarray(x, np.float32)
    KV, B, hd = x.shape
    if B * hd > 65536:
        raise ValueError(f"a GEAR block holds at most 65536 values per head, not {B * hd}")
    xg = _group_view(x, kind)
    center = np.broadcast_to(xg.mean(axis=_axis(kind), keepdims=True), xg.shape).reshape(x.shape)
    n_s = cfg.n_sparse(hd)
    flat = x.reshape(KV, B * hd)
    if n_s:
        dev = np.abs(flat - center.reshape(KV, B * hd))
        sidx = np.sort(np.argpartition(-dev, n_s - 1, axis=1)[:, :n_s], axis=1)
        sval = np.take_along_axis(flat, sidx, axis=1)
        kept = flat.copy()
        np.put_along_axis(kept, sidx, np.take_along_axis(center.reshape(KV, -1), sidx, 1), 1)
        inner = kept.reshape(x.shape)
    else:
        sidx = np.zeros((KV, 0), np.int64)
        sval = np.zeros((KV, 0), np.float32)
        inner = x
    q, mn, scale = _quant4(inner, kind)
    resid = (inner - _dequant4(q, mn, scale, kind)).reshape(KV, B * hd)
    np.put_along_axis(resid, sidx, 0.0, axis=1)  # outliers are overwritten by S anyway
    r = min(cfg.rank, B, hd)
    if r:
        u, sig, vt = np.linalg.svd(resid.reshape(KV, B, hd), full_matrices=False)
        a, bt = u[..., :r] * sig[:, None, :r], vt[:, :r, :]
    else:
        a, bt = np.zeros((KV, B, 0), np.float32), np.zeros((KV, 0, hd), np.float32)
    return GearBlock(
        codes=pack4(q),
        mn=mn,
        scale=scale,
        a=a.astype(np.float16),
        bt=bt.astype(np.float16),
        sidx=sidx.astype(np.uint16),
        sval=sval.astype(np.float16),
    )


def gear_decompress(blk: GearBlock, kind: str) -> np.ndarray:
    """Reconstruct ``float32[..., B, hd]`` from a block or from blocks stacked on leading
    axes (every field with the same leading axes, e.g. ``[KV, nb, ...]``)."""
    x = _dequant4(unpack4(blk.codes), blk.mn, blk.scale, kind)
    if blk.a.shape[-1]:
        x += blk.a.astype(np.float32) @ blk.bt.astype(np.float32)
    if blk.sidx.shape[-1]:
        shape = x.shape
        flat = x.reshape(*shape[:-2], shape[-2] * shape[-1])
        np.put_along_axis(flat, blk.sidx.astype(np.int64), blk.sval.astype(np.float32), -1)
        x = flat.reshape(shape)
    return x


def gear_quant_only(x: np.ndarray, kind: str) -> np.ndarray:
    """GEAR's 4-bit quantizer alone (no outliers, no low rank), reconstructed: the baseline
    that its corrections improve on (``float32[KV, B, hd]``)."""
    x = np.asarray(x, np.float32)
    q, mn, scale = _quant4(x, kind)
    return _dequant4(q, mn, scale, kind)
