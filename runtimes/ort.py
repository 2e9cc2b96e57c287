"""ONNX Runtime backend: decoder graphs with a KV cache, on the CPU execution provider
(or, with ``--device npu``, an NPU provider of :data:`NPU_PROVIDERS` in front of it).

GGUF files and HF folders are converted once by :func:`edgespec.export.hf_onnx.ensure_onnx`
(cached under ``$EDGESPEC_HOME/converted``). Two graph styles run here, and the folder says
which (:func:`kv_layout`):

- ``shared`` (default conversion: onnxruntime-genai's model builder, ``GroupQueryAttention``).
  One preallocated buffer per layer and key/value, ``float32[1, H_kv, n_ctx, D]``, is bound
  through IOBinding as both ``past_key_values.{i}.*`` and ``present.{i}.*``, so ORT writes
  the new positions in place and nothing is copied between calls. The graph finds the valid
  length from ``attention_mask int64[1, n_past + T]``; truncation just lowers ``n_past``
  (later forwards overwrite the stale positions), so rollback is exact and free.
- ``copied`` (optimum's ``text-generation-with-past`` export). The cache lives in NumPy
  arrays ``float32[1, H_kv, n_past, D]``; every forward feeds them in and keeps the
  ``present.*`` outputs, which grow by T. Truncation slices them.

fp32 graphs give the same logits for a batched forward as for one token at a time, which is
what speculative decoding's greedy-equality contract needs. Quantized graphs (MatMulNBits with
int8 activations, dynamic int8) are batch-dependent; how much is measured per model by
``edgespec calibrate`` (:func:`edgespec.losslessness.measure_near_tie_bound`).
"""

from __future__ import annotations

import json
import logging
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgespec.errors import EdgespecError, ModelLoadError, missing_extra
from edgespec.model import Model, ModelInfo, check_truncate, tree_ancestors, tree_path_rows
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
#: the sidecar that :mod:`edgespec.export` writes beside every graph it makes
MANIFEST = "edgespec-onnx.json"
#: added to the attention scores of positions a tree node may not see
MASKED = -1e9


log = logging.getLogger(__name__)

#: an ``InferenceSession(providers=...)`` entry: a provider name, or (name, its options)
Provider = str | tuple[str, dict[str, str]]
CPU_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class NpuProvider:
    """One ONNX Runtime execution provider that reaches an NPU (``--device npu``).

    Attributes:
        name: the provider's name in ``onnxruntime.get_available_providers()``.
        short: a short tag for the model variant (``qnn``), so cost curves stay apart.
        install: what to install to get it, for the one-line error.
        options: the provider options that aim it at the NPU.
    """

    name: str
    short: str
    install: str
    options: dict[str, str] = field(default_factory=dict)


#: QNN's HTP (Hexagon NPU) backend library, as the platform names it
_QNN_HTP = {"win32": "QnnHtp.dll"}.get(sys.platform, "libQnnHtp.so")
#: ``--device npu``: the providers tried, in preference order (the first one the installed
#: onnxruntime has wins). QNN drives the Hexagon NPU directly; NNAPI lets Android pick a
#: device (NPU, GPU or its own CPU path); CoreML with CPUAndNeuralEngine is Apple's ANE.
NPU_PROVIDERS: tuple[NpuProvider, ...] = (
    NpuProvider("QNNExecutionProvider", "qnn", "onnxruntime-qnn", {"backend_path": _QNN_HTP}),
    NpuProvider(
        "NnapiExecutionProvider", "nnapi", "onnxruntime-android (or a build with --use_nnapi)"
    ),
    NpuProvider(
        "CoreMLExecutionProvider",
        "coreml",
        "onnxruntime on macOS/iOS (CoreML)",
        {"MLComputeUnits": "CPUAndNeuralEngine"},
    ),
)


def _ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise missing_extra("onnxruntime", "onnx") from None
    return ort


