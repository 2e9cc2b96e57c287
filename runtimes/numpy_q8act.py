"""The NumPy reference with the tvm backend's int8-activation arithmetic (``--weights
gguf-q8act``) in its quantized matrices: the reference that build is held to.

:func:`with_int8_activations` swaps each matrix of a loaded NumPy model that the tvm build
multiplies on int8 activations (:func:`edgespec.kernels.qlinear_q8.prefer` on the file's
blocks) for a :class:`Q8ActMatrix`, whose ``x @ W`` is the kernel's NumPy reference
(:func:`edgespec.kernels.reference.qlinear_q8` / ``qlinear_q8k``: the activations quantized
per row exactly as the kernel does, integer dot products, float32 scaling in the kernel's
order). Everything else stays the reference's own arithmetic (float64 when loaded so). So the
tvm build and this model differ by float rounding outside the integer sums, not by the
activations' quantization error.

The weights are checked, not trusted: each swapped matrix's codes and scales must
dequantize bit for bit to the matrix the reference loaded through gguf-py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgespec.errors import ModelLoadError

#: ``float32[T, K] -> float32[T, N]``
MatmulFn = Callable[[np.ndarray], np.ndarray]


class Q8ActMatrix:
    """A ``[K, N]`` matrix for ``x @ W`` on int8-quantized activations.

    ``x: [..., K]`` (any float dtype) is cast to float32, as the tvm build's activations are,
    and the result, ``[..., N]``, comes back in ``x``'s dtype.
    """

    #: ``ndarray @ Q8ActMatrix`` defers to :meth:`__rmatmul__` instead of coercing this
    __array_ufunc__ = None

    def __init__(self, fn: MatmulFn, shape: tuple[int, int]) -> None:
        self.fn = fn
        self.shape = shape

    def __rmatmul__(self, x: np.ndarray) -> np.ndarray:
        k, n = self.shape
        x = np.asarray(x)
        if x.shape[-1] != k:
            raise ValueError(f"x @ W: x has {x.shape[-1]} features, W takes {k}")
        y = self.fn(np.ascontiguousarray(x.reshape(-1, k), np.float32))
        return y.astype(x.dtype).reshape(*x.shape[:-1], n)


def int8_matmul(packed: Any) -> MatmulFn | None:
    """The int8-activation product of ``packed`` (a
    :class:`~edgespec.kernels.qlinear.PackedQWeight`) as the tvm gguf-q8act build runs it, or
    None where that build keeps it on float activations."""
    from edgespec.kernels import qlinear, qlinear_q8, reference

    q8 = qlinear_q8.prefer(packed)
    if not isinstance(q8, qlinear_q8.Q8Weight):
        return None
    code = q8.codes()
    d, m = q8.scales()
    if qlinear.get_layout(packed.fmt).sub:  # K-quants: super-block scales and sub-scales
        o = packed.ops
        sd = qlinear.untile(o["sd"]).astype(np.int32)
        sm = qlinear.untile(o["sm"]).astype(np.int32) if "sm" in o else None
        return lambda x: reference.qlinear_q8k(x, code, d, m, sd, sm)
    return lambda x: reference.qlinear_q8(x, code, d, m)


def with_int8_activations(model: Any, path: Path) -> list[str]:
    """Give NumPy model ``model`` (loaded from GGUF file ``path``) the gguf-q8act build's
    int8-activation matrices, in place.

    Args:
        model: a :class:`~edgespec.runtimes.numpy_ref.NumpyModel`.
        path: the GGUF file it was loaded from.

    Returns:
        The graph names of the matrices swapped (``l0.wqkv``, ..., ``lm_head``).

    Raises:
        ModelLoadError: a swapped matrix's blocks do not dequantize to the loaded matrix.
    """
    from edgespec.runtimes.tvm_backend import gguf_matrices, gguf_model

    hp, _, spec, _ = gguf_model(path)
    packed, _ = gguf_matrices(path, spec, permuted_qk=hp.arch == "llama")
    w = model.w
    if w.tok_embd is None:  # tied: the embedding gathers from ``output``; keep a float copy
        w.tok_embd = np.ascontiguousarray(w.output.T)
    slots: dict[str, tuple[Any, str]] = {"lm_head": (w, "output")}
    for i, layer in enumerate(w.layers):
        for role in ("wqkv", "wo", "w_gate_up", "w_down"):
            slots[f"l{i}.{role}"] = (layer, role)
    swapped = []
    for name, p in packed.items():
        fn = int8_matmul(p)
        if fn is None:
            continue
        owner, attr = slots[name]
        loaded = getattr(owner, attr)
        if not np.array_equal(p.dequantize().T, loaded.astype(np.float32)):
            raise ModelLoadError(
                f"'{path}': matrix {name}'s blocks do not dequantize to the loaded weights"
            )
        setattr(owner, attr, Q8ActMatrix(fn, loaded.shape))
        swapped.append(name)
    return swapped
