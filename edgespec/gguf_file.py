"""Reading GGUF files with the ``gguf`` package: validation, metadata and architecture facts.

Every reader of a user-supplied GGUF goes through :func:`open_gguf`, so a missing,
truncated or corrupt file always becomes one clear :class:`ModelLoadError`.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgespec.errors import ModelLoadError
from edgespec.model import ModelInfo

GGUF_MAGIC = b"GGUF"
#: most blocks :func:`dequantize` puts in one row for ``gguf.quants.dequantize``
ROW_BLOCKS = 4096


@dataclass
class GGUFFile:
    """A validated GGUF file.

    Attributes:
        path: the file.
        reader: the ``gguf.GGUFReader`` (memory-mapped; tensors are read lazily).
        arch: ``general.architecture`` ("llama", "qwen2", "gemma3", ...).
        info: architecture facts.
    """

    path: Path
    reader: Any
    arch: str
    info: ModelInfo

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value (``contents()`` of the field), or ``default`` when absent."""
        field = self.reader.fields.get(key)
        if field is None:
            return default
        return field.contents()

    def arch_get(self, key: str, default: Any = None) -> Any:
        """An architecture-scoped value: ``get(f"{arch}.{key}")``."""
        return self.get(f"{self.arch}.{key}", default)

    def tokens(self) -> list[str]:
        """The vocabulary as GGUF stores it, in id order (``tokenizer.ggml.tokens``)."""
        return list(self.get("tokenizer.ggml.tokens", []))


def _fast_reader() -> type:
    """``gguf.GGUFReader`` with metadata arrays of strings and numbers read lazily.

    gguf-py reads every array element through its generic per-value path (memmap slices
    with byte-order views): a 151,936-token vocabulary and its merges took 27 s to open
    (Qwen2.5 1.5B, load average 9); building even one ``ndarray`` view per string, as this
    class once did, still took 1.3 s of every tvm load on the 2-core VM (docs/tvm.md,
    "Start-up time"), for arrays the tvm backend never reads (its tokenizer is llama.cpp's).
    Here an array of strings is one walk over its length prefixes, and an array of numbers one
    view; their field (:class:`_ArrayField`) keeps no per-element ``parts`` and decodes its
    ``contents()`` on first use, the values gguf-py gives. Nested arrays and files of the
    other byte order go through gguf-py's own code.
    """
    from gguf import GGUFReader, GGUFValueType, ReaderField

    class _ArrayField(ReaderField):  # type: ignore[misc]
        """A metadata array whose ``contents()`` are decoded on first use; ``data`` is
        ``range(n)`` and ``parts`` holds only the element type and count."""

        def contents(self, index_or_slice: int | slice = slice(None)) -> Any:
            values = self.__dict__.get("_values")
            if values is None:
                kind, *src = self.__dict__["_source"]
                if kind == "str":
                    u8, starts, sizes = src
                    mem = memoryview(u8)  # type: ignore[arg-type]
                    values = [
                        str(mem[a : a + n], encoding="utf-8")
                        for a, n in zip(starts, sizes, strict=True)
                    ]
                else:
                    values = src[0].tolist()
                self.__dict__["_values"] = values
            return values[index_or_slice]

    class FastReader(GGUFReader):  # type: ignore[misc]
        _pending: tuple[Any, ...] | None = None
        _nested = False

        def _get_field_parts(self, orig_offs: int, raw_type: int) -> Any:
            if (
                self._nested
                or GGUFValueType(raw_type) != GGUFValueType.ARRAY
                or self.byte_order != "I"
            ):
                return super()._get_field_parts(orig_offs, raw_type)
            raw_itype = self._get(orig_offs, np.uint32)
            alen = self._get(orig_offs + 4, np.uint64)
            itype = GGUFValueType(int(raw_itype[0]))
            if itype == GGUFValueType.ARRAY:  # arrays of arrays: gguf-py's parts, all the way
                self._nested = True
                try:
                    return super()._get_field_parts(orig_offs, raw_type)
                finally:
                    self._nested = False
            n, offs = int(alen[0]), orig_offs + 12
            u8 = self.data.view(np.ndarray)
            types = [GGUFValueType.ARRAY] + ([itype] if n else [])
            if itype == GGUFValueType.STRING:
                mem = memoryview(u8)  # type: ignore[arg-type]
                starts, sizes = [0] * n, [0] * n
                for i in range(n):
                    size = int.from_bytes(mem[offs : offs + 8], sys.byteorder)
                    starts[i], sizes[i] = offs + 8, size
                    offs += 8 + size
                self._pending = ("str", u8, starts, sizes)
                return offs - orig_offs, [raw_itype, alen], [], types
            dtype = np.dtype(self.gguf_scalar_to_np[itype])
            self._pending = ("num", u8[offs : offs + n * dtype.itemsize].view(dtype))
            return 12 + n * dtype.itemsize, [raw_itype, alen], [], types

        def _push_field(self, field: Any, skip_sum: bool = False) -> int:
            pending, self._pending = self._pending, None
            if pending is not None:
                n = int(field.parts[-1][0])  # the array's count, the field's last part
                field = _ArrayField(field.offset, field.name, field.parts, range(n), field.types)
                field.__dict__["_source"] = pending
            return int(super()._push_field(field, skip_sum))

    return FastReader


