"""Compress a prompt for a :class:`~edgespec.runtime.Runtime`: which model compresses, how
the prompt is split, and what the target receives.

The compressor is, in order: the model the caller names (``compressor=`` in
:func:`edgespec.load`, ``--compressor``), a bundle's ``compressor`` role, the runtime's draft
model (the target's small sibling), else the target itself. When it shares the target's
vocabulary the target receives the kept token ids as they are; otherwise the kept tokens
are decoded to text (the compressor's tokenizer must round-trip the context exactly) and
the target encodes that text.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from edgespec.compress.core import (
    SCORERS,
    CompressOptions,
    segment_ids,
    select,
    split_question,
    structure_mask,
    word_ids,
)
from edgespec.errors import EdgespecError
from edgespec.model import Model
from edgespec.runtimes.base import LoadOptions, ModelSource
from edgespec.tokenizer import Tokenizer

if TYPE_CHECKING:
    from edgespec.compress.dolphin.memory import MemoryOptions
    from edgespec.runtime import Runtime
    from edgespec.stats import StatsRecorder

#: the ratio ``--compress`` without a value uses when the bundle names none
DEFAULT_RATIO = 0.5


@dataclass
class Compressor:
    """A model that scores prompts, with its tokenizer.

    Attributes:
        model: any loaded :class:`~edgespec.model.Model`; its cache is reset after use.
        tokenizer: the model's tokenizer.
        name: for stats (``compressor`` field).
        same_vocab: True when the target takes this tokenizer's ids as they are.
        owned: True when this object loaded ``model`` (and closes it).
    """

    model: Model
    tokenizer: Tokenizer
    name: str
    same_vocab: bool
    owned: bool = False

    def close(self) -> None:
        if self.owned:
            self.model.close()


@dataclass(frozen=True)
class Compressed:
    """The outcome of :func:`compress_prompt`, in the compressor's tokens.

    Attributes:
        context_ids: the kept context ids (BOS included when the tokenizer adds one).
        question_ids: the question ids, kept whole (no BOS).
        text: the compressed prompt as text (kept context + question).
        original: compressor tokens of the whole prompt before compression.
        kept: compressor tokens after (``len(context_ids) + len(question_ids)``).
        seconds: wall seconds spent scoring and selecting.
        cpu_s: process CPU seconds over the same span.
        note: why nothing was dropped (None when something was).
    """

    context_ids: list[int]
    question_ids: list[int]
    text: str
    original: int
    kept: int
    seconds: float
    cpu_s: float
    note: str | None = None

    @property
    def ids(self) -> list[int]:
        return self.context_ids + self.question_ids


def _strip_bos(ids: list[int], tok: Tokenizer) -> list[int]:
    return ids[1:] if ids and tok.bos_id is not None and ids[0] == tok.bos_id else ids


def compress_prompt(
    prompt: str,
    compressor: Compressor,
    options: CompressOptions,
    *,
    progress: bool = False,
) -> Compressed:
    """Drop the least informative context tokens of ``prompt``; the question stays whole.

    Raises:
        EdgespecError: a question separator that is not in the prompt, a budget smaller than
            the question, or (different vocabularies) a compressor tokenizer that cannot
            round-trip the context.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    tok = compressor.tokenizer
    if options.keep_last is not None:
        whole = tok.encode(prompt)
        head = 1 if tok.bos_id is not None and whole[:1] == [tok.bos_id] else 0
        cut = max(head, len(whole) - options.keep_last)
        ctx, question = whole[:cut], whole[cut:]
        context_text = tok.decode(_strip_bos(ctx, tok))
        question_text = prompt[len(context_text) :] if prompt.startswith(context_text) else ""
        question_text = question_text or tok.decode(question)
    else:
        context_text, question_text = split_question(prompt, options.separator)
        ctx = tok.encode(context_text) if context_text else []
        question = _strip_bos(tok.encode(question_text), tok)
    n_bos = 1 if ctx and tok.bos_id is not None and ctx[0] == tok.bos_id else 0
    original = len(ctx) + len(question)

    def unchanged(note: str) -> Compressed:
        s, c = time.perf_counter() - t0, time.process_time() - c0
        text = context_text + question_text
        return Compressed(ctx, question, text, original, original, s, c, note)

    if len(ctx) - n_bos < 2:
        return unchanged(
            "nothing to compress: the prompt is all question (mark the question "
            "with --question-sep or --keep-last)"
        )
    if options.budget is not None and original <= options.budget:
        return unchanged(
            f"the prompt ({original} tokens) is within --context-budget {options.budget}: "
            "nothing compressed"
        )
    if not compressor.same_vocab and tok.decode(_strip_bos(ctx, tok)) != context_text:
        raise EdgespecError(
            f"the compressor '{compressor.name}' cannot round-trip the prompt's text through "
            "its tokenizer; use a compressor from the target's family (--compressor)"
        )
    keep = max(n_bos + 1, options.kept_context(len(ctx), len(question)))
    scorer = SCORERS.get(options.scoring)
    pieces = [tok.decode([t]) for t in ctx]
    scores = scorer(
        compressor.model,
        ctx,
        question,
        n_bos,
        options.chunk,
        progress,
        pieces=pieces,
        question_text=question_text,
    )
    kept_idx = select(
        scores.info,
        segment_ids(pieces),
        keep,
        coarse_slack=options.coarse_slack,
        relevance=scores.relevance,
        words=word_ids(pieces),
        structure=structure_mask(pieces),
    )
    kept = [ctx[i] for i in kept_idx]
    text = tok.decode(_strip_bos(kept, tok)) + question_text
    s, c = time.perf_counter() - t0, time.process_time() - c0
    return Compressed(kept, question, text, original, len(kept) + len(question), s, c)


