"""Backends: one :class:`Backend` subclass per runtime, in one lazy registry.

Heavy imports (llama_cpp, onnxruntime, torch) live inside each backend's ``load``, so
``import edgespec`` stays fast and works with only NumPy installed.
"""

from __future__ import annotations

from edgespec.registry import Registry
from edgespec.runtimes.base import Backend, LoadOptions, ModelSource

BACKENDS: Registry[type[Backend]] = Registry("backend")
BACKENDS.add_lazy("numpy", "edgespec.runtimes.numpy_ref:NumpyBackend")
BACKENDS.add_lazy("llamacpp", "edgespec.runtimes.llamacpp:LlamaCppBackend")
BACKENDS.add_lazy("onnx", "edgespec.runtimes.ort:OnnxBackend")
BACKENDS.add_lazy("tvm", "edgespec.runtimes.tvm_backend:TvmBackend")
# BlockFFN checkpoints, chunk-sparse (edgespec/sparse; lives with the sparse FFN code)
BACKENDS.add_lazy("blockffn", "edgespec.sparse.backend:BlockFFNBackend")

#: For each source kind, the backends to try in order when the user names none.
PREFERRED: dict[str, tuple[str, ...]] = {
    "gguf": ("llamacpp", "numpy"),
    "hf": ("onnx", "numpy"),
    "onnx": ("onnx",),
}

__all__ = ["BACKENDS", "PREFERRED", "Backend", "LoadOptions", "ModelSource"]
