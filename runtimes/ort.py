"""ONNX Runtime backend: an fp32 export of the model, run on the CPU execution provider.

GGUF files and HF folders are converted once by :func:`edgespec.export.hf_onnx.ensure_onnx`
(cached under ``$EDGESPEC_HOME/converted``). The KV cache lives in NumPy arrays, one key and
one value per layer, each ``float32[1, H_kv, n_past, D]``; every forward feeds them as
``past_key_values.{i}.key/value`` and keeps the graph's ``present.{i}.key/value`` outputs.
Truncation slices them along the sequence axis, so rollback is exact.

fp32 ORT gives (nearly) the same logits for a batched forward as for one token at a time,
which is what speculative decoding's greedy-equality contract needs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgespec.errors import EdgespecError, ModelLoadError, missing_extra
from edgespec.model import Model, ModelInfo, check_truncate
from edgespec.runtimes.base import Backend, LoadOptions, ModelSource

#: HF ``model_type`` -> the architecture name GGUF uses.
HF_TO_GGUF_ARCH = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma3_text": "gemma3",
    "gemma3": "gemma3",
    "phi3": "phi3",
}

_NP_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _make_session(model_path: Path, n_threads: int | None) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise missing_extra("onnxruntime", "onnx") from None
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(n_threads) if n_threads else 0  # 0: ORT picks (all cores)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(
            str(model_path), sess_options=so, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ModelLoadError(
            f"onnxruntime cannot load '{model_path}' ({type(exc).__name__}: {first}); "
            "delete the folder to re-convert"
        ) from None


class OnnxModel(Model):
    """A causal LM in an ONNX Runtime session, with its KV cache in NumPy arrays.

    Args:
        session: an ``onnxruntime.InferenceSession`` of an optimum ``text-generation-with-past``
            export (inputs ``input_ids``, ``attention_mask``, optional ``position_ids`` and
            ``past_key_values.{i}.key/value``; outputs ``logits``, ``present.{i}.key/value``).
        info: architecture facts.
        n_ctx: KV-cache capacity in tokens (positions 0 .. n_ctx-1).

    Attributes:
        n_ctx: the capacity; a forward that would exceed it raises :class:`EdgespecError`.
        path: the ONNX folder, when loaded from one.
    """

    backend = "onnx"
    #: fp32 batched vs one-token forwards differ by ~1.4e-6 (tests/backends/test_ort.py);
    #: quantized (int8) graphs are batch-dependent and are not held to exactness
    batch_noise = 1e-4

    def __init__(self, session: Any, info: ModelInfo, n_ctx: int) -> None:
        self.session = session
        self.info = info
        self.n_ctx = int(n_ctx)
        self.path: Path | None = None
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        for name in ("input_ids", "attention_mask"):
            if name not in inputs:
                raise ModelLoadError(f"the ONNX graph has no '{name}' input; re-export it")
        if "logits" not in outputs:
            raise ModelLoadError("the ONNX graph has no 'logits' output; re-export it")
        self._has_position_ids = "position_ids" in inputs
        layers = sorted(
            int(n.split(".")[1])
            for n in inputs
            if n.startswith("past_key_values.") and n.endswith(".key")
        )
        if not layers or layers != list(range(len(layers))):
            raise ModelLoadError(
                "the ONNX graph has no past_key_values inputs; export it "
                "with the task text-generation-with-past"
            )
        self._n_layers = len(layers)
        self._past_names = [
            f"past_key_values.{i}.{kv}" for i in range(self._n_layers) for kv in ("key", "value")
        ]
        self._out_names = ["logits"] + [
            f"present.{i}.{kv}" for i in range(self._n_layers) for kv in ("key", "value")
        ]
        missing = [n for n in self._out_names if n not in outputs]
        if missing:
            raise ModelLoadError(f"the ONNX graph lacks outputs {', '.join(missing[:4])}")
        k0 = inputs["past_key_values.0.key"]
        shape = k0.shape  # [batch, H_kv, past, D]
        if len(shape) != 4 or not isinstance(shape[1], int) or not isinstance(shape[3], int):
            raise ModelLoadError(f"unexpected past_key_values shape {shape} in the ONNX graph")
        self._kv_heads, self._head_dim = int(shape[1]), int(shape[3])
        self._kv_dtype = _NP_DTYPES.get(k0.type, np.float32)
        self._kv: list[np.ndarray] = []
        self._n_past = 0
        self.truncate(0)

    # ------------------------------------------------------------------ Model API

    @property
    def n_past(self) -> int:
        return self._n_past

    def forward(self, tokens: Sequence[int], *, all_logits: bool = True) -> np.ndarray:
        """Append ``tokens`` (T >= 1) to the cache and score them.

        Feeds ``input_ids int64[1, T]``, ``attention_mask int64[1, n_past + T]`` (all ones),
        ``position_ids int64[1, T]`` (``n_past .. n_past+T-1``, if the graph takes them) and
        the cached ``past_key_values``.

        Returns:
            ``float32[T, V]``, or ``float32[1, V]`` (last position) when ``all_logits`` is
            False. Row i is the distribution over the token after ``tokens[i]``.
        """
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        t = int(ids.size)
        if t == 0:
            raise ValueError("forward() needs at least one token")
        vocab = self.info.vocab_size
        if vocab and (ids.min() < 0 or ids.max() >= vocab):
            bad = int(ids[(ids < 0) | (ids >= vocab)][0])
            raise ValueError(f"token id {bad} is outside the vocabulary (0..{vocab - 1})")
        past = self._n_past
        if past + t > self.n_ctx:
            raise EdgespecError(
                f"context full: {past} cached + {t} new tokens exceed n_ctx={self.n_ctx}; "
                "raise n_ctx or use a shorter prompt"
            )
        feed: dict[str, np.ndarray] = {
            "input_ids": ids[None, :],
            "attention_mask": np.ones((1, past + t), dtype=np.int64),
        }
        if self._has_position_ids:
            feed["position_ids"] = np.arange(past, past + t, dtype=np.int64)[None, :]
        feed.update(zip(self._past_names, self._kv, strict=True))
        out = self.session.run(self._out_names, feed)
        self._kv = out[1:]
        self._n_past = past + t
        logits = out[0][0]  # [T, V]
        if not all_logits:
            logits = logits[-1:]
        return np.ascontiguousarray(logits, dtype=np.float32)

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` cached positions (slices every ``[1, H_kv, P, D]``)."""
        check_truncate(length, self._n_past)
        if length == 0:
            empty = np.zeros((1, self._kv_heads, 0, self._head_dim), dtype=self._kv_dtype)
            self._kv = [empty] * (2 * self._n_layers)
        elif length < self._n_past:
            self._kv = [np.ascontiguousarray(a[:, :, :length, :]) for a in self._kv]
        self._n_past = length

    def fork(self) -> OnnxModel:
        """A second model sharing this session, starting from a copy of this cache."""
        other = OnnxModel.__new__(OnnxModel)
        other.__dict__.update(self.__dict__)
        other._kv = list(self._kv)  # arrays are never written in place, so sharing is safe
        return other

    def close(self) -> None:
        self.session = None
        self._kv = []