def npu_provider() -> NpuProvider:
    """The first of :data:`NPU_PROVIDERS` that the installed onnxruntime has.

    Raises:
        EdgespecError: one line naming what this onnxruntime has and what to install;
            never a silent CPU run under the name of an NPU.
    """
    have = _ort().get_available_providers()
    for p in NPU_PROVIDERS:
        if p.name in have:
            return p
    wanted = "; ".join(f"{p.name}: install {p.install}" for p in NPU_PROVIDERS)
    raise EdgespecError(
        f"--device npu: this onnxruntime has no NPU execution provider (it has "
        f"{', '.join(have)}); {wanted}; or use --device cpu"
    )


def _cpu_providers() -> tuple[str, list[Provider]]:
    return "", [CPU_PROVIDER]


def _npu_providers() -> tuple[str, list[Provider]]:
    p = npu_provider()
    # ORT places each node on the first provider that can run it; the rest go to the CPU
    return p.short, [(p.name, dict(p.options)), CPU_PROVIDER]


#: ``LoadOptions.device`` -> (variant tag, the session's providers in priority order)
DEVICE_PROVIDERS: dict[str, Callable[[], tuple[str, list[Provider]]]] = {
    "cpu": _cpu_providers,
    "npu": _npu_providers,
}


def device_providers(device: str) -> tuple[str, list[Provider]]:
    """(variant tag, ``providers`` for ``InferenceSession``) of ``--device device``."""
    if device not in DEVICE_PROVIDERS:
        raise EdgespecError(
            f"the onnx backend cannot run on --device {device}; known: "
            f"{', '.join(DEVICE_PROVIDERS)}"
        )
    return DEVICE_PROVIDERS[device]()


def _make_session(
    model_path: Path,
    n_threads: int | None,
    spin: bool = True,
    providers: Sequence[Provider] = (CPU_PROVIDER,),
) -> Any:
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(n_threads) if n_threads else 0  # 0: ORT picks (all cores)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # idle intra-op threads busy-wait by default; off, they sleep (less CPU, more latency)
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    try:
        session = ort.InferenceSession(str(model_path), sess_options=so, providers=list(providers))
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ModelLoadError(
            f"onnxruntime cannot load '{model_path}' ({type(exc).__name__}: {first}); "
            "delete the folder to re-convert"
        ) from None
    wanted = [p if isinstance(p, str) else p[0] for p in providers]
    used = list(session.get_providers())
    lost = [p for p in wanted if p not in used]
    if lost:  # ORT drops a provider that fails to initialise (and says so only in its log)
        raise ModelLoadError(
            f"onnxruntime could not start {', '.join(lost)} for '{model_path}' (the session "
            f"has {', '.join(used)}); check the provider's drivers, or use --device cpu"
        )
    log.info("onnx session providers: %s", ", ".join(used))
    return session


