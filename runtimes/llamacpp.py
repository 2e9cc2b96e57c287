"""The llama.cpp backend, driven through llama-cpp-python's low-level C API.

Why the low-level API (``llama_batch`` + ``llama_decode`` + ``llama_get_logits_ith``) and not
``Llama.eval``:

- ``Llama(logits_all=True)`` keeps an ``n_ctx x V`` float32 score matrix (400 MB at
  ``n_ctx=2048`` for a 49k vocabulary) and runs the output head for every position, even in
  one-token decode steps; ``logits_all=False`` exposes no logits at all (only the sampler sees
  them). Here each decode asks llama.cpp for exactly the rows the caller wants.
- Tree verification needs tokens that belong to several sequences at once (one sequence id per
  leaf), which ``Llama.eval`` cannot express.

Exactness. The context is built with the parameters ``llama_cpp.Llama(path, n_ctx=...)``
uses (:func:`_context_params` mirrors its constructor; a test compares them field by field),
and :meth:`LlamaCppModel.forward` splits its input into ``n_batch`` chunks and sets the
per-token logits flags exactly as ``Llama.eval`` does (every row, or the last row of each chunk).
So ``forward(prompt, all_logits=False)`` followed by one-token steps performs the same decodes,
in the same shapes, as llama-cpp-python's own greedy generation, and gives the same tokens bit
for bit. Measured on smollm2-135m Q4_1 (see tests/backends/test_llamacpp.py):

- which rows carry a logits flag does not change any logit (0.0 difference), so
  ``all_logits=True`` and ``False`` agree on the last row, and both match
  ``Llama(logits_all=True).eval`` bit for bit;
- multi-token decodes agree with each other whatever the chunking (0.0 difference), and a
  rollback followed by new tokens equals a fresh cache given the same tokens (0.0), but a
  one-token decode differs from the same position inside a multi-token batch by up to about
  1.5 logits at some positions (quantized activations take another path). The shape of the
  evaluation matters; the near-tie bound that ``edgespec calibrate`` measures
  (:func:`edgespec.losslessness.measure_near_tie_bound`) says how much for losslessness;
- the KV-cache layout matters at the same scale: after a tree commit the kept cells are
  interleaved with freed ones, and later logits move by up to about 0.5;
- the extra sequence ids reserved for trees (``n_seq_max > 1`` with a unified KV cache) do not
  change any logit (0.0 difference).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgespec.errors import EdgespecError, ModelLoadError, missing_extra
from edgespec.gguf_file import quick_check
from edgespec.model import Model, ModelInfo, check_truncate
from edgespec.runtimes.base import Backend, LoadOptions, ModelSource

if TYPE_CHECKING:
    from edgespec.tokenizer import Tokenizer

#: llama-cpp-python's default ``n_batch`` and ``n_ubatch`` (``Llama(n_batch=512, n_ubatch=512)``).
DEFAULT_N_BATCH = 512
#: Most leaves a tree given to :meth:`LlamaCppModel.forward_tree` may have by default: each
#: leaf is one llama.cpp sequence id (the committed sequence is id 0 and doubles as leaf 0).
MAX_TREE_LEAVES = 64

_GGML_LOG_LEVEL_WARN = 2
_GGML_LOG_LEVEL_ERROR = 3
_GGML_LOG_LEVEL_CONT = 5

_backend_ready = False


def _lib() -> Any:
    """The ``llama_cpp.llama_cpp`` ctypes module, with the ggml backend initialised once."""
    global _backend_ready
    try:
        from llama_cpp import llama_cpp as lib
    except ImportError:
        raise missing_extra("llama-cpp-python", "llamacpp") from None
    if not _backend_ready:
        with _LogCapture(lib).active():
            lib.llama_backend_init()
        _backend_ready = True
    return lib


class _LogCapture:
    """Keeps llama.cpp's log lines (warnings and errors) instead of printing them to stderr.

    While :meth:`active` is entered, the global llama.cpp log callback points here; on exit the
    previous callback (llama-cpp-python's) is restored. The kept lines go into error messages.
    """

    def __init__(self, lib: Any, keep: int = 20) -> None:
        self.lib = lib
        self.keep = keep
        self.lines: list[tuple[int, str]] = []
        self._level = 0
        self._callback = lib.llama_log_callback(self._on_log)  # must outlive every use

    def _on_log(self, level: int, text: bytes, user_data: Any) -> None:
        if level != _GGML_LOG_LEVEL_CONT:
            self._level = level
        if self._level in (_GGML_LOG_LEVEL_WARN, _GGML_LOG_LEVEL_ERROR):
            self.lines.append((self._level, text.decode("utf-8", "replace")))
            del self.lines[: -self.keep]

    @contextlib.contextmanager
    def active(self) -> Iterator[_LogCapture]:
        prev_cb = self.lib.llama_log_callback()
        prev_ud = ctypes.c_void_p()
        self.lib.llama_log_get(ctypes.byref(prev_cb), ctypes.byref(prev_ud))
        self.lib.llama_log_set(self._callback, None)
        try:
            yield self
        finally:
            self.lib.llama_log_set(prev_cb, prev_ud)

    def last_error(self) -> str:
        """The most recent error lines, joined into one line ('' when there were none)."""
        errors = [t.strip() for lvl, t in self.lines if lvl == _GGML_LOG_LEVEL_ERROR]
        self.lines.clear()
        return "; ".join(t for t in errors[-3:] if t)


class ModelRef:
    """A loaded ``llama_model`` pointer, freed when the last holder lets go: a
    :class:`LlamaCppModel` and the :class:`~edgespec.tokenizer.LlamaCppTokenizer` that reads
    its vocabulary share one, so either may outlive the other."""

    def __init__(self, lib: Any, ptr: Any) -> None:
        self.lib, self.ptr = lib, ptr

    def meta(self, key: str) -> str | None:
        """The GGUF metadata value ``key`` as llama.cpp prints it, or None."""
        size = 4096
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self.lib.llama_model_meta_val_str(self.ptr, key.encode("utf-8"), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8")
            size = n + 1

    def __del__(self) -> None:
        ptr, self.ptr = self.ptr, None
        if ptr:
            try:
                self.lib.llama_model_free(ptr)
            except Exception:  # interpreter shutdown: the library may already be gone
                pass


def _model_params(lib: Any) -> Any:
    """``llama_model_params`` as ``llama_cpp.Llama`` sets them by default (CPU, mmap)."""
    p = lib.llama_model_default_params()
    p.n_gpu_layers = 0
    p.split_mode = lib.LLAMA_SPLIT_MODE_LAYER
    p.main_gpu = 0
    p.vocab_only = False
    p.load_mode = lib.LLAMA_LOAD_MODE_MMAP
    return p


#: ``--kv-cache`` name -> ggml type of llama.cpp's K and V caches, and bytes per element
KV_TYPES: dict[str, tuple[str, float]] = {
    "f32": ("GGML_TYPE_F32", 4.0),
    "f16": ("GGML_TYPE_F16", 2.0),
    "q8": ("GGML_TYPE_Q8_0", 34 / 32),  # blocks of 32: 32 int8 + an f16 scale
    "q4": ("GGML_TYPE_Q4_0", 18 / 32),  # blocks of 32: 16 bytes of nibbles + an f16 scale
}


def _context_params(
    lib: Any, n_ctx: int, n_threads: int | None, n_seq_max: int, kv_cache: str = "f16"
) -> Any:
    """``llama_context_params`` as ``llama_cpp.Llama(path, n_ctx=n_ctx)`` builds them.

    Two differences, both measured not to change any logit: ``n_seq_max`` sequence ids (for
    trees) with a unified KV cache, so that every sequence sees the whole ``n_ctx``; and
    ``n_threads`` (when given) applies to batch decoding too, where ``Llama`` would use every
    core. ``n_threads=None`` keeps ``Llama``'s defaults: half the cores for one-token decodes,
    all of them for batches (``edgespec.load`` passes the fastest count measured on this
    device instead, or switches to it with :meth:`LlamaCppModel.set_threads`).

    ``kv_cache`` (:data:`KV_TYPES`) sets ``type_k`` and ``type_v``; the quantized types need
    flash attention in llama.cpp (a quantized V cache is only read by its flash kernel), so
    they turn it on: their quality is measured against the default f16 without it.
    """
    n_batch = min(n_ctx, DEFAULT_N_BATCH)
    # llama.cpp reserves max(outputs, n_seq_max) logit rows and asserts (aborting the process)
    # that they fit in n_outputs_max, which defaults to n_batch: below n_seq_max tokens of
    # context, fewer sequence ids. A tree never has more leaves than nodes, nor nodes than
    # n_ctx (= n_batch here), so no tree that fits the context is refused.
    n_seq_max = min(n_seq_max, n_batch)
    cpus = multiprocessing.cpu_count()
    p = lib.llama_context_default_params()
    p.n_ctx = n_ctx
    p.n_batch = n_batch
    p.n_ubatch = min(n_batch, DEFAULT_N_BATCH)
    p.n_threads = n_threads or max(cpus // 2, 1)
    p.n_threads_batch = n_threads or cpus
    p.rope_scaling_type = lib.LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED
    p.pooling_type = lib.LLAMA_POOLING_TYPE_UNSPECIFIED
    p.attention_type = lib.LLAMA_ATTENTION_TYPE_UNSPECIFIED
    p.rope_freq_base = 0.0
    p.rope_freq_scale = 0.0
    p.yarn_ext_factor = -1.0
    p.yarn_attn_factor = 1.0
    p.yarn_beta_fast = 32.0
    p.yarn_beta_slow = 1.0
    p.yarn_orig_ctx = 0
    p.embeddings = False
    p.offload_kqv = True
    p.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
    p.no_perf = False
    p.n_seq_max = n_seq_max
    p.kv_unified = True
    ggml_type = getattr(lib, KV_TYPES[kv_cache][0])
    p.type_k = p.type_v = ggml_type
    if kv_cache in ("q8", "q4"):
        p.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_ENABLED
    return p


class LlamaCppModel(Model):
    """A GGUF model in a llama.cpp context, with one KV cache.

    The committed sequence is llama.cpp sequence 0; ``n_past`` counts its positions. A tree
    scored by :meth:`forward_tree` stays pending (outside ``n_past``) until :meth:`keep_path`
    commits one of its paths; any other call discards it first.

    Args:
        path: the ``.gguf`` file; checked with :func:`edgespec.gguf_file.quick_check` first
            (llama.cpp's loader then rejects truncated tensor data).
        n_ctx: KV-cache capacity in tokens (0: the model's training context).
        n_threads: CPU threads for every decode; None keeps llama-cpp-python's defaults.
        max_tree_leaves: most leaves a tree may have (llama.cpp sequence ids reserved; at
            most ``n_ctx``, the most nodes a tree can have here).
        info: architecture facts; read from the file when None.
        exact: decode one token as two (the token and a dummy copy, dropped at once), so that
            plain decoding takes the multi-token kernel path that verification takes (see
            docs/speculative.md, "--exact"); the context gets one spare cell for the dummy.
        kv_cache: K and V element type, a :data:`KV_TYPES` name (None: f16, llama.cpp's
            default); ``info.extra`` records it and the cache's bytes (and f16's).

    Attributes:
        n_ctx: the usable context in tokens: the one asked for (llama.cpp may allocate more).
        n_batch: the most tokens one ``llama_decode`` call takes; longer inputs are split.
        n_vocab: V, the number of logits per position.
    """

    backend = "llamacpp"

    def __init__(
        self,
        path: str | Path,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        max_tree_leaves: int = MAX_TREE_LEAVES,
        info: ModelInfo | None = None,
        exact: bool = False,
        kv_cache: str | None = None,
    ) -> None:
        self.exact = exact
        kv = kv_cache or "f16"
        self._ctx: Any = None
        self._model: Any = None
        self._ref: ModelRef | None = None
        self._batch: Any = None
        gguf_path = quick_check(path)  # a clean ModelLoadError for missing or non-GGUF files
        lib = _lib()
        self._lib = lib
        self._log = _LogCapture(lib)
        if n_threads is not None and n_threads < 1:
            raise EdgespecError(f"n_threads must be at least 1, not {n_threads}")
        if not 1 <= max_tree_leaves <= lib.llama_max_parallel_sequences():
            raise ValueError(f"max_tree_leaves={max_tree_leaves} is outside llama.cpp's range")
        with self._log.active():
            self._model = lib.llama_model_load_from_file(
                str(gguf_path).encode("utf-8"), _model_params(lib)
            )
        self._ref = ModelRef(lib, self._model) if self._model else None  # frees it
        self._path = gguf_path
        if not self._model:
            self._model = None
            why = self._log.last_error() or "truncated or corrupt file"
            raise ModelLoadError(
                f"llama.cpp could not load '{gguf_path}' ({why}); check that the file is a "
                "complete GGUF of an architecture this llama-cpp-python supports"
            )
        if n_ctx <= 0:
            n_ctx = int(lib.llama_model_n_ctx_train(self._model))
        with self._log.active():
            # exact: one more cell (and batch slot) for the dummy of a padded step after the
            # last position
            params = _context_params(lib, n_ctx + int(exact), n_threads, max_tree_leaves, kv)
            self._ctx = lib.llama_init_from_model(self._model, params)
        max_tree_leaves = int(params.n_seq_max)  # fewer below max_tree_leaves tokens of n_ctx
        if not self._ctx:
            self._ctx = None
            why = self._log.last_error() or "out of memory?"
            self.close()
            raise EdgespecError(
                f"llama.cpp could not create a context of {n_ctx} tokens ({why}); "
                "try a smaller n_ctx"
            )
        self._mem = lib.llama_get_memory(self._ctx)
        self.n_ctx = min(n_ctx, int(lib.llama_n_ctx(self._ctx)))  # llama.cpp pads to 256
        self.n_batch = int(lib.llama_n_batch(self._ctx))
        self.n_vocab = int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self._model)))
        self.max_tree_leaves = max_tree_leaves
        info = info or self._read_info(gguf_path)
        if info.vocab_size != self.n_vocab:
            info = ModelInfo(**{**info.to_dict(), "vocab_size": self.n_vocab})
        self.info = info
        if exact:  # its own cost curve and near-tie bound
            self.info.extra["variant"] = "exact"
        if kv != "f16":  # another cache type: its own cost curve and near-tie bound
            self.info.extra["variant"] = "+".join(
                v for v in (str(self.info.extra.get("variant", "")), f"kv-{kv}") if v
            )
        # K and V of every layer for the whole context (llama.cpp allocates it up front)
        n_layer = int(lib.llama_model_n_layer(self._model))
        head_dim = int(lib.llama_model_n_embd(self._model)) // int(
            lib.llama_model_n_head(self._model)
        )
        per_token = 2 * n_layer * int(lib.llama_model_n_head_kv(self._model)) * head_dim
        self.info.extra["kv_cache"] = kv
        cells = int(lib.llama_n_ctx(self._ctx))  # as allocated (llama.cpp pads to 256)
        self.info.extra["kv_cache_bytes"] = int(per_token * cells * KV_TYPES[kv][1])
        self.info.extra["kv_cache_f16_bytes"] = int(per_token * cells * 2)
        self.info.extra["kv_cache_default"] = "f16"  # what --stats reports the saving against
        self.info.extra["kv_cache_default_bytes"] = int(per_token * cells * 2)

        self._batch = lib.llama_batch_init(self.n_batch, 0, max_tree_leaves)
        b = self._batch
        self._b_token = np.ctypeslib.as_array(b.token, shape=(self.n_batch,))
        self._b_pos = np.ctypeslib.as_array(b.pos, shape=(self.n_batch,))
        self._b_n_seq = np.ctypeslib.as_array(b.n_seq_id, shape=(self.n_batch,))
        self._b_flags = np.ctypeslib.as_array(b.logits, shape=(self.n_batch,))
        self._linear_seq_ids()
        self._n_past = 0
        self._tree: _Tree | None = None

    def own_tokenizer(self) -> Tokenizer:
        """The tokenizer of this model's file reading the vocabulary this model loaded
        (not a second copy); it keeps the loaded model alive while it lives."""
        from edgespec.tokenizer import LlamaCppTokenizer

        self._require_open()
        return LlamaCppTokenizer(self._path, model=self._ref)

    def set_threads(self, n: int) -> bool:
        """Use ``n`` threads for one-token and batched decodes alike, on the live context
        (``llama_set_n_threads``; the KV cache is kept). ``edgespec.threads`` picks ``n``."""
        if n < 1:
            raise EdgespecError(f"n_threads must be at least 1, not {n}")
        with self._log.active():  # llama.cpp logs every change ("set_n_threads: ...")
            self._lib.llama_set_n_threads(self._ctx, int(n), int(n))
        return True

    # -- Model interface ---------------------------------------------------------------------

    @property
    def n_past(self) -> int:
        """Positions committed to the KV cache (a pending tree is not counted)."""
        return self._n_past

    def forward(self, tokens: Sequence[int], *, all_logits: bool = True) -> np.ndarray:
        """Append ``tokens`` at positions ``n_past ..`` and return their logits.

        Inputs longer than ``n_batch`` are decoded in ``n_batch`` chunks, as ``Llama.eval``
        does, with the logits flag on every token (``all_logits``) or on the last token of
        each chunk (otherwise; only the final one is returned).

        Returns:
            ``float32[T, V]``, or ``float32[1, V]`` when ``all_logits`` is False.
        """
        ids = self._check_tokens(tokens)
        self._discard_tree()
        self._check_room(len(ids))
        if self.exact and len(ids) == 1:
            return self._padded(ids)
        start = self._n_past
        rows: list[np.ndarray] = []
        try:
            for i in range(0, len(ids), self.n_batch):
                chunk = ids[i : i + self.n_batch]
                n = len(chunk)
                self._b_token[:n] = chunk
                self._b_pos[:n] = np.arange(self._n_past, self._n_past + n)
                self._b_n_seq[:n] = 1
                self._b_flags[:n] = 1 if all_logits else 0
                self._b_flags[n - 1] = 1
                self._decode(n)
                if all_logits:
                    rows.append(self._logits(range(n)))
                elif i + n == len(ids):
                    rows.append(self._logits([n - 1]))
                self._n_past += n
        except BaseException:
            self._lib.llama_memory_seq_rm(self._mem, -1, start, -1)
            self._n_past = start
            raise
        return rows[0] if len(rows) == 1 else np.concatenate(rows)

    def _padded(self, ids: np.ndarray) -> np.ndarray:
        """Exact mode: decode ``[token, token]`` and drop the dummy's cell at once.

        Returns:
            ``float32[1, V]``: the token's row of the two-token decode.
        """
        p = self._n_past
        n = 2
        self._b_token[:n] = ids[0]
        self._b_pos[:n] = (p, p + 1)
        self._b_n_seq[:n] = 1
        self._b_flags[:n] = (1, 0)
        try:
            self._decode(n)
            row = self._logits([0])
        finally:
            self._lib.llama_memory_seq_rm(self._mem, -1, p + 1, -1)
        self._n_past = p + 1
        return row

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` positions (``llama_memory_seq_rm`` on the rest)."""
        check_truncate(length, self._n_past)
        self._discard_tree()
        if length < self._n_past:
            self._seq_rm(-1, length, -1)
        self._n_past = length

    def reset(self) -> None:
        """Empty the cache (``llama_memory_clear``)."""
        self._require_open()
        self._tree = None
        self._lib.llama_memory_clear(self._mem, True)
        self._n_past = 0

    def close(self) -> None:
        """Free the llama.cpp batch, context and model. Safe to call twice."""
        lib = getattr(self, "_lib", None)
        if lib is None:
            return
        with self._log.active():
            if self._batch is not None:
                lib.llama_batch_free(self._batch)
                self._batch = None
            if self._ctx is not None:
                lib.llama_free(self._ctx)
                self._ctx = None
            # the model itself goes with the last holder of its ModelRef: now, unless a
            # tokenizer still reads its vocabulary (own_tokenizer)
            self._model = self._ref = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may already be gone
            pass

    # -- trees ---------------------------------------------------------------------------------

    def forward_tree(self, tokens: Sequence[int], parents: Sequence[int]) -> np.ndarray:
        """Score a token tree in one pass, without committing it.

        Node ``i`` holds ``tokens[i]`` at position ``n_past + depth(i)`` and attends to the
        committed cache and its own ancestors only. Each leaf gets a llama.cpp sequence id;
        a node belongs to the sequences of all leaves below it. Call :meth:`keep_path` to
        commit the accepted path; any other call discards the tree.

        Numerics: a path's logits match a linear batched forward of the same tokens up to
        float rounding (attention sums run over a KV layout interleaved with other branches).

        Args:
            tokens: T >= 1 token ids.
            parents: ``parents[i]`` is the index of node i's parent in this tree, or -1 when
                the parent is the last committed token; parents come before children.

        Returns:
            ``float32[T, V]``: row i is the distribution over the token after node i.
        """
        ids = self._check_tokens(tokens)
        tree = _Tree.build(parents, len(ids))
        if tree.n_leaves > self.max_tree_leaves:
            raise ValueError(
                f"the tree has {tree.n_leaves} leaves; this model allows {self.max_tree_leaves} "
                "(max_tree_leaves)"
            )
        self._discard_tree()
        self._check_room(len(ids))
        lib = self._lib
        for s in range(1, tree.n_leaves):  # every leaf sequence sees the committed prefix
            lib.llama_memory_seq_cp(self._mem, 0, s, -1, -1)
        self._tree = tree
        rows: list[np.ndarray] = []
        try:
            for i in range(0, len(ids), self.n_batch):
                n = min(self.n_batch, len(ids) - i)
                self._b_token[:n] = ids[i : i + n]
                self._b_pos[:n] = self._n_past + tree.depth[i : i + n]
                self._b_flags[:n] = 1
                for j in range(n):
                    seqs = tree.seqs[i + j]
                    self._b_n_seq[j] = len(seqs)
                    row = self._batch.seq_id[j]
                    for k, s in enumerate(seqs):
                        row[k] = s
                self._decode(n)
                rows.append(self._logits(range(n)))
        except BaseException:
            self._discard_tree()
            raise
        finally:
            self._linear_seq_ids(min(len(ids), self.n_batch))
        return rows[0] if len(rows) == 1 else np.concatenate(rows)

    def keep_path(self, indices: Sequence[int]) -> None:
        """Commit one root-to-node path of the pending tree; drop the rest of the tree.

        Args:
            indices: node indices from the last :meth:`forward_tree`, root first, each the
                child of the one before (empty: commit nothing).
        """
        tree = self._tree
        if tree is None:
            raise ValueError("keep_path needs a pending tree; call forward_tree first")
        path = [int(i) for i in indices]
        expected = -1
        for i in path:
            if not 0 <= i < len(tree.parents) or tree.parents[i] != expected:
                raise ValueError(f"{path} is not a root-first path of the tree {tree.parents}")
            expected = i
        if not path:
            self._discard_tree()
            return
        k = len(path)
        s = tree.seqs[path[-1]][0]  # a leaf below the last node: every path node holds it
        lib, mem, p0 = self._lib, self._mem, self._n_past
        if s == 0:
            lib.llama_memory_seq_rm(mem, 0, p0 + k, -1)
        else:
            lib.llama_memory_seq_rm(mem, 0, p0, -1)
            lib.llama_memory_seq_cp(mem, s, 0, p0, p0 + k)
        for t in range(1, tree.n_leaves):
            lib.llama_memory_seq_rm(mem, t, -1, -1)
        self._tree = None
        self._n_past += k

    supports_tree = True

    def commit_tree_path(self, base: int, path: Sequence[int]) -> None:
        """:meth:`Model.commit_tree_path` over :meth:`keep_path` (the tree is pending, so
        ``n_past`` is still ``base``)."""
        if base != self._n_past:
            raise ValueError(f"the tree was scored at {base}, the cache is at {self._n_past}")
        self.keep_path(path)

    # -- helpers -------------------------------------------------------------------------------

    def _read_info(self, path: Path) -> ModelInfo:
        """Architecture facts from llama.cpp itself (cheap; the gguf package's reader parses
        every vocabulary string in Python, which takes seconds)."""
        lib, m = self._lib, self._model
        assert self._ref is not None  # (loaded: the caller checked)
        return ModelInfo(
            arch=self._ref.meta("general.architecture") or "unknown",
            n_layers=int(lib.llama_model_n_layer(m)),
            hidden_size=int(lib.llama_model_n_embd(m)),
            vocab_size=int(lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(m))),
            context_length=int(lib.llama_model_n_ctx_train(m)),
            source=str(path),
        )

    def _require_open(self) -> None:
        if self._ctx is None:
            raise ValueError("this model is closed")

    def _check_tokens(self, tokens: Sequence[int]) -> np.ndarray:
        self._require_open()
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("forward needs at least one token")
        if ids.min() < 0 or ids.max() >= self.n_vocab:
            raise ValueError(f"token ids must lie in 0..{self.n_vocab - 1}")
        return ids.astype(np.int32)

    def _check_room(self, n: int) -> None:
        if self._n_past + n > self.n_ctx:
            raise EdgespecError(
                f"the context is full: {self._n_past} cached + {n} new tokens exceed n_ctx="
                f"{self.n_ctx}; load the model with a larger n_ctx or shorten the input"
            )

    def _linear_seq_ids(self, n: int | None = None) -> None:
        """Point the first ``n`` batch slots (all by default) at sequence 0, as forward needs."""
        for j in range(self.n_batch if n is None else n):
            self._batch.seq_id[j][0] = 0

    def _decode(self, n: int) -> None:
        self._batch.n_tokens = n
        with self._log.active():
            rc = self._lib.llama_decode(self._ctx, self._batch)
        if rc != 0:
            why = self._log.last_error() or "no reason given"
            raise EdgespecError(f"llama_decode failed with code {rc} ({why})")

    def _logits(self, rows: Sequence[int]) -> np.ndarray:
        out = np.empty((len(rows), self.n_vocab), dtype=np.float32)
        nbytes = self.n_vocab * 4
        for j, i in enumerate(rows):
            ptr = self._lib.llama_get_logits_ith(self._ctx, i)
            if not ptr:
                raise EdgespecError(f"llama.cpp returned no logits for batch row {i}")
            ctypes.memmove(out[j].ctypes.data, ptr, nbytes)
        return out

    def _seq_rm(self, seq: int, p0: int, p1: int) -> None:
        if not self._lib.llama_memory_seq_rm(self._mem, seq, p0, p1):
            raise EdgespecError(
                "llama.cpp cannot drop part of this model's memory (a recurrent model?); "
                "speculative decoding needs a model with a KV cache"
            )

    def _discard_tree(self) -> None:
        tree, self._tree = self._tree, None
        if tree is None:
            return
        self._lib.llama_memory_seq_rm(self._mem, -1, self._n_past, -1)
        for t in range(1, tree.n_leaves):
            self._lib.llama_memory_seq_rm(self._mem, t, -1, -1)


class _Tree:
    """A validated token tree: depths, and each node's sequence ids (its primary one first)."""

    def __init__(self, parents: list[int], depth: np.ndarray, seqs: list[list[int]]) -> None:
        self.parents = parents
        self.depth = depth
        self.seqs = seqs
        self.n_leaves = 1 + max(max(s) for s in seqs)

    @classmethod
    def build(cls, parents: Sequence[int], n: int) -> _Tree:
        par = [int(p) for p in parents]
        if len(par) != n:
            raise ValueError(f"{len(par)} parents for {n} tokens")
        depth = np.zeros(n, dtype=np.int32)
        has_child = [False] * n
        for i, p in enumerate(par):
            if not -1 <= p < i:
                raise ValueError(f"parents[{i}] = {p}: a parent must be -1 or an earlier node")
            if p >= 0:
                depth[i] = depth[p] + 1
                has_child[p] = True
        leaves = [i for i in range(n) if not has_child[i]]
        seqs: list[list[int]] = [[] for _ in range(n)]
        for s, leaf in enumerate(leaves):  # leaf s and all its ancestors belong to sequence s
            i = leaf
            while i >= 0:
                seqs[i].append(s)
                i = par[i]
        return cls(par, depth, seqs)


class LlamaCppBackend(Backend):
    """GGUF files through llama.cpp (llama-cpp-python)."""

    name: ClassVar[str] = "llamacpp"
    accepts: ClassVar[tuple[str, ...]] = ("gguf",)
    requires: ClassVar[tuple[str, ...]] = ("llama_cpp",)
    extra: ClassVar[str] = "llamacpp"
    supports_exact: ClassVar[bool] = True
    streams_blocks: ClassVar[bool] = True
    reads_own_vocab: ClassVar[bool] = True
    kv_cache_types: ClassVar[tuple[str, ...]] = tuple(KV_TYPES)

    @classmethod
    def load(cls, source: ModelSource, options: LoadOptions) -> LlamaCppModel:
        if source.kind not in cls.accepts:
            raise EdgespecError(
                f"the llamacpp backend loads GGUF files, not '{source.kind}' sources "
                f"('{source.name}'); export it to GGUF first or pick another backend"
            )
        return LlamaCppModel(
            source.path,
            n_ctx=options.n_ctx,
            n_threads=options.n_threads,
            exact=options.exact,
            kv_cache=options.kv_cache,
        )
