"""The chunk-sparse FFN kernel a model runs, chosen by name from :data:`edgespec.kernels.KERNELS`.

``LoadOptions.sparse_kernel`` (``--sparse-kernel numpy|tvm|tvm-q8``) names the implementation;
``KERNELS["sparse_ffn:<impl>"]`` provides it. The contract is the NumPy reference's
signature (:func:`edgespec.kernels.reference.sparse_ffn`)::

    kernel(x[M, d], rows int[A], gate[F, d] | None, up[F, d], down[d, F], *, act, scale)
        -> [M, d]

A registry entry that is a class (a builder, as ``qmatmul:tvm`` is) is instantiated once
without arguments and the instance is called with that signature. A kernel compiled for at
most R rows says so with an attribute ``max_rows`` (or its module's ``BUCKETS``); longer
forwards (a prompt) are then computed in groups of R rows, each over its own union
(:func:`max_rows`). A kernel that computes on weights it changed (quantized) has an
attribute ``lossy`` True (:func:`is_lossy`).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from edgespec.errors import EdgespecError, missing_extra

SparseKernel = Callable[..., np.ndarray]


def check_impl(impl: str) -> str:
    """``impl`` when ``KERNELS`` has ``sparse_ffn:<impl>`` (nothing is imported), else the
    one-line error of :func:`sparse_kernel`: a typo fails even for a model that is dense."""
    from edgespec.kernels import KERNELS

    if f"sparse_ffn:{impl}" not in KERNELS:
        sparse_kernel(impl)  # raises, naming the known ones
    return impl


@functools.cache
def sparse_kernel(impl: str = "numpy", op: str = "sparse_ffn") -> SparseKernel:
    """``KERNELS["<op>:<impl>"]``, ready to call (built once per process); ``op``
    "dense_ffn" gives the same backend's dense twin (:func:`dense_kernel`).

    Raises:
        EdgespecError: an unknown implementation (one line naming the known ones), or one
            whose dependencies are not installed (naming the extra).
    """
    from edgespec.kernels import KERNELS

    name = f"{op}:{impl}"
    known = sorted(n.split(":", 1)[1] for n in KERNELS.names() if n.startswith(f"{op}:"))
    if name not in KERNELS.names():
        what = "sparse kernel" if op == "sparse_ffn" else f"{op} kernel"
        raise EdgespecError(f"unknown {what} '{impl}'; known: {', '.join(known)} (--sparse-kernel)")
    try:
        entry: Any = KERNELS.get(name)
    except ImportError as exc:
        raise missing_extra(exc.name or impl, impl) from None
    return entry() if isinstance(entry, type) else entry


def dense_kernel(impl: str = "numpy") -> SparseKernel:
    """``KERNELS["dense_ffn:<impl>"]``: the dense FFN of the same backend as
    ``sparse_ffn:<impl>`` (arguments as the reference's ``dense_ffn``), the fair baseline
    and what a BlockFFN model's dense mode runs; the NumPy reference's when ``impl`` has
    none."""
    from edgespec.kernels import KERNELS

    return sparse_kernel(impl if f"dense_ffn:{impl}" in KERNELS else "numpy", "dense_ffn")


def is_lossy(kernel: SparseKernel) -> bool:
    """Whether ``kernel`` computes on weights it changed (its attribute ``lossy``: the
    ``tvm-q8`` kernels quantize them to Q8_0), so the model's output differs from its own
    float evaluation beyond rounding."""
    return bool(getattr(kernel, "lossy", False))


def stored_weight(kernel: SparseKernel, dense: SparseKernel, w: np.ndarray) -> Any:
    """``w [F, d]`` as a model should keep it for ``kernel`` and its dense twin: in the
    quantized form both read (their attribute ``weight_form``, e.g. "q8_0": a
    :class:`~edgespec.kernels.sparse_ffn.QuantizedWeight`, the float values dropped), else
    ``w`` itself."""
    form = getattr(kernel, "weight_form", None)
    if form is None or getattr(dense, "weight_form", None) != form:
        return w
    from edgespec.kernels.sparse_ffn import QuantizedWeight

    return QuantizedWeight.of(w, form)


def max_rows(kernel: SparseKernel) -> int | None:
    """The most token rows ``kernel`` takes in one call (None: any number): its attribute
    ``max_rows``, else the largest of its module's ``BUCKETS`` (compiled row buckets)."""
    rows = getattr(kernel, "max_rows", None)
    if rows is None:
        buckets = getattr(sys.modules.get(getattr(kernel, "__module__", "")), "BUCKETS", None)
        rows = max(buckets) if buckets else None
    return int(rows) if rows else None
