"""Token embedding rows on the host, gathered from the table as the model file stores it.

A decoder's first step looks up ``T`` rows of its ``[V, D]`` embedding table. Dequantizing
the whole table to float32 at load, as the ``tvm`` backend did, cost the Qwen2.5 1.5B 933 MB
of memory (151,936 x 1,536 floats, against 131 MB of Q4_K blocks in the file) and 2.6 s of
every load on the 2-core VM (docs/tvm.md, "Start-up time"). :class:`EmbeddingRows` keeps
a quantized table in the GGUF file's memory map instead and dequantizes a token's row the
first time a forward needs it (``gguf.quants``' values through
:func:`edgespec.gguf_file.dequantize`, the same floats as the whole table dequantized, bit for
bit: every block dequantizes on its own), keeping up to :data:`CACHED_ROWS` of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: dequantized rows kept between forwards (then the cache starts over): 25 MB for the Qwen
#: 1.5B's 1,536 floats a row, more than the distinct tokens of most sessions
CACHED_ROWS = 4096


class EmbeddingRows:
    """``rows(ids) -> float32[T, D]``: a float32 table indexed, or a quantized one
    dequantized a row at a time (and cached).

    Args:
        table: ``float32[V, D]`` (held as is), or the file's rows ``uint8[V, row_bytes]`` of
            ``qtype`` blocks (a memory map is read in place).
        qtype: the ``gguf.GGMLQuantizationType`` of ``table``'s rows; None: ``table`` is the
            float32 table itself.
        dim: ``D``, the floats of a row (the table's second axis when ``qtype`` is None).
    """

    def __init__(self, table: np.ndarray, qtype: Any = None, dim: int | None = None) -> None:
        if qtype is None:
            table = np.ascontiguousarray(table, dtype=np.float32)
        self.table = table
        self.qtype = qtype
        self.dim = int(dim if dim is not None else table.shape[1])
        self._rows: dict[int, np.ndarray] = {}

    @classmethod
    def from_gguf(cls, tensor: Any) -> EmbeddingRows:
        """The rows of a ``gguf.GGUFReader`` tensor ``[V, D]``: float32 ones held as they are
        mapped, any other type dequantized on demand."""
        from gguf import GGMLQuantizationType

        dim = int(tensor.shape[0])  # GGUF lists ne0 (a row's weights) first
        data = tensor.data.reshape(int(tensor.shape[1]), -1)
        if tensor.tensor_type == GGMLQuantizationType.F32:
            return cls(data)
        return cls(data, tensor.tensor_type, dim)

    @property
    def vocab(self) -> int:
        """``V``, the rows of the table."""
        return int(self.table.shape[0])

    def rows(self, ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The rows of token ``ids`` (``int[T]``, each in ``[0, V)``) as ``float32[T, D]``,
        written into ``out`` when given."""
        ids = np.asarray(ids).reshape(-1)
        if out is None:
            out = np.empty((ids.size, self.dim), dtype=np.float32)
        if self.qtype is None:
            np.take(self.table, ids, axis=0, out=out)
            return out
        cache = self._rows
        keys = ids.tolist()
        if len(keys) == 1 and keys[0] in cache:  # a plain step's token, seen before
            out[0] = cache[keys[0]]
            return out
        missing = sorted({i for i in keys if i not in cache})
        if missing:
            from edgespec.gguf_file import dequantize

            if len(cache) + len(missing) > CACHED_ROWS:  # start over, with every id here
                cache.clear()
                missing = sorted(set(keys))
            new = dequantize(self.table[missing], self.qtype).reshape(len(missing), self.dim)
            if len(missing) > CACHED_ROWS:  # a long prompt: these rows alone, none kept
                at = np.searchsorted(missing, ids)
                np.take(new, at, axis=0, out=out)
                return out
            cache.update(zip(missing, new, strict=True))
        for r, i in enumerate(keys):
            out[r] = cache[i]
        return out

    def dense(self) -> np.ndarray:
        """The whole table as ``float32[V, D]`` (what a quantized table is, dequantized)."""
        if self.qtype is None:
            return self.table
        from edgespec.gguf_file import dequantize

        return dequantize(self.table, self.qtype).reshape(self.vocab, self.dim)