class KVCache(ABC):
    """How a graph's past KV is fed and kept. ``names``: the graph's input/output names.

    Subclasses set ``layout`` (the registry key) and implement :meth:`run`.
    """

    layout: ClassVar[str]

    def __init__(
        self,
        session: Any,
        names: list[tuple[str, str]],
        shape: tuple[int, ...],
        dtype: Any,
        n_ctx: int,
    ) -> None:
        self.session = session
        self.names = names  # [(past input, present output)] per layer and key/value
        self.shape = shape  # (H_kv, D)
        self.dtype = dtype
        self.n_ctx = n_ctx

    @abstractmethod
    def run(self, feed: dict[str, np.ndarray], output: str = "logits") -> np.ndarray:
        """Run one forward over ``feed`` (ids, mask, ...); the mask's length says how many
        positions are cached.

        Returns:
            the graph output ``output``: ``logits float[1, T, V]`` (or ``hidden_states
            float[1, T, D]``).
        """

    @abstractmethod
    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on."""

    @abstractmethod
    def copy(self) -> KVCache:
        """An independent cache with the same contents, on the same session."""

    def keep(self, base: int, rows: np.ndarray) -> None:
        """Move cached positions ``rows`` (int64[n], ascending) to ``base .. base+n-1``."""
        raise NotImplementedError(f"the '{self.layout}' KV layout cannot keep a tree path")


class CopiedKV(KVCache):
    """optimum graphs: ``float[1, H_kv, P, D]`` arrays fed in, ``present`` (P + T) kept."""

    layout = "copied"
    _arrays: list[np.ndarray]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._out = ["logits"] + [present for _, present in self.names]
        self.truncate(0)

    def run(self, feed: dict[str, np.ndarray], output: str = "logits") -> np.ndarray:
        feed.update((name, a) for (name, _), a in zip(self.names, self._arrays, strict=True))
        out = self.session.run([output, *self._out[1:]], feed)
        self._arrays = out[1:]
        return out[0]

    def truncate(self, length: int) -> None:
        if length == 0:
            empty = np.zeros((1, self.shape[0], 0, self.shape[1]), dtype=self.dtype)
            self._arrays = [empty] * len(self.names)
        else:
            self._arrays = [np.ascontiguousarray(a[:, :, :length, :]) for a in self._arrays]

    def copy(self) -> CopiedKV:
        other = CopiedKV.__new__(CopiedKV)
        other.__dict__.update(self.__dict__)
        other._arrays = list(self._arrays)  # arrays are never written in place: sharing is safe
        return other


class SharedKV(KVCache):
    """GroupQueryAttention graphs: one ``float[1, H_kv, n_ctx, D]`` buffer per past/present
    pair, bound as both through IOBinding; ORT writes positions ``past .. past+T-1`` in place."""

    layout = "shared"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        shape = (1, self.shape[0], self.n_ctx, self.shape[1])
        self._buffers = [np.zeros(shape, dtype=self.dtype) for _ in self.names]
        self._bind()

    def _bind(self) -> None:
        import onnxruntime as ort

        self._io = self.session.io_binding()
        self._io.bind_output("logits", "cpu")  # first, so it is get_outputs()[0]
        # the OrtValues wrap the NumPy buffers' memory (CPU), so ORT writes into them
        self._values = [ort.OrtValue.ortvalue_from_numpy(b) for b in self._buffers]
        for (past, present), v in zip(self.names, self._values, strict=True):
            self._io.bind_ortvalue_input(past, v)
            self._io.bind_ortvalue_output(present, v)

    def run(self, feed: dict[str, np.ndarray], output: str = "logits") -> np.ndarray:
        io = self._io
        if output != "logits":  # a one-off binding, so that later runs do not fetch it
            io = self.session.io_binding()
            for (past, present), v in zip(self.names, self._values, strict=True):
                io.bind_ortvalue_input(past, v)
                io.bind_ortvalue_output(present, v)
        for name, a in feed.items():
            io.bind_cpu_input(name, a)
        io.bind_output(output, "cpu")  # T changes: let ORT allocate the output
        self.session.run_with_iobinding(io)
        return np.asarray(io.get_outputs()[0 if output == "logits" else -1].numpy())

    def truncate(self, length: int) -> None:
        pass  # the mask length says what is valid; later forwards overwrite the rest

    def keep(self, base: int, rows: np.ndarray) -> None:
        n = int(rows.size)
        for b in self._buffers:  # fancy indexing copies first, so overlaps are safe
            b[:, :, base : base + n] = b[:, :, rows]

    def copy(self) -> SharedKV:
        other = SharedKV.__new__(SharedKV)
        other.__dict__.update(self.__dict__)
        other._buffers = [b.copy() for b in self._buffers]
        other._bind()
        return other


#: graph style -> how its KV is kept (see :func:`kv_layout`)
KV_LAYOUTS: dict[str, type[KVCache]] = {c.layout: c for c in (CopiedKV, SharedKV)}


def kv_layout(folder: Path) -> str:
    """``shared`` when the folder's ``genai_config.json`` asks for a shared past/present
    buffer (onnxruntime-genai builder graphs), else ``copied``."""
    try:
        cfg = json.loads((folder / "genai_config.json").read_text())
    except (OSError, ValueError):
        return "copied"
    return "shared" if cfg.get("search", {}).get("past_present_share_buffer") else "copied"


class OnnxModel(Model):
    """A causal LM in an ONNX Runtime session, with its KV cache kept by a :class:`KVCache`.

    Args:
        session: an ``onnxruntime.InferenceSession`` of a decoder graph with inputs
            ``input_ids``, ``attention_mask``, optional ``position_ids`` and
            ``past_key_values.{i}.key/value``, and outputs ``logits`` and
            ``present.{i}.key/value``.
        info: architecture facts.
        n_ctx: KV-cache capacity in tokens (positions 0 .. n_ctx-1).
        layout: a key of :data:`KV_LAYOUTS` (``copied`` or ``shared``).
        exact: run one-token forwards as two-token ones (the token and a dummy copy of it,
            dropped at once), so that plain decoding takes the kernel path of verification.
            MatMulNBits computes each row of an M >= 2 batch bit for bit alike whatever M is,
            but a one-token forward differently (docs/speculative.md: "--exact").

    Attributes:
        n_ctx: the capacity; a forward that would exceed it raises :class:`EdgespecError`.
        path: the ONNX folder, when loaded from one.
        layout: how the KV cache is kept.
        exact: whether one-token forwards are padded (see Args).
    """

    backend = "onnx"
    #: builds a session of the same graph and options with n threads (set by the loader)
    _session_factory: Callable[[int], Any] | None = None

    def __init__(
        self,
        session: Any,
        info: ModelInfo,
        n_ctx: int,
        layout: str = "copied",
        *,
        exact: bool = False,
    ) -> None:
        self.session = session
        self.info = info
        self.n_ctx = int(n_ctx)
        self.exact = exact
        self.path: Path | None = None
        self.layout = layout
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        for name in ("input_ids", "attention_mask"):
            if name not in inputs:
                raise ModelLoadError(f"the ONNX graph has no '{name}' input; re-export it")
        if "logits" not in outputs:
            raise ModelLoadError("the ONNX graph has no 'logits' output; re-export it")
        self._has_position_ids = "position_ids" in inputs
        self._has_bias = "attention_bias" in inputs
        #: an inputs_embeds entry (export.embeds_inputs.add_embeds_inputs): forward_embeds
        #: feeds it; the ids path feeds ``use_embeds`` False and one zero row (Where discards it)
        self._has_embeds = "inputs_embeds" in inputs and "use_embeds" in inputs
        #: the LM head's input as an output (export.embeds_inputs.add_hidden_output)
        self._has_hidden = "hidden_states" in outputs
        self._ids_feed: dict[str, np.ndarray] = {}
        self._embeds_dtype: Any = np.float32
        if self._has_embeds:
            self._embeds_dtype = _NP_DTYPES.get(inputs["inputs_embeds"].type, np.float32)
            off = np.zeros((1, 1, info.hidden_size), dtype=self._embeds_dtype)
            self._ids_feed = {"use_embeds": np.array(False), "inputs_embeds": off}
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
        names = [
            (f"past_key_values.{i}.{kv}", f"present.{i}.{kv}")
            for i in layers
            for kv in ("key", "value")
        ]
        missing = [p for _, p in names if p not in outputs]
        if missing:
            raise ModelLoadError(f"the ONNX graph lacks outputs {', '.join(missing[:4])}")
        k0 = inputs["past_key_values.0.key"]
        shape = k0.shape  # [batch, H_kv, past, D]; builder graphs leave D symbolic
        head_dim = shape[3] if len(shape) == 4 and isinstance(shape[3], int) else None
        if head_dim is None and info.extra.get("head_dim"):
            head_dim = int(info.extra["head_dim"])
        if len(shape) != 4 or not isinstance(shape[1], int) or head_dim is None:
            raise ModelLoadError(f"unexpected past_key_values shape {shape} in the ONNX graph")
        if layout not in KV_LAYOUTS:
            raise ModelLoadError(
                f"unknown KV layout '{layout}' (known: {', '.join(sorted(KV_LAYOUTS))})"
            )
        dtype = _NP_DTYPES.get(k0.type, np.float32)
        capacity = self.n_ctx + int(exact)  # exact: room for the dummy after the last token
        self._kv = KV_LAYOUTS[layout](session, names, (int(shape[1]), head_dim), dtype, capacity)
        self._n_past = 0
        #: trees need a per-node rotary position and mask (export.hf_onnx.add_tree_inputs)
        #: and a cache that can keep a path in place
        self.supports_tree = self._has_position_ids and self._has_bias and layout == "shared"

    # ------------------------------------------------------------------ Model API

    @property
    def n_past(self) -> int:
        return self._n_past

    def forward(self, tokens: Sequence[int], *, all_logits: bool = True) -> np.ndarray:
        """Append ``tokens`` (T >= 1) to the cache and score them.

        Feeds ``input_ids int64[1, T]``, ``attention_mask int64[1, n_past + T]`` (all ones),
        ``position_ids int64[1, T]`` (``n_past .. n_past+T-1``, if the graph takes them) and
        the cached past KV.

        Returns:
            ``float32[T, V]``, or ``float32[1, V]`` (last position) when ``all_logits`` is
            False. Row i is the distribution over the token after ``tokens[i]``.
        """
        ids = self._check(tokens)
        if self.exact and ids.size == 1:
            return self._padded(ids)
        past, t = self._n_past, int(ids.size)
        positions = np.arange(past, past + t, dtype=np.int64)
        bias = np.zeros((t, past + t), dtype=np.float32) if self._has_bias else None
        logits = self._run(ids, positions, bias)
        if not all_logits:
            logits = logits[-1:]
        return np.ascontiguousarray(logits, dtype=np.float32)

    def _padded(self, ids: np.ndarray, embeds: np.ndarray | None = None) -> np.ndarray:
        """Exact mode: one token (or one embedding row ``[1, D]``) as two copies; the dummy's
        slot is dropped at once. Returns ``float32[1, V]``, the row of the two-row forward."""
        past = self._n_past
        pair = np.repeat(ids, 2)
        bias = np.zeros((2, past + 2), dtype=np.float32) if self._has_bias else None
        rows = None if embeds is None else np.repeat(embeds, 2, axis=0)
        logits = self._run(pair, np.arange(past, past + 2, dtype=np.int64), bias, rows)
        self.truncate(past + 1)
        return np.ascontiguousarray(logits[:1], dtype=np.float32)

    def forward_embeds(self, embeds: np.ndarray, *, all_logits: bool = True) -> np.ndarray:
        """Like :meth:`forward`, with input embeddings in place of token ids (HF's
        ``inputs_embeds``): ``embeds float[T, D]`` enter the first block as they are (the
        embedding scale, if the model has one, is not applied) at positions
        ``n_past .. n_past+T-1``, through the same KV cache; later forwards continue with
        token ids. Rows made by the embedding table give :meth:`forward`'s logits exactly.

        Returns:
            ``float32[T, V]``, or ``float32[1, V]`` (last row) when ``all_logits`` is False.

        Raises:
            EdgespecError: the graph has no ``inputs_embeds`` input (converted before it
                existed), ``embeds`` is not ``[T >= 1, D]``, or the rows do not fit.
        """
        if not self._has_embeds:
            raise EdgespecError(
                "this ONNX graph has no inputs_embeds input; re-convert it (delete its folder "
                "under $EDGESPEC_HOME/converted) or re-export it with this edgespec"
            )
        x = np.asarray(embeds)
        width = self.info.hidden_size
        if x.ndim != 2 or x.shape[1] != width or x.shape[0] == 0:
            raise EdgespecError(f"inputs_embeds must have shape [T >= 1, {width}], not {x.shape}")
        past, t = self._n_past, int(x.shape[0])
        if past + t > self.n_ctx:
            raise EdgespecError(
                f"context full: {past} cached + {t} new rows exceed n_ctx={self.n_ctx}; "
                "raise n_ctx or use fewer rows"
            )
        x = np.ascontiguousarray(x, dtype=self._embeds_dtype)
        ids = np.zeros(t, dtype=np.int64)  # looked up, then discarded by the graph's Where
        if self.exact and t == 1:
            return self._padded(ids, x)
        bias = np.zeros((t, past + t), dtype=np.float32) if self._has_bias else None
        logits = self._run(ids, np.arange(past, past + t, dtype=np.int64), bias, x)
        if not all_logits:
            logits = logits[-1:]
        return np.ascontiguousarray(logits, dtype=np.float32)

    def forward_tree(self, tokens: Sequence[int], parents: Sequence[int]) -> np.ndarray:
        """Score a token tree in one forward; see :meth:`Model.forward_tree`.

        Node i goes to cache slot ``n_past + i`` with rotary position ``n_past + depth(i) - 1``
        and ``attention_bias`` hiding every new slot that is not i or its ancestor.

        Returns:
            ``float32[T, V]``.
        """
        if not self.supports_tree:
            raise NotImplementedError(
                "this ONNX graph cannot verify token trees; re-convert it (gqa graph)"
            )
        ids = self._check(tokens)
        if len(parents) != ids.size:
            raise ValueError("parents must list, for each node, an earlier node or -1")
        anc, depth = tree_ancestors(parents)
        past = self._n_past
        bias = np.zeros((ids.size, past + ids.size), dtype=np.float32)
        bias[:, past:] = np.where(anc, 0.0, MASKED)
        return np.ascontiguousarray(self._run(ids, past + depth - 1, bias), dtype=np.float32)

    def commit_tree_path(self, base: int, path: Sequence[int]) -> None:
        """Keep the tree nodes ``path`` (batch indices, root to leaf) after ``base``."""
        rows = tree_path_rows(base, path, self._n_past)
        self._kv.keep(base, rows)
        self._n_past = base + int(rows.size)

    def _check(self, tokens: Sequence[int]) -> np.ndarray:
        """``tokens`` as ``int64[T]``, refused when empty, off-vocabulary or past n_ctx."""
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        t = int(ids.size)
        if t == 0:
            raise ValueError("forward() needs at least one token")
        vocab = self.info.vocab_size
        if vocab and (ids.min() < 0 or ids.max() >= vocab):
            bad = int(ids[(ids < 0) | (ids >= vocab)][0])
            raise ValueError(f"token id {bad} is outside the vocabulary (0..{vocab - 1})")
        if self._n_past + t > self.n_ctx:
            raise EdgespecError(
                f"context full: {self._n_past} cached + {t} new tokens exceed "
                f"n_ctx={self.n_ctx}; raise n_ctx or use a shorter prompt"
            )
        return ids

    def hidden_states(self, tokens: Sequence[int]) -> np.ndarray:
        """The last block's output after the final norm (the LM head's input) for
        ``tokens``, appended to the cache like :meth:`forward` (no exact-mode padding):
        ``float32[T, D]``; ``logits = h @ lm_head``. A context compressor pools these into
        memory slots (:mod:`edgespec.compress.dolphin`).

        Raises:
            EdgespecError: the graph has no ``hidden_states`` output (converted before it
                existed), or the tokens do not fit.
        """
        if not self._has_hidden:
            raise EdgespecError(
                "this ONNX graph has no hidden_states output; re-convert it (delete its folder "
                "under $EDGESPEC_HOME/converted) or re-export it with this edgespec"
            )
        ids = self._check(tokens)
        past, t = self._n_past, int(ids.size)
        bias = np.zeros((t, past + t), dtype=np.float32) if self._has_bias else None
        positions = np.arange(past, past + t, dtype=np.int64)
        hidden = self._run(ids, positions, bias, output="hidden_states")
        return np.ascontiguousarray(hidden, dtype=np.float32)

    def _run(
        self,
        ids: np.ndarray,
        positions: np.ndarray,
        bias: np.ndarray | None,
        embeds: np.ndarray | None = None,
        output: str = "logits",
    ) -> np.ndarray:
        """One forward of ``ids int64[T]`` at rotary ``positions int64[T]``; ``bias
        float32[T, n_past + T]`` or None; ``embeds [T, D]`` in place of the ids' embeddings,
        or None. Appends T slots and returns the graph output ``output`` (``logits [T, V]``
        by default; ``hidden_states [T, D]``)."""
        past, t = self._n_past, int(ids.size)
        feed: dict[str, np.ndarray] = {
            "input_ids": ids[None, :],
            "attention_mask": np.ones((1, past + t), dtype=np.int64),
        }
        if embeds is None:
            feed.update(self._ids_feed)
        else:
            feed["use_embeds"] = np.array(True)
            feed["inputs_embeds"] = embeds[None]
        if self._has_position_ids:
            feed["position_ids"] = positions[None, :]
        if bias is not None:
            feed["attention_bias"] = bias[None, None]
        out = self._kv.run(feed, output)[0]
        self._n_past = past + t
        return out

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` cached positions."""
        check_truncate(length, self._n_past)
        self._kv.truncate(length)
        self._n_past = length

    def fork(self) -> OnnxModel:
        """A second model sharing this session, starting from a copy of this cache."""
        other = OnnxModel.__new__(OnnxModel)
        other.__dict__.update(self.__dict__)
        other._kv = self._kv.copy()
        return other

    def close(self) -> None:
        self.session = None
        self._kv = None  # type: ignore[assignment]

    def set_threads(self, n: int) -> bool:
        """Rebuild the ORT session with ``n`` intra-op threads (ORT fixes them per session:
        as slow as loading the graph again). Empties the KV cache; forks keep the old
        session. False for a model not loaded by :func:`load_onnx_dir`."""
        factory = getattr(self, "_session_factory", None)
        if factory is None:
            return False
        if n < 1:
            raise EdgespecError(f"n_threads must be at least 1, not {n}")
        kept = dict(self.__dict__)  # path, the factory, anything set after __init__
        self.__init__(factory(int(n)), self.info, self.n_ctx, self.layout, exact=self.exact)  # type: ignore[misc]
        for name, value in kept.items():
            self.__dict__.setdefault(name, value)
        return True


