"""Dolphin-style memory: a context read by the compressor becomes N input embeddings of the
target (Chen et al. 2024, "Dolphin: Long Context as a New Modality for Energy-Efficient
On-Device Language Models"; the same idea as ICAE, xRAG and 500xCompressor).

    context ids ──compressor──► hidden states H: [T_ctx, d_c] (last block, final-normed)
                ──pool──► S: [N, d_c] (mean over N contiguous segments)
                ──projector──► M: [N, d_t] = W2 · gelu(W1 · S + b1) + b2
    target input: M (through ``forward_embeds``) then the question's token ids

Frozen compressor and target; only the projector is trained (``edgespec train-compressor``,
:mod:`edgespec.compress.dolphin.train`). This module needs only NumPy: a projector file is
an ``.npz`` with the four arrays and a JSON ``meta`` (the model pair's digests, N, shapes).

Memory is lossy by construction (the target never sees the context's tokens); every run is
labelled so.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgespec.compress.prompt import Compression
from edgespec.errors import EdgespecError, ModelLoadError
from edgespec.model import Model

if TYPE_CHECKING:
    from edgespec.runtime import Runtime
    from edgespec.stats import StatsRecorder

#: file name of the projector inside a bundle's compressor folder or a plain output folder
PROJECTOR_FILE = "projector.npz"
#: the ``--compress`` value that asks for memory instead of a ratio
MEMORY = "memory"
PROJECTOR_VERSION = 1


def pool_segments(hidden: np.ndarray, slots: int) -> np.ndarray:
    """Mean-pool ``hidden: [T, d]`` over ``min(slots, T)`` contiguous segments of nearly
    equal length (the first ``T % n`` are one longer) -> ``float32[n, d]``."""
    if hidden.ndim != 2 or hidden.shape[0] == 0:
        raise ValueError(f"pool_segments needs [T >= 1, d], not {hidden.shape}")
    parts = np.array_split(hidden.astype(np.float64), min(slots, hidden.shape[0]), axis=0)
    return np.stack([p.mean(axis=0) for p in parts]).astype(np.float32)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """torch's ``gelu(approximate="tanh")``."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


@dataclass(frozen=True)
class Projector:
    """The trained MLP ``d_c -> hidden -> d_t`` and what it was trained for.

    Attributes:
        w1: ``float32[d_c, hidden]``; b1: ``[hidden]``; w2: ``[hidden, d_t]``; b2: ``[d_t]``.
        meta: ``memory_slots``, ``compressor`` / ``target`` ({name, sha256}), ``steps``,
            ``examples``, ``final_loss``, ``version``.
    """

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def slots(self) -> int:
        return int(self.meta.get("memory_slots", 0))

    def __call__(self, pooled: np.ndarray) -> np.ndarray:
        """``pooled: [n, d_c]`` -> memory embeddings ``float32[n, d_t]``."""
        x = pooled.astype(np.float32)
        return (gelu_tanh(x @ self.w1 + self.b1) @ self.w2 + self.b2).astype(np.float32)

    def save(self, path: Path) -> None:
        """Write the ``.npz`` atomically."""
        from edgespec.fileutil import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                w1=self.w1,
                b1=self.b1,
                w2=self.w2,
                b2=self.b2,
                meta=np.array(json.dumps(self.meta)),
            )

    @classmethod
    def load(cls, path: str | Path) -> Projector:
        """Read a projector file; one-line errors for a missing or foreign file."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("w1", "b1", "w2", "b2")}
                meta = json.loads(str(z["meta"]))
        except FileNotFoundError:
            raise ModelLoadError(
                f"projector '{path}' does not exist; train one with edgespec train-compressor"
            ) from None
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"'{path}' is not an edgespec projector ({exc})") from None
        return cls(**arrays, meta=meta)

    def check_pair(self, compressor_sha: str, target_sha: str, where: str) -> None:
        """Refuse a projector trained for another (compressor, target) pair."""
        want = (
            self.meta.get("compressor", {}).get("sha256"),
            self.meta.get("target", {}).get("sha256"),
        )
        if want != (compressor_sha, target_sha):
            c, t = self.meta.get("compressor", {}), self.meta.get("target", {})
            raise EdgespecError(
                f"projector '{where}' was trained for compressor {c.get('name')} "
                f"({str(want[0])[:12]}) and target {t.get('name')} ({str(want[1])[:12]}), not "
                f"this pair ({compressor_sha[:12]}, {target_sha[:12]}); train one for it with "
                "edgespec train-compressor"
            )


def memory_embeddings(
    compressor: Any, projector: Projector, context_ids: Sequence[int]
) -> np.ndarray:
    """The N memory vectors of ``context_ids`` (compressor tokens): ``float32[N, d_t]``.

    ``compressor`` needs ``hidden_states`` (the numpy and onnx backends); its cache is
    emptied before and after.
    """
    if not hasattr(compressor, "hidden_states"):
        raise EdgespecError(
            f"memory compression needs the compressor on the numpy or onnx backend, not "
            f"'{compressor.backend}'; pass --backend numpy or --backend onnx"
        )
    compressor.reset()
    try:
        hidden = compressor.hidden_states(list(context_ids))
    finally:
        compressor.reset()
    return projector(pool_segments(hidden, projector.slots))


class MemoryPrefixed(Model):
    """The target with memory embeddings in front: ``reset()`` keeps (or refills) the
    memory, so a strategy that starts from an empty cache starts after the memory.

    Everything else is the inner model's: positions count the memory rows.

    Args:
        inner: the target (needs ``forward_embeds``).
        memory: ``[N, d_t]`` rows, prefilled now (the caller times this).
    """

    def __init__(self, inner: Any, memory: np.ndarray) -> None:
        if not hasattr(inner, "forward_embeds"):
            raise EdgespecError(
                f"memory compression needs a target that takes input embeddings (numpy or "
                f"onnx backend), not '{inner.backend}'; pass --backend numpy or --backend onnx"
            )
        self.inner, self.memory = inner, memory
        self.info, self.backend = inner.info, inner.backend
        self.supports_tree = inner.supports_tree
        self.n_memory = int(memory.shape[0])
        inner.reset()
        inner.forward_embeds(memory, all_logits=False)

    @property
    def n_past(self) -> int:
        return int(self.inner.n_past)

    def forward(self, tokens: Sequence[int], *, all_logits: bool = True) -> np.ndarray:
        return np.asarray(self.inner.forward(tokens, all_logits=all_logits))

    def truncate(self, length: int) -> None:
        self.inner.truncate(length)

    def forward_tree(self, tokens: Sequence[int], parents: Sequence[int]) -> np.ndarray:
        return np.asarray(self.inner.forward_tree(tokens, parents))

    def commit_tree_path(self, base: int, path: Sequence[int]) -> None:
        self.inner.commit_tree_path(base, path)

    def reset(self) -> None:
        """Back to just the memory (refilled when something cut into it)."""
        if self.inner.n_past >= self.n_memory:
            self.inner.truncate(self.n_memory)
        else:
            self.inner.reset()
            self.inner.forward_embeds(self.memory, all_logits=False)

    def __getattr__(self, name: str) -> Any:  # set_threads, n_ctx, ... of the inner model
        return getattr(self.inner, name)


@dataclass(frozen=True)
class MemoryOptions:
    """``--compress memory``: the context becomes the projector's memory slots.

    Attributes:
        projector: the projector file; None: the bundle's (its compressor role).
        separator: the question is the text after the last occurrence (else the last
            paragraph, as for prompt compression).
    """

    projector: str | Path | None = None
    separator: str | None = None


@dataclass
class MemoryCompression(Compression):
    """What a memory run records; always lossy. ``target`` is the memory-prefixed target."""

    target: Any = None

    def record(self, rec: StatsRecorder) -> None:
        super().record(rec)
        rec.lossy = True


def projector_of(rt: Runtime, opts: MemoryOptions) -> tuple[Projector, str]:
    """The projector named by ``opts``, else the bundle's; and where it came from."""
    from edgespec.bundle import bundle_root, read_manifest

    if opts.projector is not None:
        return Projector.load(opts.projector), str(opts.projector)
    root = bundle_root(rt.source.path)
    entry = None
    if root is not None:
        entry = read_manifest(root).get("roles", {}).get("compressor", {}).get("projector")
    if not entry:
        raise EdgespecError(
            "--compress memory needs a projector: pass --projector FILE or a bundle whose "
            "compressor role has one (edgespec train-compressor --out BUNDLE)"
        )
    from edgespec.fileutil import sha256_file

    path = root / entry["path"]
    if sha256_file(path) != entry["sha256"]:
        raise EdgespecError(f"projector '{path}' does not match its checksum; retrain it")
    return Projector.load(path), str(path)


