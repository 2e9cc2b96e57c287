"""GGUF quantized blocks -> ``com.microsoft.MatMulNBits`` inputs, without re-quantizing.

Every GGUF type handled here stores, per sub-block of ``block`` weights along a row, an
integer code ``q`` and either a scale (symmetric types) or a scale and an offset (affine
types)::

    symmetric  w = s * c                    Q4_0 (c = q-8), Q5_0 (q-16), Q8_0, Q6_K (q-32)
    affine     w = s * q + m                Q4_1, Q5_1, Q4_K, Q5_K  (q >= 0)

MatMulNBits dequantizes ``(code - zero_point) * scale`` with an *integer* zero point.
Symmetric types map exactly with the default zero point ``2^(bits-1)``. Affine types are
written as ``w = s * (q - zp) + r`` with ``zp = clip(round(-m / s), 0, 2^code_bits - 1)`` and
a per-block residual ``r = m + s * zp``; the graph adds ``blocksum(A) @ R^T`` to the
MatMulNBits output (:mod:`edgespec.export.gguf_exact`). Codes wider than 4 bits go into the
8-bit container.

The codes are decoded by ``gguf.quants.dequantize`` itself, on a copy of the blocks whose
scale fields are set to one and offset fields to zero, so no bit unpacking is written
here; only the scale/offset fields are read (their byte offsets are in :data:`LAYOUTS`).
:meth:`NBitsWeight.dequantize` rebuilds the float weights, which callers compare with
``gguf.quants.dequantize`` of the original blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES

from edgespec.errors import EdgespecError

_F16_ONE = np.frombuffer(np.float16(1.0).tobytes(), dtype=np.uint8)
#: Q4_K / Q5_K packed 6-bit (scale, min) bytes that unpack to scale 1, min 0 for all 8
#: sub-blocks (see ``gguf.quants.Q4_K.get_scale_min``)
_K_UNIT_SCALES = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1], dtype=np.uint8)


def _f16(blocks: np.ndarray, at: int) -> np.ndarray:
    """The float16 field at byte ``at`` of each block, as ``float32[n_blocks, 1]``."""
    return blocks[:, at : at + 2].copy().view(np.float16).astype(np.float32)


@dataclass(frozen=True)
class Layout:
    """Where one GGUF type keeps its scales and offsets.

    Attributes:
        block: weights per scale (the MatMulNBits ``block_size``).
        code_bits: bits of a code; the container is 4 bits when this is 4, else 8.
        affine: True when blocks carry an offset (``w = s*q + m``).
        unit: sets, in place, a copy of ``uint8[n_blocks, type_size]`` blocks to scale 1,
            offset 0, so that dequantizing it yields the codes.
        params: ``uint8[n_blocks, type_size] -> (s, m)``, each ``float32[n_blocks, n_sub]``
            (``m`` is None for symmetric types).
    """

    block: int
    code_bits: int
    affine: bool
    unit: Callable[[np.ndarray], None]
    params: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]

    @property
    def bits(self) -> int:
        """The MatMulNBits container width."""
        return 4 if self.code_bits == 4 else 8


def _unit_d(blocks: np.ndarray) -> None:
    blocks[:, 0:2] = _F16_ONE


def _unit_dm(blocks: np.ndarray) -> None:
    blocks[:, 0:2] = _F16_ONE
    blocks[:, 2:4] = 0


def _unit_k(blocks: np.ndarray) -> None:
    blocks[:, 0:2] = _F16_ONE  # d
    blocks[:, 2:4] = 0  # dmin
    blocks[:, 4:16] = _K_UNIT_SCALES


def _unit_q6k(blocks: np.ndarray) -> None:
    blocks[:, 192:208] = 1  # int8 sub-block scales
    blocks[:, 208:210] = _F16_ONE  # d


def _params_d(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    return _f16(blocks, 0), None


def _params_dm(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    return _f16(blocks, 0), _f16(blocks, 2)


def _params_k(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    sc, mn = quants.Q4_K.get_scale_min(blocks[:, 4:16].copy())
    return _f16(blocks, 0) * sc.astype(np.float32), -_f16(blocks, 2) * mn.astype(np.float32)


def _params_q6k(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    sc = blocks[:, 192:208].copy().view(np.int8).astype(np.float32)
    return _f16(blocks, 208) * sc, None


#: the GGUF types that map exactly onto MatMulNBits
LAYOUTS: dict[T, Layout] = {
    T.Q4_0: Layout(32, 4, False, _unit_d, _params_d),
    T.Q4_1: Layout(32, 4, True, _unit_dm, _params_dm),
    T.Q5_0: Layout(32, 5, False, _unit_d, _params_d),
    T.Q5_1: Layout(32, 5, True, _unit_dm, _params_dm),
    T.Q8_0: Layout(32, 8, False, _unit_d, _params_d),
    T.Q4_K: Layout(32, 4, True, _unit_k, _params_k),
    T.Q5_K: Layout(32, 5, True, _unit_k, _params_k),
    T.Q6_K: Layout(16, 6, False, _unit_q6k, _params_q6k),
}


@dataclass
class NBitsWeight:
    """A weight ``W float[N, K]`` (nn.Linear layout: ``Y = A @ W.T``) as MatMulNBits inputs.

    ``W[n, b*block + j] = scales[n, b] * (code[n, b*block + j] - zp[n, b]) + residual[n, b]``
    where ``zp`` is ``zero_points`` (unpacked) or ``2^(bits-1)`` when it is None, and the
    residual is 0 when it is None.

    Attributes:
        bits: 4 or 8.
        block: MatMulNBits ``block_size``.
        codes: ``uint8[N, K]``, one code per weight (unpacked).
        scales: ``float32[N, K/block]``.
        zero_points: ``uint8[N, K/block]`` (unpacked) or None.
        residual: ``float32[N, K/block]`` or None.
    """

    bits: int
    block: int
    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    residual: np.ndarray | None

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, K)``."""
        n, k = self.codes.shape
        return int(n), int(k)

    def packed(self) -> np.ndarray:
        """MatMulNBits ``B``: ``uint8[N, K/block, block*bits/8]``, low nibble first."""
        n, k = self.shape
        q = self.codes
        if self.bits == 4:
            q = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
        return np.ascontiguousarray(q.reshape(n, k // self.block, -1))

    def packed_zero_points(self) -> np.ndarray | None:
        """MatMulNBits ``zero_points``: ``uint8[N * ceil(K/block * bits / 8)]`` or None."""
        if self.zero_points is None:
            return None
        z = self.zero_points
        if self.bits == 4:
            if z.shape[1] % 2:
                z = np.concatenate([z, np.zeros((z.shape[0], 1), np.uint8)], axis=1)
            z = (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8)
        return np.ascontiguousarray(z.reshape(-1))

    def dequantize(self) -> np.ndarray:
        """``float32[N, K]``, computed in float64 from the codes, scales and residual."""
        n, k = self.shape
        nb = k // self.block
        zp = (
            np.full((n, nb), 1 << (self.bits - 1), np.float64)
            if self.zero_points is None
            else self.zero_points.astype(np.float64)
        )
        q = self.codes.reshape(n, nb, self.block).astype(np.float64) - zp[..., None]
        w = q * self.scales.astype(np.float64)[..., None]
        if self.residual is not None:
            w += self.residual.astype(np.float64)[..., None]
        return w.reshape(n, k).astype(np.float32)

    def with_zero_points(self) -> NBitsWeight:
        """The same weight with explicit zero points and residual (zeros where absent)."""
        n, k = self.shape
        nb = k // self.block
        zp = self.zero_points
        if zp is None:
            zp = np.full((n, nb), 1 << (self.bits - 1), np.uint8)
        r = self.residual if self.residual is not None else np.zeros((n, nb), np.float32)
        return NBitsWeight(self.bits, self.block, self.codes, self.scales, zp, r)


def concat_rows(parts: Sequence[NBitsWeight]) -> NBitsWeight:
    """Stack weights with the same ``bits`` and ``block`` along N (a fused projection)."""
    first = parts[0]
    if any(
        (p.bits, p.block, p.shape[1]) != (first.bits, first.block, first.shape[1]) for p in parts
    ):
        raise EdgespecError("cannot fuse MatMulNBits weights of different bits, blocks or K")
    if len(parts) == 1:
        return first
    if any(p.zero_points is not None for p in parts):
        parts = [p.with_zero_points() for p in parts]
    zps = [p.zero_points for p in parts]
    res = [p.residual for p in parts]
    return NBitsWeight(
        first.bits,
        first.block,
        np.concatenate([p.codes for p in parts]),
        np.concatenate([p.scales for p in parts]),
        None if zps[0] is None else np.concatenate(zps),  # type: ignore[arg-type]
        None if res[0] is None else np.concatenate(res),  # type: ignore[arg-type]
    )


def from_gguf(raw: np.ndarray, qtype: T) -> NBitsWeight:
    """Re-express a GGUF quantized tensor as MatMulNBits inputs, exactly.

    Args:
        raw: ``uint8[N, K / type_block * type_size]``, the tensor's bytes as
            ``GGUFReader`` gives them (one row per output feature).
        qtype: its type, a key of :data:`LAYOUTS`.

    Returns:
        the weight ``[N, K]``; ``dequantize()`` equals ``gguf.quants.dequantize(raw, qtype)``
        up to float32 rounding.
    """
    layout = LAYOUTS.get(qtype)
    if layout is None:
        known = ", ".join(t.name for t in LAYOUTS)
        raise EdgespecError(f"GGUF type {qtype.name} has no exact MatMulNBits form (have {known})")
    type_block, type_size = GGML_QUANT_SIZES[qtype]
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    n = raw.shape[0]
    blocks = raw.reshape(-1, type_size)
    unit = blocks.copy()
    layout.unit(unit)
    codes = quants.dequantize(unit.reshape(raw.shape), qtype)  # float32[N, K], integers
    k = codes.shape[1]
    s, m = layout.params(blocks)
    nb = k // layout.block
    s = s.reshape(n, nb)
    if m is None:
        stored = np.rint(codes).astype(np.int32) + (1 << (layout.bits - 1))
        return NBitsWeight(layout.bits, layout.block, stored.astype(np.uint8), s, None, None)
    m = m.reshape(n, nb)
    top = (1 << layout.code_bits) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        zp = np.where(s != 0, np.rint(-m.astype(np.float64) / s), 0.0)
    zp = np.clip(zp, 0, top)
    r = (m.astype(np.float64) + s.astype(np.float64) * zp).astype(np.float32)
    codes_u8 = np.rint(codes).astype(np.uint8)
    return NBitsWeight(layout.bits, layout.block, codes_u8, s, zp.astype(np.uint8), r)
