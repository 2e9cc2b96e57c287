"""NumPy references for the compute kernels (``edgespec.kernels.reference``).

Every other implementation of an op (TVM, OpenCL) is tested against the function of the same
name here. They favour clarity over speed, but they are the ``:numpy`` implementations that
the NumPy paths run, so they avoid needless copies.

Shapes use M for the tokens of a chunk (1 for plain decoding, k+1 for a verify, the node
count of a tree), d for the model width, F for the FFN width and A for the active rows.
"""

from __future__ import annotations

import numpy as np


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