@dataclass
class Compression:
    """What a generation records about the compression of its prompt (see
    :class:`~edgespec.stats.Stats`: ``compressed_from``, ``compressed_to``, ``compress_s``).

    Attributes:
        compressed_from: target tokens of the prompt as given.
        compressed_to: target tokens the target received.
        seconds: compressor wall seconds (added to the time to first token).
        cpu_s: compressor CPU seconds.
        compressor: the compressor's name.
        notes: e.g. why nothing was dropped.
    """

    compressed_from: int
    compressed_to: int
    seconds: float
    cpu_s: float
    compressor: str
    notes: list[str] = field(default_factory=list)

    def record(self, rec: StatsRecorder) -> None:
        """Label the generation lossy and store the numbers in its recorder."""
        rec.lossy = rec.lossy or self.compressed_to < self.compressed_from
        rec.compressed_from = self.compressed_from
        rec.compressed_to = self.compressed_to
        rec.compress_s = self.seconds
        rec.compress_cpu_s = self.cpu_s
        rec.compressor = self.compressor
        rec.notes.extend(self.notes)


def options_for(
    rt: Runtime,
    compress: float | str | CompressOptions | MemoryOptions | None,
    context_budget: int | None,
) -> CompressOptions | MemoryOptions | None:
    """The :class:`CompressOptions` of ``Runtime.start``'s arguments (None: no compression).

    ``compress=True`` (or ``--compress`` without a value) takes the bundle's default ratio;
    ``compress="memory"`` or a :class:`~edgespec.compress.dolphin.memory.MemoryOptions`
    asks for memory compression instead (returned as the MemoryOptions).
    """
    from edgespec.compress.dolphin.memory import MEMORY
    from edgespec.compress.dolphin.memory import MemoryOptions as Memory

    if compress == MEMORY or isinstance(compress, Memory):
        if context_budget is not None:
            raise EdgespecError("--compress memory takes no --context-budget")
        return compress if isinstance(compress, Memory) else Memory()
    if isinstance(compress, CompressOptions):
        if context_budget is not None:
            raise EdgespecError("pass --compress or --context-budget, not both")
        return compress
    if compress is None and context_budget is None:
        return None
    if compress is not None and context_budget is not None:
        raise EdgespecError("pass --compress or --context-budget, not both")
    if compress is True:
        compress = rt.compress_ratio or DEFAULT_RATIO
    return CompressOptions(
        ratio=None if compress is None else float(compress), budget=context_budget
    )


#: where a separately loaded compressor scores, best first: (backend, the load options it
#: gets there when the user left ``weights`` at "auto"). Scoring is a batched forward that
#: needs every row's logits, unlike the one-token decode that
#: :func:`~edgespec.runtime.pick_backend` measures, so it has its own order, measured by
#: ``python benchmarks/compress_scoring.py`` (smollm2-135m, 2048 tokens in chunks of 512, 2
#: threads, quiet 2-core machine: onnx fp32 11.8 s, llamacpp 30.9 s; docs/compression.md).
#: ONNX Runtime's fp32 GEMMs beat llama.cpp's quantized matmuls on batched rows; the first
#: installed backend that loads the compressor's kind wins.
SCORING_BACKENDS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("onnx", {"weights": "fp32"}),
    ("llamacpp", {}),
    ("numpy", {}),
)


def bundle_scoring_backend(backends: Sequence[str], named: str | None = None) -> str | None:
    """The ``"backend"`` ``edgespec export`` records in a bundle's compressor role.

    ``backends``: the backends of the role's artifacts (one per exported format). ``named``
    (``export --compressor-backend``) must be one of them (else one line); without it, the
    first of :data:`SCORING_BACKENDS` with an artifact, else None (the loader chooses).
    """
    if named is not None:
        if named not in backends:
            raise EdgespecError(
                f"--compressor-backend {named}: the bundle has no artifact that backend "
                f"runs (the formats give: {', '.join(dict.fromkeys(backends)) or 'none'}); "
                "add its --format or name one of those"
            )
        return named
    return next((b for b, _ in SCORING_BACKENDS if b in backends), None)