def _info_from_config(folder: Path, source_name: str) -> tuple[ModelInfo, dict[str, Any]]:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"'{folder}' has no readable config.json ({exc})") from None
    text = cfg.get("text_config", cfg)  # multimodal configs nest the language model
    model_type = str(text.get("model_type", cfg.get("model_type", "")))
    head_dim = text.get("head_dim") or int(text["hidden_size"]) // int(text["num_attention_heads"])
    try:
        dtype = str(json.loads((folder / MANIFEST).read_text()).get("dtype", "float32"))
    except (OSError, ValueError, AttributeError):
        dtype = "float32"
    info = ModelInfo(
        arch=HF_TO_GGUF_ARCH.get(model_type, model_type),
        n_layers=int(text["num_hidden_layers"]),
        hidden_size=int(text["hidden_size"]),
        vocab_size=int(text["vocab_size"]),
        context_length=int(text.get("max_position_embeddings", 0)) or 2048,
        source=source_name,
        extra={"format": "onnx", "dtype": dtype, "path": str(folder), "head_dim": head_dim},
    )
    return info, cfg


def load_onnx_dir(folder: str | Path, options: LoadOptions, source_name: str = "") -> OnnxModel:
    """Open an already converted folder (``model.onnx`` + ``config.json``).

    The KV capacity is ``min(options.n_ctx, context_length)``; the KV layout comes from
    :func:`kv_layout`.
    """
    path = Path(folder)
    model_file = path / "model.onnx"
    if not model_file.exists():
        raise ModelLoadError(f"'{path}' has no model.onnx")
    info, _ = _info_from_config(path, source_name or str(path))
    tag, providers = device_providers(options.device)
    session = _make_session(model_file, options.n_threads, options.spin, providers)
    info.extra["providers"] = list(session.get_providers())
    layout = kv_layout(path)
    info.extra["variant"] = (
        f"{layout}-{info.extra['dtype']}"
        + ("" if options.spin else "-nospin")
        + ("-exact" if options.exact else "")
        + (f"-{tag}" if tag else "")
    )
    n_ctx = min(options.n_ctx, info.context_length)
    model = OnnxModel(session, info, n_ctx=n_ctx, layout=layout, exact=options.exact)
    model.path = path
    # the same session options with another thread count (OnnxModel.set_threads)
    model._session_factory = lambda n: _make_session(model_file, n, options.spin, providers)
    return model


