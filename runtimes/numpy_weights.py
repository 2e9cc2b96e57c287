"""Weight readers for the NumPy reference: dequantized GGUF tensors and HF safetensors folders.

Both readers return plain ``float32`` NumPy arrays in PyTorch's ``nn.Linear`` layout
(``[out_features, in_features]``); :mod:`edgespec.runtimes.numpy_ref` transposes and fuses
them. Only NumPy and ``gguf`` are needed: safetensors files are parsed here directly (the
format is an 8-byte header length, a JSON header and raw little-endian data), because
``safetensors.numpy`` cannot represent bfloat16 and is not a core dependency.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgespec.errors import ModelLoadError

#: safetensors dtype tag -> NumPy dtype of the stored bytes (BF16 is decoded by hand).
_ST_DTYPES: dict[str, Any] = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """Decode bfloat16 stored as ``uint16`` bits: ``uint16[...] -> float32[...]``.

    bfloat16 is the top half of an IEEE float32, so shifting the bits left by 16 is exact.
    """
    return (bits.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read one ``.safetensors`` file into ``{name: float32 array}`` (memory-mapped, then copied).

    Floating tensors (F64, F32, F16, BF16) become ``float32``; integer tensors keep their dtype.

    Raises:
        ModelLoadError: the file is truncated, its header is not valid JSON, or a dtype is
            unknown.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelLoadError(f"'{path}' is not a safetensors file (only {size} bytes)")
        n = int.from_bytes(head, "little")
        if n <= 0 or 8 + n > size:
            raise ModelLoadError(f"'{path}' is not a valid safetensors file (header size {n})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelLoadError(f"'{path}' has a corrupt safetensors header ({exc})") from None
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n else None
    out: dict[str, np.ndarray] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(meta.get("dtype"))
        if dtype is None:
            raise ModelLoadError(f"'{path}': tensor {name} has unsupported dtype {meta['dtype']}")
        begin, end = (int(v) for v in meta["data_offsets"])
        shape = tuple(int(s) for s in meta["shape"])
        if (
            data is None
            or end > data.shape[0]
            or end - begin != np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))
        ):
            raise ModelLoadError(
                f"'{path}' is truncated or corrupt (tensor {name} bytes {begin}..{end}); "
                "re-download the model"
            )
        raw = data[begin:end].view(dtype).reshape(shape)
        if meta["dtype"] == "BF16":
            arr = bf16_to_f32(raw)
        elif np.issubdtype(dtype, np.floating):
            arr = raw.astype(np.float32)
        else:
            arr = np.array(raw)
        out[name] = arr
    return out


def read_hf_config(folder: Path) -> dict[str, Any]:
    """An HF model folder's ``config.json`` as a dict.

    Raises:
        ModelLoadError: no config.json, or it is not valid JSON.
    """
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelLoadError(f"'{folder}' has no config.json; pass an HF model folder")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"'{cfg_path}' is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"'{cfg_path}' is not a JSON object")
    return config


def read_hf_tensors(folder: Path) -> dict[str, np.ndarray]:
    """Every tensor of every ``*.safetensors`` file in ``folder`` (sharded checkpoints too).

    Raises:
        ModelLoadError: no safetensors files, or an unreadable one.
    """
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(
            f"'{folder}' has no *.safetensors files; save the model with safe_serialization=True"
        )
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        tensors.update(read_safetensors(f))
    return tensors


def gguf_shape(t: Any) -> tuple[int, ...]:
    """A GGUF tensor's shape in NumPy's slowest-first order (GGUF lists ``ne0`` first), so a
    GGUF matrix ``[in, out]`` is ``(out, in)``, PyTorch's ``nn.Linear.weight`` layout."""
    return tuple(int(s) for s in reversed(list(t.shape)))


def dequantize_tensor(t: Any) -> np.ndarray:
    """One tensor of a ``gguf.GGUFReader`` (memory-mapped) dequantized: ``float32`` of
    :func:`gguf_shape` (:func:`edgespec.gguf_file.dequantize`: ``gguf.quants.dequantize``'s
    values bit for bit, with temporaries of a few MB).

    Raises:
        ModelLoadError: a quantization gguf-py cannot dequantize.
    """
    from edgespec.gguf_file import dequantize

    try:
        arr = dequantize(t.data, t.tensor_type)
    except NotImplementedError as exc:
        raise ModelLoadError(
            f"tensor {t.name}: {exc}; the NumPy backend cannot read this quantization"
        ) from None
    return arr.reshape(gguf_shape(t))


def iter_gguf_tensors(reader: Any) -> Iterator[tuple[str, np.ndarray]]:
    """Dequantize every tensor of a ``gguf.GGUFReader``: yields ``(name, float32 array)``
    (:func:`dequantize_tensor`: ``float32[out, in]`` for a matrix)."""
    for t in reader.tensors:
        yield str(t.name), dequantize_tensor(t)


def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation for ``llama``-arch GGUF files.

    ``convert_hf_to_gguf.py`` reorders each head's rows from HF's half-split (NEOX) layout
    to the interleaved pairs that ggml's "normal" rope rotates: row ``2i`` of a head is HF
    row ``i`` and row ``2i+1`` is HF row ``i + head_dim/2``. This is the inverse.

    Args:
        w: ``float[n_head * head_dim, ...]`` (a weight ``[rows, in]`` or a bias ``[rows]``).
        n_head: heads in ``w`` (the KV-head count for K).

    Returns:
        the same shape, rows in HF order.
    """
    rows = w.shape[0]
    hd = rows // n_head
    return w.reshape(n_head, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