def _info_from_config(folder: Path, source_name: str) -> tuple[ModelInfo, dict[str, Any]]:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"'{folder}' has no readable config.json ({exc})") from None
    text = cfg.get("text_config", cfg)  # multimodal configs nest the language model
    model_type = str(text.get("model_type", cfg.get("model_type", "")))
    info = ModelInfo(
        arch=HF_TO_GGUF_ARCH.get(model_type, model_type),
        n_layers=int(text["num_hidden_layers"]),
        hidden_size=int(text["hidden_size"]),
        vocab_size=int(text["vocab_size"]),
        context_length=int(text.get("max_position_embeddings", 0)) or 2048,
        source=source_name,
        extra={"format": "onnx", "dtype": "float32", "path": str(folder)},
    )
    return info, cfg


def load_onnx_dir(folder: str | Path, options: LoadOptions, source_name: str = "") -> OnnxModel:
    """Open an already converted folder (``model.onnx`` + ``config.json``).

    The KV capacity is ``min(options.n_ctx, context_length)``.
    """
    path = Path(folder)
    model_file = path / "model.onnx"
    if not model_file.exists():
        raise ModelLoadError(f"'{path}' has no model.onnx")
    info, _ = _info_from_config(path, source_name or str(path))
    session = _make_session(model_file, options.n_threads)
    model = OnnxModel(session, info, n_ctx=min(options.n_ctx, info.context_length))
    model.path = path
    return model


class OnnxBackend(Backend):
    """Converts GGUF / HF sources to fp32 ONNX (cached) and runs them in onnxruntime; exported
    ``onnx`` artifact folders (any quantization) load as they are."""

    name = "onnx"
    accepts = ("gguf", "hf", "onnx")
    requires = ("onnxruntime",)
    extra = "onnx"

    @classmethod
    def load(cls, source: ModelSource, options: LoadOptions) -> Model:
        if source.kind not in cls.accepts:
            raise EdgespecError(
                f"the onnx backend loads {' or '.join(cls.accepts)} models, not '{source.kind}'"
            )
        if not cls.available():
            raise missing_extra("onnxruntime", cls.extra)
        if source.kind == "onnx":  # an exported artifact folder (model.onnx + config.json)
            return load_onnx_dir(source.path, options, source.name or str(source.path))
        from edgespec.export.hf_onnx import ensure_onnx

        folder = ensure_onnx(source, progress=options.progress)
        return load_onnx_dir(folder, options, source.name or str(source.path))