def _fp32(source: ModelSource, progress: bool) -> Path:
    from edgespec.export.hf_onnx import ensure_onnx

    return ensure_onnx(source, progress=progress)


def _gguf_exact(source: ModelSource, progress: bool) -> Path:
    from edgespec.export.gguf_exact import ensure_exact_onnx

    return ensure_exact_onnx(source, progress=progress)


#: ``LoadOptions.weights`` -> (source kinds it serves, how to get the converted folder)
WEIGHTS = {"fp32": (("gguf", "hf"), _fp32), "gguf-exact": (("gguf",), _gguf_exact)}
#: what "auto" means per source kind: a GGUF keeps its own quantized weights (faster than
#: fp32 and faithful to the file, docs/benchmarks-onnx.md); an HF folder is converted to fp32
AUTO_WEIGHTS = {"gguf": "gguf-exact", "hf": "fp32"}


def converted_folder(source: ModelSource, options: LoadOptions) -> Path:
    """The converted ONNX folder of a GGUF or HF source, per ``options.weights``.

    "auto" on a GGUF whose MatMul weights are all floating point (f16/f32 files) falls back
    to fp32, which is then just as exact. A conversion cached before graphs had an
    ``inputs_embeds`` entry gets it now (:func:`edgespec.export.embeds_inputs.
    ensure_embeds_inputs`: the small graph file is rewritten, the weights are not read).
    """
    from edgespec.export.embeds_inputs import ensure_embeds_inputs

    folder = _converted_folder(source, options)
    ensure_embeds_inputs(folder)
    return folder


