"""Compute kernels with their NumPy references and tuning records (``edgespec.kernels``).

Layout (docs/design.md, "kernels/"): ``reference.py`` holds the NumPy references; TensorIR
builders (``qmatmul``, ``attention``, ``sparse_ffn``), MetaSchedule tuning (``tuning``) and the
OpenCL launcher (``opencl``) are added by the TVM and chunk-sparse work, each registered in
:data:`KERNELS` as ``"<op>:<impl>"`` (impl: ``numpy``, ``tvm`` or ``opencl``) and imported on
first use. Building blocks of several kernels are plain modules, not registered: ``expf``
(glibc's ``expf`` on vectors, for softmax and SiLU). The package is reached through the
committed symlink
``edgespec/kernels -> ../kernels``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edgespec.registry import Registry

#: "<op>:<impl>" -> a callable kernel (or a builder of one), imported on first use
KERNELS: Registry[Callable[..., Any]] = Registry("kernel")

__all__ = ["KERNELS"]

# NumPy references (kernels/reference.py): the FFN over a chunk's active rows and its dense twin
KERNELS.add_lazy("sparse_ffn:numpy", "edgespec.kernels.reference:sparse_ffn")
KERNELS.add_lazy("dense_ffn:numpy", "edgespec.kernels.reference:dense_ffn")
# ... compiled with TVM for this CPU: gathered rows read in place (kernels/sparse_ffn.py)
KERNELS.add_lazy("sparse_ffn:tvm", "edgespec.kernels.sparse_ffn:sparse_ffn")
KERNELS.add_lazy("dense_ffn:tvm", "edgespec.kernels.sparse_ffn:dense_ffn")
# ... the same on the weights quantized once to GGML's Q8_0 blocks (lossy)
KERNELS.add_lazy("sparse_ffn:tvm-q8", "edgespec.kernels.sparse_ffn:sparse_ffn_q8")
KERNELS.add_lazy("dense_ffn:tvm-q8", "edgespec.kernels.sparse_ffn:dense_ffn_q8")

# Block-quantized matmul on a GGUF tensor's own blocks (kernels/qmatmul.py, kernels/opencl.py)
KERNELS.add_lazy("qmatmul:numpy", "edgespec.kernels.reference:qmatmul")
KERNELS.add_lazy("qmatmul:tvm", "edgespec.kernels.qmatmul:QMatmul")
KERNELS.add_lazy("qmatmul:opencl", "edgespec.kernels.opencl:OpenCLQMatmul")

# Attention of M new rows over a KV cache under a tree (ancestor) mask (kernels/tree_attention.py)
KERNELS.add_lazy("tree_attention:numpy", "edgespec.kernels.reference:tree_attention")
KERNELS.add_lazy("tree_attention:tvm", "edgespec.kernels.tree_attention:tree_attention")
