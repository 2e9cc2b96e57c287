"""KV stores for the NumPy reference backend: where a layer's keys and values live.

A store holds, per layer, K and V for positions ``0 .. n-1`` and answers one call per layer
and forward, :meth:`KVStore.update`: write the new rows, return the rows attention reads.
Every array is allocated at construction for the whole ``n_ctx`` (as llama.cpp allocates its
cells), so :attr:`KVStore.nbytes` is both what is held and what :meth:`layout_bytes` predicts
for any context (docs/compression.md's 8k numbers come from it).

- :class:`DenseStore` (``f32``): the model's compute dtype, exactly the arrays the model
  holds without a store (float64 in the float64 tests).
- :class:`QuantStore` (``q8``, ``q4``): llama.cpp's q8_0/q4_0 blocks, quantized on write.
- :class:`GearStore` (``gear4``): GEAR, the last ``window`` to ``window + block - 1`` tokens
  (plus the current forward's) in full precision, older tokens compressed block by block.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from edgespec.kvcache.quant import (
    GearBlock,
    GearConfig,
    dequantize_q,
    gear_compress,
    gear_decompress,
    q_group,
    quantize_q,
    v_group,
)


class KVStore(ABC):
    """Keys and values of every layer, ``[n_kv, positions, head_dim]`` per layer.

    Args:
        n_layers, n_kv, head_dim: the cache's layout.
        n_ctx: capacity in tokens.
        dtype: the model's compute dtype (what :meth:`update` returns).
        max_write: most rows one :meth:`update` usually writes (the model's chunk size);
            a store with a staging buffer sizes it for this and grows it for more.
    """

    #: the ``--kv-cache`` name
    name: ClassVar[str]
    #: whether reading back can differ from what was written
    lossy: ClassVar[bool]

    def __init__(
        self, n_layers: int, n_kv: int, n_ctx: int, head_dim: int, dtype: Any, max_write: int
    ) -> None:
        self.n_layers, self.n_kv, self.n_ctx, self.head_dim = n_layers, n_kv, n_ctx, head_dim
        self.dtype = np.dtype(dtype)
        self.max_write = max_write

    @abstractmethod
    def update(
        self, li: int, p0: int, k: np.ndarray, v: np.ndarray, k0: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Write ``k, v: [n_kv, T, head_dim]`` at positions ``p0 .. p0+T-1`` of layer ``li``
        (forgetting anything at ``p0`` or later) and return the keys and values of positions
        ``k0 .. p0+T-1``, ``[n_kv, p0+T-k0, head_dim]`` in the model's dtype."""

    @abstractmethod
    def commit_rows(self, base: int, rows: np.ndarray) -> None:
        """Keep positions ``rows`` (ascending, all >= ``base``) at ``base ..`` in every layer
        and forget the rest after ``base`` (a tree's accepted path)."""

    @abstractmethod
    def arrays(self) -> list[np.ndarray]:
        """Every array the store holds (what :attr:`nbytes` counts)."""

    @classmethod
    @abstractmethod
    def layout_bytes(
        cls, n_layers: int, n_kv: int, n_ctx: int, head_dim: int, itemsize: int, max_write: int
    ) -> int:
        """Bytes a store of this layout holds, from the layout alone (``itemsize``: bytes of
        the model's dtype)."""

    @property
    def nbytes(self) -> int:
        """Bytes held, summed over the actual arrays."""
        return sum(int(a.nbytes) for a in self.arrays())

    def fork(self) -> KVStore:
        """An independent copy."""
        return copy.deepcopy(self)


class DenseStore(KVStore):
    """Uncompressed K and V in the model's dtype (``f32``; float64 models keep float64)."""

    name = "f32"
    lossy = False
    #: the element type K and V are held in (None: the model's dtype)
    storage: ClassVar[Any] = None

    def __init__(
        self, n_layers: int, n_kv: int, n_ctx: int, head_dim: int, dtype: Any, max_write: int
    ) -> None:
        super().__init__(n_layers, n_kv, n_ctx, head_dim, dtype, max_write)
        shape = (n_layers, n_kv, n_ctx, head_dim)
        held = self.dtype if self.storage is None else self.storage
        self.k = np.zeros(shape, held)
        self.v = np.zeros(shape, held)

    def update(
        self, li: int, p0: int, k: np.ndarray, v: np.ndarray, k0: int
    ) -> tuple[np.ndarray, np.ndarray]:
        S = p0 + k.shape[1]
        self.k[li, :, p0:S] = k
        self.v[li, :, p0:S] = v
        return self.k[li, :, k0:S], self.v[li, :, k0:S]

    def commit_rows(self, base: int, rows: np.ndarray) -> None:
        n = len(rows)
        self.k[:, :, base : base + n] = self.k[:, :, rows]
        self.v[:, :, base : base + n] = self.v[:, :, rows]

    def arrays(self) -> list[np.ndarray]:
        return [self.k, self.v]

    @classmethod
    def layout_bytes(
        cls, n_layers: int, n_kv: int, n_ctx: int, head_dim: int, itemsize: int, max_write: int
    ) -> int:
        held = itemsize if cls.storage is None else np.dtype(cls.storage).itemsize
        return 2 * n_layers * n_kv * n_ctx * head_dim * held


class HalfStore(DenseStore):
    """K and V in float16, llama.cpp's default cache type: rounded to nearest when written,
    read back in the model's dtype (the reference of the tvm backend's ``--kv-cache f16``)."""

    name = "f16"
    lossy = True
    storage = np.float16

    def update(
        self, li: int, p0: int, k: np.ndarray, v: np.ndarray, k0: int
    ) -> tuple[np.ndarray, np.ndarray]:
        k16, v16 = super().update(li, p0, k, v, k0)
        return k16.astype(self.dtype), v16.astype(self.dtype)


class QuantStore(KVStore):
    """llama.cpp's q8_0 / q4_0 cache types: every row quantized on write (no window), read
    back dequantized (:func:`~edgespec.kvcache.quant.quantize_q`)."""

    bits: ClassVar[int]
    lossy = True

    def __init__(
        self, n_layers: int, n_kv: int, n_ctx: int, head_dim: int, dtype: Any, max_write: int
    ) -> None:
        super().__init__(n_layers, n_kv, n_ctx, head_dim, dtype, max_write)
        width = head_dim if self.bits == 8 else head_dim // 2
        code = np.int8 if self.bits == 8 else np.uint8
        groups = head_dim // q_group(head_dim)
        self.kc = np.zeros((n_layers, n_kv, n_ctx, width), code)
        self.vc = np.zeros_like(self.kc)
        self.kd = np.zeros((n_layers, n_kv, n_ctx, groups), np.float16)
        self.vd = np.zeros_like(self.kd)

    def update(
        self, li: int, p0: int, k: np.ndarray, v: np.ndarray, k0: int
    ) -> tuple[np.ndarray, np.ndarray]:
        S = p0 + k.shape[1]
        self.kc[li, :, p0:S], self.kd[li, :, p0:S] = quantize_q(k, self.bits)
        self.vc[li, :, p0:S], self.vd[li, :, p0:S] = quantize_q(v, self.bits)
        keys = dequantize_q(self.kc[li, :, k0:S], self.kd[li, :, k0:S], self.bits)
        vals = dequantize_q(self.vc[li, :, k0:S], self.vd[li, :, k0:S], self.bits)
        return keys.astype(self.dtype), vals.astype(self.dtype)

    def commit_rows(self, base: int, rows: np.ndarray) -> None:
        n = len(rows)
        for a in self.arrays():
            a[:, :, base : base + n] = a[:, :, rows]

    def arrays(self) -> list[np.ndarray]:
        return [self.kc, self.vc, self.kd, self.vd]

    @classmethod
    def layout_bytes(
        cls, n_layers: int, n_kv: int, n_ctx: int, head_dim: int, itemsize: int, max_write: int
    ) -> int:
        codes = head_dim if cls.bits == 8 else head_dim // 2
        scales = 2 * (head_dim // q_group(head_dim))
        return 2 * n_layers * n_kv * n_ctx * (codes + scales)


class Q8Store(QuantStore):
    """``q8``: llama.cpp's q8_0 (34 bytes per 32 values)."""

    name = "q8"
    bits = 8


class Q4Store(QuantStore):
    """``q4``: llama.cpp's q4_0 (18 bytes per 32 values)."""

    name = "q4"
    bits = 4


#: GearBlock's fields, in order
_FIELDS = ("codes", "mn", "scale", "a", "bt", "sidx", "sval")


def _gear_shapes(kind: str, n_kv: int, nb: int, head_dim: int, cfg: GearConfig) -> dict:
    """Shape and dtype of each stacked :class:`GearBlock` field of one layer (``nb`` blocks)."""
    B, r, n_s = cfg.block, cfg.rank, cfg.n_sparse(head_dim)
    grid = (1, head_dim) if kind == "k" else (B, head_dim // v_group(head_dim))
    f16, lead = np.float16, (n_kv, nb)
    return {
        "codes": ((*lead, B, head_dim // 2), np.uint8),
        "mn": ((*lead, *grid), f16),
        "scale": ((*lead, *grid), f16),
        "a": ((*lead, B, r), f16),
        "bt": ((*lead, r, head_dim), f16),
        "sidx": ((*lead, n_s), np.uint16),
        "sval": ((*lead, n_s), f16),
    }


class GearStore(KVStore):
    """GEAR (4-bit + rank-r + sparse, :func:`~edgespec.kvcache.quant.gear_compress`) over a
    full-precision recent window, GEAR's streaming buffer.

    Per layer the store holds ``nblk`` compressed blocks of ``block`` tokens (positions
    ``0 .. nblk*block-1``) and a full-precision tail after them. Before an update appends its
    rows, the oldest ``block`` tail tokens are compressed while the tail holds at least
    ``window + block``: the current forward and the ``window`` tokens before it are always
    read at full precision (a prefill's own attention is exact, as in GEAR), everything older
    through the compressed blocks. Compressing whole blocks lets the low-rank and sparse
    parts work on a ``block x head_dim`` matrix per head. Rolling back into a compressed
    block decompresses its kept rows into the tail (they stay lossy).
    """

    name = "gear4"
    lossy = True
    config: ClassVar[GearConfig] = GearConfig()

    def __init__(
        self, n_layers: int, n_kv: int, n_ctx: int, head_dim: int, dtype: Any, max_write: int
    ) -> None:
        super().__init__(n_layers, n_kv, n_ctx, head_dim, dtype, max_write)
        cfg = self.cfg = self.config
        if head_dim % 2:
            raise ValueError(f"gear4 needs an even head_dim, not {head_dim}")
        self.nb_max = self._nb_max(n_ctx, cfg)
        self.comp: dict[str, GearBlock] = {}
        for kind in ("k", "v"):
            shapes = _gear_shapes(kind, n_kv, self.nb_max, head_dim, cfg)
            self.comp[kind] = GearBlock(
                **{f: np.zeros((n_layers, *s), dt) for f, (s, dt) in shapes.items()}
            )
        cap = self._tail_cap(n_ctx, max_write, cfg)
        self.tail = {kind: np.zeros((n_layers, n_kv, cap, head_dim), self.dtype) for kind in "kv"}
        self.nblk = [0] * n_layers
        self.tlen = [0] * n_layers

    @staticmethod
    def _nb_max(n_ctx: int, cfg: GearConfig) -> int:
        return max(0, (n_ctx - cfg.window) // cfg.block)

    @staticmethod
    def _tail_cap(n_ctx: int, max_write: int, cfg: GearConfig) -> int:
        return min(n_ctx, cfg.window + cfg.block - 1 + max_write)

    # -- the store --------------------------------------------------------------------

    def update(
        self, li: int, p0: int, k: np.ndarray, v: np.ndarray, k0: int
    ) -> tuple[np.ndarray, np.ndarray]:
        B, T = self.cfg.block, k.shape[1]
        length = self.nblk[li] * B + self.tlen[li]
        if p0 > length:
            raise ValueError(f"layer {li} holds {length} positions; cannot write at {p0}")
        if p0 < length:
            self._truncate(li, p0)
        while self.tlen[li] >= self.cfg.window + B and self.nblk[li] < self.nb_max:
            self._compress_oldest(li)
        t = self.tlen[li]
        if t + T > self.tail["k"].shape[2]:  # a write larger than max_write: grow
            for kind in "kv":
                old = self.tail[kind]
                grown = np.zeros((*old.shape[:2], t + T, old.shape[3]), self.dtype)
                grown[:, :, : old.shape[2]] = old
                self.tail[kind] = grown
        self.tail["k"][li, :, t : t + T] = k
        self.tail["v"][li, :, t : t + T] = v
        self.tlen[li] = t + T
        return self._read(li, k0, "k"), self._read(li, k0, "v")

    def _read(self, li: int, k0: int, kind: str) -> np.ndarray:
        """Positions ``k0 ..`` of layer ``li``: decompressed blocks, then the tail (a view of
        it when no block is read)."""
        B, nb = self.cfg.block, self.nblk[li]
        c0 = nb * B
        tail = self.tail[kind][li, :, max(k0 - c0, 0) : self.tlen[li]]
        if k0 >= c0:
            return tail
        b0 = k0 // B
        stack = self.comp[kind]
        blk = GearBlock(**{f: getattr(stack, f)[li, :, b0:nb] for f in _FIELDS})
        old = gear_decompress(blk, kind).reshape(self.n_kv, (nb - b0) * B, self.head_dim)
        return np.concatenate([old[:, k0 - b0 * B :].astype(self.dtype), tail], axis=1)

    def _compress_oldest(self, li: int) -> None:
        B, j = self.cfg.block, self.nblk[li]
        for kind in "kv":
            tail = self.tail[kind]
            blk = gear_compress(tail[li, :, :B], kind, self.cfg)
            stack = self.comp[kind]
            for f in _FIELDS:
                getattr(stack, f)[li, :, j] = getattr(blk, f)
            tail[li, :, : self.tlen[li] - B] = tail[li, :, B : self.tlen[li]].copy()
        self.nblk[li] = j + 1
        self.tlen[li] -= B

    def _truncate(self, li: int, p: int) -> None:
        B = self.cfg.block
        c0 = self.nblk[li] * B
        if p >= c0:
            self.tlen[li] = p - c0
            return
        nb, rem = divmod(p, B)
        for kind in "kv":
            if rem:
                stack = self.comp[kind]
                blk = GearBlock(**{f: getattr(stack, f)[li, :, nb] for f in _FIELDS})
                self.tail[kind][li, :, :rem] = gear_decompress(blk, kind)[:, :rem]
        self.nblk[li], self.tlen[li] = nb, rem

    def commit_rows(self, base: int, rows: np.ndarray) -> None:
        n = len(rows)
        for li in range(self.n_layers):
            c0 = self.nblk[li] * self.cfg.block
            if base < c0:
                raise ValueError(f"tree base {base} lies in layer {li}'s compressed blocks")
            for kind in "kv":
                t = self.tail[kind]
                t[li, :, base - c0 : base - c0 + n] = t[li][:, np.asarray(rows) - c0]
            self.tlen[li] = base - c0 + n

    def arrays(self) -> list[np.ndarray]:
        out = [self.tail["k"], self.tail["v"]]
        for blk in self.comp.values():
            out += [getattr(blk, f) for f in _FIELDS]
        return out

    @classmethod
    def layout_bytes(
        cls, n_layers: int, n_kv: int, n_ctx: int, head_dim: int, itemsize: int, max_write: int
    ) -> int:
        cfg = cls.config
        nb = cls._nb_max(n_ctx, cfg)
        total = 2 * n_layers * n_kv * cls._tail_cap(n_ctx, max_write, cfg) * head_dim * itemsize
        for kind in ("k", "v"):
            for shape, dt in _gear_shapes(kind, n_kv, nb, head_dim, cfg).values():
                total += n_layers * int(np.prod(shape)) * np.dtype(dt).itemsize
        return total