def _converted_folder(source: ModelSource, options: LoadOptions) -> Path:
    auto = options.weights == "auto"
    choice = AUTO_WEIGHTS[source.kind] if auto else options.weights
    if choice not in WEIGHTS:
        known = ", ".join(["auto", *WEIGHTS])
        raise EdgespecError(f"unknown --weights '{options.weights}' (known: {known})")
    kinds, convert = WEIGHTS[choice]
    if source.kind not in kinds:
        raise EdgespecError(
            f"--weights {choice} needs a {' or '.join(kinds)} source, not '{source.kind}'; "
            "use --weights fp32"
        )
    if not auto or choice == "fp32":
        return convert(source, options.progress)
    from edgespec.export.gguf_exact import NoQuantizedWeights

    try:
        return convert(source, options.progress)
    except NoQuantizedWeights:
        return _fp32(source, options.progress)


def converted_folder_path(source: ModelSource, options: LoadOptions) -> Path:
    """Where :func:`converted_folder` keeps the conversion per ``options.weights``, without
    converting (it may not exist yet)."""
    from edgespec.export.hf_onnx import cached_onnx_dir

    choice = AUTO_WEIGHTS[source.kind] if options.weights == "auto" else options.weights
    if choice == "gguf-exact":
        from edgespec.export.gguf_exact import VARIANT

        return cached_onnx_dir(source, graph="gqa").parent / VARIANT
    return cached_onnx_dir(source)