def memory_for(
    rt: Runtime,
    prompt: str | Sequence[int],
    opts: MemoryOptions,
    *,
    chat: bool = False,
    system: str | None = None,
) -> tuple[list[int], MemoryCompression]:
    """The question's target ids and the memory-prefixed target for ``prompt``.

    The compressor (see :func:`edgespec.compress.prompt.compressor_of`) reads the context;
    its pooled hidden states pass through the projector into the target's cache (the
    question follows, through the chat template with ``chat``). The time
    of both (compressor forward and memory prefill) is recorded as ``compress_s``, so it
    counts in the time to first token.
    """
    from edgespec.compress.core import split_question
    from edgespec.compress.prompt import _strip_bos, compressor_of

    t0, c0 = time.perf_counter(), time.process_time()
    text = prompt if isinstance(prompt, str) else rt.tokenizer.decode(list(prompt))
    if not text.strip():
        raise EdgespecError("the prompt is empty; pass some text to continue")
    projector, where = projector_of(rt, opts)
    comp = compressor_of(rt)
    projector.check_pair(comp_digest(rt, comp), rt.source.digest(), where)
    context, question = split_question(text, opts.separator)
    ctx_ids = _strip_bos(comp.tokenizer.encode(context), comp.tokenizer) if context else []
    if not ctx_ids:
        raise EdgespecError(
            "--compress memory: the prompt has no context before the question (mark the "
            "question with --question-sep)"
        )
    full = len(rt.tokenizer.encode(text))
    if chat:  # the question alone goes through the chat template, after the memory
        q_ids = rt.encode_prompt(question.strip(), chat=True, system=system)
    else:
        q_ids = _strip_bos(rt.tokenizer.encode(question), rt.tokenizer)
    memory = memory_embeddings(comp.model, projector, ctx_ids)
    target = MemoryPrefixed(rt.target, memory)
    s, c = time.perf_counter() - t0, time.process_time() - c0
    name = f"memory:{comp.name} ({memory.shape[0]} slots)"
    rec = MemoryCompression(full, memory.shape[0] + len(q_ids), s, c, name, [], target)
    return q_ids, rec


def comp_digest(rt: Runtime, comp: Any) -> str:
    """The content digest of the runtime's compressor model (its source, or the target's
    when the target compresses its own context).

    Raises:
        EdgespecError: the draft model would compress (its source is not recorded).
    """
    if rt.compressor_source is not None:
        return str(rt.compressor_source.digest())
    if comp.model is not rt.target:
        raise EdgespecError(
            "--compress memory: name the compressor the projector was trained with "
            "(--compressor MODEL)"
        )
    return str(rt.source.digest())
