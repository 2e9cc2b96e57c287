"""The contract between the engine and a backend."""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from edgespec.model import Model


@dataclass(frozen=True)
class ModelSource:
    """A model resolved to local files.

    Attributes:
        kind: "gguf" (one .gguf file) or "hf" (a folder with config.json + safetensors).
        path: the file or folder.
        name: what the user called it (zoo name, path or hub id), for messages and stats.
    """

    kind: str
    path: Path
    name: str


@dataclass(frozen=True)
class LoadOptions:
    """How to instantiate a model.

    Attributes:
        n_ctx: KV-cache capacity in tokens.
        n_threads: CPU threads; None lets the backend pick (usually all physical cores).
        dtype: compute dtype for the NumPy reference ("float32", or "float64" in tests).
        progress: show progress bars for slow steps (conversion, dequantization).
        weights: how a backend that converts GGUF files holds their weights: "auto" (its
            default), "fp32" (dequantized) or "gguf-exact" (the file's own quantized
            blocks). Only the ``onnx`` backend has a choice (``edgespec.runtimes.ort``).
        spin: let idle worker threads spin between operators (onnx): faster, but more CPU
            time per token. False lets them sleep (SmolLM2 on the 2-core build machine:
            27 % slower for 3 % less CPU, ``benchmarks/onnx_backend.py``; devices with
            more, slower cores may gain more).
    """

    n_ctx: int = 2048
    n_threads: int | None = None
    dtype: str = "float32"
    progress: bool = True
    weights: str = "auto"
    spin: bool = True


class Backend(ABC):
    """Loads models of some source kinds into :class:`~edgespec.model.Model` instances.

    Class attributes:
        name: the registry name.
        accepts: source kinds this backend can load ("gguf", "hf").
        requires: importable module names this backend needs (checked by ``available``).
        extra: the pip extra that installs them, for the error message.
    """

    name: ClassVar[str]
    accepts: ClassVar[tuple[str, ...]]
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""

    @classmethod
    def available(cls) -> bool:
        """True when every module in ``requires`` can be imported."""
        return all(importlib.util.find_spec(m) is not None for m in cls.requires)

    @classmethod
    @abstractmethod
    def load(cls, source: ModelSource, options: LoadOptions) -> Model:
        """Instantiate a model with an empty KV cache."""