class OnnxBackend(Backend):
    """Converts GGUF / HF sources to ONNX (cached; a GroupQueryAttention graph with a shared
    KV buffer, holding a GGUF's own quantized weights by default) and runs them in
    onnxruntime; exported ``onnx`` artifact folders (any quantization, either graph style)
    load as they are."""

    name = "onnx"
    accepts = ("gguf", "hf", "onnx")
    supports_exact = True
    streams_blocks = True
    requires = ("onnxruntime",)
    extra = "onnx"
    devices = tuple(DEVICE_PROVIDERS)
    takes_weights = True  # fp32 or the GGUF's own blocks

    @classmethod
    def cheap_to_load(cls, source: ModelSource, options: LoadOptions) -> bool:
        """True for an exported folder or an already converted source; a first load of a
        GGUF or HF source converts it (about a minute for SmolLM2-135M), so an automatic
        backend choice does not time it until the user has loaded it once."""
        if source.kind == "onnx":
            return True
        try:
            return (converted_folder_path(source, options) / "model.onnx").exists()
        except EdgespecError:
            return False

    @classmethod
    def load(cls, source: ModelSource, options: LoadOptions) -> Model:
        if source.kind not in cls.accepts:
            raise EdgespecError(
                f"the onnx backend loads {' or '.join(cls.accepts)} models, not '{source.kind}'"
            )
        if not cls.available():
            raise missing_extra("onnxruntime", cls.extra)
        device_providers(options.device)  # an absent NPU fails here, before any conversion
        if source.kind == "onnx":  # an exported artifact folder (model.onnx + config.json)
            return load_onnx_dir(source.path, options, source.name or str(source.path))
        folder = converted_folder(source, options)
        return load_onnx_dir(folder, options, source.name or str(source.path))
