"""The contract between the engine and a backend."""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

from edgespec.model import Model


@dataclass(frozen=True)
class ModelSource:
    """A model resolved to local files.

    Attributes:
        kind: "gguf" (one .gguf file) or "hf" (a folder with config.json + safetensors).
        path: the file or folder.
        name: what the user called it (zoo name, path or hub id), for messages and stats.
        sha256: the content's hex sha256 when it is already known (a zoo entry's pin, a
            bundle manifest's artifact checksum), else "" (:meth:`digest` computes it).
    """

    kind: str
    path: Path
    name: str
    sha256: str = ""

    def digest(self) -> str:
        """The hex sha256 of the content: what cost curves and thread choices are keyed by,
        so two files of one name never share a measurement and one file under two names
        does. ``sha256`` when known, else computed once per (path, size, mtime) and cached
        under ``$EDGESPEC_HOME`` (:func:`edgespec.sources.content_digest`)."""
        if self.sha256:
            return self.sha256
        from edgespec.sources import content_digest

        return content_digest(self.path)


#: KV-cache element types a user can ask for (``--kv-cache``); backends list what they do
KV_CACHE_TYPES = ("f32", "f16", "q8", "q4", "gear4")
#: the lossy ones (below f16 on llama.cpp, below f32 on numpy; gear4: edgespec.kvcache)
LOSSY_KV_CACHE_TYPES = ("q8", "q4", "gear4")


@dataclass(frozen=True)
class LoadOptions:
    """How to instantiate a model.

    Attributes:
        n_ctx: KV-cache capacity in tokens.
        n_threads: CPU threads; None means the fastest count measured on this device
            (``edgespec.threads``: stored by ``edgespec calibrate`` or a quick probe on
            first use); a backend given None on its own keeps its library's default.
        dtype: compute dtype for the NumPy reference ("float32", or "float64" in tests).
        progress: show progress bars for slow steps (conversion, dequantization).
        weights: how a backend that converts GGUF files holds their weights: "auto" (its
            default), "fp32" (dequantized), "gguf-exact" (the file's own quantized
            blocks) or, on tvm, "gguf-q8act" (those blocks times int8 activations; tvm's
            "auto" on a CPU with VNNI or AVX2). The ``onnx`` and ``tvm`` backends have a choice
            (``edgespec.runtimes.ort``, ``edgespec.runtimes.tvm_backend``).
        spin: let idle worker threads spin between operators (onnx): faster, but more CPU
            time per token. False lets them sleep (SmolLM2 on the 2-core build machine:
            27 % slower for 3 % less CPU, ``benchmarks/onnx_backend.py``; devices with
            more, slower cores may gain more).
        exact: plain decoding computes each row exactly as verification does (llamacpp and
            onnx: one-token forwards run padded to two tokens), so lossless strategies equal
            plain greedy decoding token for token; costs some one-token speed
            (docs/speculative.md). Backends without ``supports_exact`` refuse it.
        kv_cache: the KV cache's element type, one of :data:`KV_CACHE_TYPES` (``f32``,
            ``f16``, ``q8``, ``q4``, ``gear4``: lossy below the backend's default); None: the
            backend's default (llama.cpp and tvm's gguf-q8act build: f16; otherwise f32).
            Backends refuse types not in their ``kv_cache_types``.
        device: where the model runs: ``cpu``, or ``opencl`` / ``vulkan`` on backends
            that list them in ``devices`` (the tvm backend, when its TVM build has
            that runtime). Backends refuse devices not in their ``devices``.
        sparse_kernel: the implementation of the chunk-sparse FFN kernel, run by models
            with a sparse FFN (the ``blockffn`` backend, sparsified bundles): ``numpy``,
            ``tvm`` or ``tvm-q8`` (Q8_0 weights, lossy), i.e. ``KERNELS["sparse_ffn:<impl>"]``
            (:mod:`edgespec.kernels`).
    """

    n_ctx: int = 2048
    n_threads: int | None = None
    dtype: str = "float32"
    progress: bool = True
    weights: str = "auto"
    spin: bool = True
    exact: bool = False
    kv_cache: str | None = None
    device: str = "cpu"
    sparse_kernel: str = "numpy"


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
    #: whether ``LoadOptions.exact`` is implemented (``edgespec.load`` refuses it otherwise)
    supports_exact: ClassVar[bool] = False
    #: ``LoadOptions.kv_cache`` values this backend implements (empty: only its default)
    kv_cache_types: ClassVar[tuple[str, ...]] = ()
    #: ``LoadOptions.device`` values this backend can run on
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    #: whether ``LoadOptions.weights`` means anything to this backend (``edgespec.load``
    #: refuses a ``--weights`` other than "auto" otherwise)
    takes_weights: ClassVar[bool] = False
    #: the reference the others are checked against: never chosen for speed, nor suggested
    #: for measuring by the automatic backend choice
    reference: ClassVar[bool] = False
    #: whether a GGUF model runs on its file's own quantized blocks (``LoadOptions.weights``
    #: "auto"), so that fewer bits a weight make a faster forward: where ``edgespec.load``'s
    #: ``draft_quant="auto"`` may requantize a draft (:func:`edgespec.requant.auto_quant`)
    streams_blocks: ClassVar[bool] = False
    #: whether its models build the tokenizer's vocabulary themselves
    #: (:meth:`~edgespec.model.Model.own_tokenizer`), so ``edgespec.load`` loads the model
    #: first and takes its tokenizer rather than building the vocabulary a second time
    reads_own_vocab: ClassVar[bool] = False

    @classmethod
    def available(cls) -> bool:
        """True when every module in ``requires`` can be imported."""
        return all(importlib.util.find_spec(m) is not None for m in cls.requires)

    @classmethod
    def stored_weights(cls, source: ModelSource, options: LoadOptions) -> str:
        """The name measurements of ``source`` loaded with ``options`` are stored under
        (thread probes, cost curves): ``options.weights`` as given, unless this backend
        resolves "auto" to a build that depends on the machine or the version (then the
        build's own name, so that a measurement of one build never stands for another)."""
        return options.weights

    @classmethod
    def cheap_to_load(cls, source: ModelSource, options: LoadOptions) -> bool:
        """Whether loading ``source`` takes seconds at most, so that an automatic backend
        choice may load it just to time it (``runtime.pick_backend``). A backend that
        converts or dequantizes the model first says False until its result is cached."""
        return True

    @classmethod
    @abstractmethod
    def load(cls, source: ModelSource, options: LoadOptions) -> Model:
        """Instantiate a model with an empty KV cache."""


@runtime_checkable
class ThreadTunable(Protocol):
    """A model whose CPU thread count can change after loading (``edgespec.threads`` uses
    it to time thread counts on one loaded model instead of loading one per count)."""

    def set_threads(self, n: int) -> bool:
        """Use ``n`` threads for later forwards (one-token and batched alike); may reset the
        KV cache. Returns False when this model cannot change its count."""
        ...