def _corrupt(path: Path, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"'{path}' is not a valid GGUF model ({why}); "
        "re-download it (for zoo models: edgespec models pull NAME --force)"
    )


@functools.lru_cache(maxsize=16)
def _open_cached(path: Path, size: int, mtime_ns: int) -> GGUFFile:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise _corrupt(path, f"bad magic {magic!r}")
    try:
        reader = _fast_reader()(path)
    except Exception as exc:  # the gguf package raises ValueError/IndexError/struct errors
        raise _corrupt(path, f"unreadable header: {type(exc).__name__}: {exc}") from None
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise _corrupt(path, f"truncated: tensor data needs {end} bytes, file has {size}")
    field = reader.fields.get("general.architecture")
    if field is None:
        raise _corrupt(path, "no general.architecture")
    arch = str(field.contents())

    def a(key: str, default: Any = 0) -> Any:
        f = reader.fields.get(f"{arch}.{key}")
        return default if f is None else f.contents()

    tokens = reader.fields.get("tokenizer.ggml.tokens")
    n_vocab = int(a("vocab_size", 0)) or (len(tokens.data) if tokens is not None else 0)
    info = ModelInfo(
        arch=arch,
        n_layers=int(a("block_count")),
        hidden_size=int(a("embedding_length")),
        vocab_size=n_vocab,
        context_length=int(a("context_length")),
        source=str(path),
        extra={
            "file_type": int(reader.fields["general.file_type"].contents())
            if "general.file_type" in reader.fields
            else -1
        },
    )
    return GGUFFile(path=path, reader=reader, arch=arch, info=info)


def open_gguf(path: str | Path) -> GGUFFile:
    """Open and validate a GGUF file (cached per path, size and mtime)."""
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise ModelLoadError(f"model file '{p}' does not exist; check the path")
    if not p.is_file():
        raise ModelLoadError(f"'{p}' is not a file; pass a .gguf file")
    st = p.stat()
    if st.st_size < 32:
        raise _corrupt(p, f"only {st.st_size} bytes")
    return _open_cached(p, st.st_size, st.st_mtime_ns)


def quick_check(path: str | Path) -> Path:
    """Cheap validation (existence, size, magic) before handing a file to llama.cpp.

    :func:`open_gguf` parses every metadata array in Python (seconds for a 49k vocabulary);
    this reads 4 bytes. llama.cpp's own loader then catches truncated tensor data.
    """
    p = Path(path).expanduser().resolve()
    if not p.exists():
        raise ModelLoadError(f"model file '{p}' does not exist; check the path")
    if not p.is_file():
        raise ModelLoadError(f"'{p}' is not a file; pass a .gguf file")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise _corrupt(p, f"bad magic {magic!r}")
    return p


def dequantize(data: np.ndarray, qtype: Any) -> np.ndarray:
    """``gguf.quants.dequantize(data, qtype)`` as ``float32`` (same values, bit for bit), fast.

    gguf-py runs its vectorized block code on 16 rows of ``data`` at a time; a tensor's rows
    hold few blocks (6 for a Q4_K row of 1536 weights) and code that passes one block per row
    pays Python overhead per 16 blocks. Every block dequantizes on its own, so the blocks are
    regrouped first into rows of up to :data:`ROW_BLOCKS` blocks (a divisor of their count).

    Args:
        data: a quantized tensor's bytes ``uint8[..., n_bytes]`` (whole blocks per row), or
            a float tensor.
        qtype: its ``gguf.GGMLQuantizationType``.

    Returns:
        ``float32[..., n_weights]`` (the weights of each row of ``data``).
    """
    from gguf import quants
    from gguf.constants import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[qtype]
    if block == 1 or data.size == 0:  # F32, F16, BF16, integers: no blocks
        return np.asarray(quants.dequantize(data, qtype), dtype=np.float32)
    n_blocks = data.size // size
    per_row = math.gcd(n_blocks, ROW_BLOCKS)
    rows = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1, per_row * size)
    out = np.asarray(quants.dequantize(rows, qtype), dtype=np.float32)
    return out.reshape(*data.shape[:-1], data.shape[-1] // size * block)
