"""The ``blockffn`` backend: BlockFFN checkpoints (their authors' HF format) run chunk-sparse.

``edgespec generate --backend blockffn --model <BlockFFN HF folder>`` loads the folder with
:func:`~edgespec.sparse.blockffn.load_blockffn` into a
:class:`~edgespec.sparse.blockffn.BlockFFNModel`, whose FFN computes only the union of the
expert blocks a forward's tokens activate, with ``KERNELS["sparse_ffn:<impl>"]``
(``--sparse-kernel``, default numpy). The engine, the strategies and the controller run it
like any backend; its cost curve has its own key variant (``sparse-<impl>``).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from edgespec.errors import EdgespecError, ModelLoadError
from edgespec.runtimes.base import Backend, LoadOptions, ModelSource
from edgespec.sparse.blockffn import BlockFFNModel, is_blockffn_folder, load_blockffn


class BlockFFNBackend(Backend):
    """Loads BlockFFN (MiniCPM ``ffn_type`` block / block_linear) HF folders."""

    name: ClassVar[str] = "blockffn"
    accepts: ClassVar[tuple[str, ...]] = ("hf",)
    requires: ClassVar[tuple[str, ...]] = ("numpy",)
    extra: ClassVar[str] = ""

    @classmethod
    def cheap_to_load(cls, source: ModelSource, options: LoadOptions) -> bool:
        """False: a NumPy forward is never the fast choice to time automatically."""
        return False

    @classmethod
    def load(cls, source: ModelSource, options: LoadOptions) -> BlockFFNModel:
        """A BlockFFN model with an empty cache of ``options.n_ctx`` positions.

        Raises:
            ModelLoadError: the folder is not a BlockFFN checkpoint, or a bad one.
            EdgespecError: an unknown dtype or sparse kernel.
        """
        path = Path(source.path).expanduser()
        if source.kind != "hf" or not is_blockffn_folder(path):
            raise ModelLoadError(
                f"'{source.name or path}' is not a BlockFFN checkpoint (config.json with "
                "ffn_type block or block_linear); use --backend numpy, onnx or llamacpp"
            )
        if options.n_ctx < 1:
            raise EdgespecError(f"n_ctx must be at least 1, got {options.n_ctx}")
        model = load_blockffn(
            path, n_ctx=options.n_ctx, dtype=options.dtype, kernel=options.sparse_kernel
        )
        model.info.extra["n_threads"] = None  # NumPy's BLAS keeps its own count
        return model