def scoring_backend(
    source: ModelSource, named: str | None, options: LoadOptions
) -> tuple[str, LoadOptions]:
    """The backend a compressor loaded from ``source`` scores on, and its load options.

    ``named`` (``--compressor-backend``, ``compressor_backend=``, a bundle's compressor role
    ``backend``) is checked and used; else the first of :data:`SCORING_BACKENDS` that is
    installed and loads ``source``'s kind, else :func:`~edgespec.runtime.pick_backend`'s
    choice. The table's option tweaks (onnx: fp32 weights) apply only where the caller left
    that option at its default.
    """
    from edgespec.runtime import pick_backend
    from edgespec.runtimes import BACKENDS

    defaults = LoadOptions()
    if named is not None:
        name = pick_backend(source, named)  # one line: unknown, not installed, wrong kind
    else:
        able = [
            n
            for n, _ in SCORING_BACKENDS
            if n in BACKENDS
            and source.kind in BACKENDS.get(n).accepts
            and BACKENDS.get(n).available()
        ]
        name = able[0] if able else pick_backend(source, None)
    tweaks = {
        k: v
        for k, v in dict(SCORING_BACKENDS).get(name, {}).items()
        if getattr(options, k) == getattr(defaults, k)
    }
    return name, replace(options, **tweaks)


def compressor_of(rt: Runtime) -> Compressor:
    """The runtime's compressor (see the module docstring), loaded once.

    A compressor model named by the caller or the bundle is loaded on
    :func:`scoring_backend`'s choice. With none named, the draft (else the target)
    compresses where it is loaded, unless ``compressor_backend`` names another backend:
    then the target's model is loaded there once more to score.
    """
    if rt._compressor is not None:
        return rt._compressor
    src = rt.compressor_source
    named = rt.compressor_backend
    if src is None and named is not None and named != rt.backend:
        src = rt.source
    if src is not None:
        from edgespec.threads import load_tuned
        from edgespec.tokenizer import load_tokenizer

        ctok = load_tokenizer(src)
        same = ctok.vocab_size == rt.tokenizer.vocab_size and (
            ctok.vocab_digest() == rt.tokenizer.vocab_digest()
        )
        backend, options = scoring_backend(src, named, rt.options)
        model, _ = load_tuned(src, backend, options)
        name = f"{src.name or src.path.name}@{backend}"
        rt._compressor = Compressor(model, ctok, name, same, owned=True)
    elif rt.draft is not None:  # in its file's types, not a copy requantized for speculation
        draft = rt.file_draft()
        assert draft is not None
        rt._compressor = Compressor(draft, rt.tokenizer, "draft", True)
    else:
        rt._compressor = Compressor(rt.target, rt.tokenizer, "target", True)
    return rt._compressor


def compress_for(
    rt: Runtime,
    prompt: str | Sequence[int],
    options: CompressOptions | MemoryOptions,
    *,
    chat: bool = False,
    system: str | None = None,
) -> tuple[list[int], Compression]:
    """The target's token ids for ``prompt`` compressed by the runtime's compressor, and
    what to record. Token ids are decoded to text first; with ``chat``, the compressed text
    is wrapped in the chat template."""
    text = (
        prompt
        if isinstance(prompt, str)
        else rt.tokenizer.decode(_strip_bos(list(prompt), rt.tokenizer))
    )
    if not text.strip():
        raise EdgespecError("the prompt is empty; pass some text to continue")
    full = (
        rt.encode_prompt(text, chat=chat, system=system)
        if isinstance(prompt, str)
        else list(prompt)
    )
    from edgespec.compress.dolphin.memory import MemoryOptions as Memory
    from edgespec.compress.dolphin.memory import memory_for

    if isinstance(options, Memory):  # Dolphin memory: the target gets embeddings
        return memory_for(rt, text, options, chat=chat, system=system)
    comp = compressor_of(rt)
    result = compress_prompt(text, comp, options, progress=rt.options.progress)
    if result.note is not None:
        ids = full
    elif comp.same_vocab and not chat:
        ids = result.ids
    else:
        ids = rt.encode_prompt(result.text, chat=chat, system=system)
    notes = [result.note] if result.note else []
    return ids, Compression(len(full), len(ids), result.seconds, result.cpu_s, comp.name, notes)


def compressor_source_of(
    model_source: Any, compressor: Any, progress: bool
) -> tuple[Any, float | None, str | None]:
    """The compressor's source (``compressor`` named, else the bundle's role, else None),
    the bundle's default ratio and the bundle's compressor backend (each None when the
    bundle names none)."""
    from edgespec.bundle import bundle_root, read_manifest, role_source
    from edgespec.sources import resolve

    ratio = backend = None
    root = bundle_root(model_source.path)
    if root is not None:
        role = read_manifest(root).get("roles", {}).get("compressor", {})
        ratio, backend = role.get("default_ratio"), role.get("backend")
    if compressor is not None:
        return resolve(compressor, progress=progress), ratio, backend
    return role_source(model_source, "compressor"), ratio, backend
