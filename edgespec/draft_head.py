"""A draft model's frequent-token head (FR-Spec, Zhao et al. 2025): the draft computes the
logits of only the N most frequent tokens, so its output layer costs N/V of the full one.

On the Qwen2.5 draft (V = 151936, width 896) the full head is 30-35 % of a drafted token
(``benchmarks/tvm_profile.py --ops``); the verify still runs the target's full head, so
speculation stays lossless. A token outside the head can never be drafted: the draft run
ends there and the target's own token is kept, so only the acceptance rate can drop.

Which tokens: every end-of-generation and BOS id, then the most frequent ids of a text
corpus, then ids in id order. The corpus is the user's files (``corpus``), or by default the
Python standard library of the running interpreter, a code corpus present on every machine
that runs edgespec; its counts are then interleaved with the id order, since byte-level BPE
ids follow merge order, a rough frequency order that covers the prose a code corpus lacks.
On the Qwen2.5 tokenizer with a 32768-token head, the tokens the 1.5B generated on our four
workloads fell outside the default head at 2.4 % (code), 7.8 % (chat), 5.1 % (json) and
10.6 % (summarize); by counts alone 2.4, 14.4, 7.8 and 16.3 %, by id order alone 4.0, 5.7,
8.6 and 10.3 % (``benchmarks/draft_head_coverage.py``). The counts are cached under
``$EDGESPEC_HOME/draft_heads``.

Prompt slots: the head's least frequent rows (1024 by default) are refilled per generation
with the prompt's tokens the other rows lack (:func:`prompt_slot_ids`,
``Model.fit_head``), since answers copy a prompt's rare tokens; with them the misses above
are 1.3, 6.9, 3.5 and 0.8 %. A draft gets a head by default where :func:`default_size`
says so.
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.fileutil import atomic_path
from edgespec.home import edgespec_home
from edgespec.model import Model
from edgespec.tokenizer import Tokenizer

#: head sizes are rounded up to this (the quantized kernels' output tile)
HEAD_MULTIPLE = 64
#: characters of the default corpus tokenized (about 8 s once, then cached)
CORPUS_CHARS = 8_000_000
#: bump when the selection below changes meaning (cached lists rekey)
HEAD_VERSION = 1
#: the head a draft gets when ``--draft-head`` is not given (:func:`default_size`)
DEFAULT_SIZE = 32768
#: ... provided its vocabulary is at least this many times larger
DEFAULT_MIN_RATIO = 4


def default_size(model: Model) -> int:
    """The head a draft model gets by default: :data:`DEFAULT_SIZE` tokens when its backend
    can narrow it (:attr:`Model.takes_head`) and its vocabulary is at least
    :data:`DEFAULT_MIN_RATIO` times larger, else 0 (the full vocabulary). Measured on the
    Qwen2.5 0.5B draft (V = 151936) on tvm (docs/benchmarks.md sections 10 and 11)."""
    big = model.info.vocab_size >= DEFAULT_MIN_RATIO * DEFAULT_SIZE
    return DEFAULT_SIZE if big and model.takes_head else 0


def default_corpus() -> list[Path]:
    """The standard library's ``.py`` files of this interpreter, in path order."""
    return sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))


def _read_corpus(files: Sequence[Path], chars: int) -> list[str]:
    """Up to ``chars`` characters of ``files``, spread evenly over them (every s-th file)."""
    sizes = [f.stat().st_size for f in files]
    stride = max(1, round(sum(sizes) / chars)) if chars else 1
    texts: list[str] = []
    total = 0
    for f in files[::stride]:
        if chars and total >= chars:
            break
        try:
            text = f.read_text(encoding="utf-8", errors="ignore")
        except OSError as exc:
            raise EdgespecError(f"cannot read corpus file '{f}' ({exc.strerror})") from None
        texts.append(text)
        total += len(text)
    return texts


def token_counts(tokenizer: Tokenizer, texts: Sequence[str], n_vocab: int) -> np.ndarray:
    """How often each id occurs in ``texts``: ``int64[n_vocab]`` (ids past it dropped)."""
    counts = np.zeros(n_vocab, dtype=np.int64)
    for text in texts:
        ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
        ids = ids[(ids >= 0) & (ids < n_vocab)]
        counts += np.bincount(ids, minlength=n_vocab)
    return counts


def select(
    counts: np.ndarray, size: int, always: Sequence[int] = (), interleave: bool = False
) -> np.ndarray:
    """The head: ``always`` first, then the ids with a count, most frequent first (ties by
    id), or with ``interleave`` alternately one of those and the next id in id order; then
    ids in id order, until ``size`` distinct ids.

    Args:
        counts: ``int64[V]`` occurrences per id.
        size: ids to keep, ``len(always) <= size <= V``.
    Returns:
        ``int64[size]``, ascending.
    """
    V = counts.size
    by_count = np.argsort(-counts, kind="stable")
    by_count = by_count[counts[by_count] > 0]
    picked = np.zeros(V, dtype=bool)
    out: list[int] = []

    def take(i: int) -> None:
        if not picked[i]:
            picked[i] = True
            out.append(i)

    for i in always:
        take(int(i))
    ids = iter(range(V))
    for c in by_count.tolist():
        if len(out) >= size:
            break
        take(c)
        for i in ids if interleave else ():  # the next id not yet picked
            if not picked[i]:
                take(i)
                break
    for i in range(V):
        if len(out) >= size:
            break
        take(i)
    return np.sort(np.asarray(out[:size], dtype=np.int64))


def head_size(size: int, n_vocab: int) -> int:
    """``size`` rounded up to :data:`HEAD_MULTIPLE`, checked against the vocabulary.

    Raises:
        EdgespecError: below 1, or not below V once rounded (nothing would be saved).
    """
    rounded = -(-int(size) // HEAD_MULTIPLE) * HEAD_MULTIPLE
    top = (n_vocab - 1) // HEAD_MULTIPLE * HEAD_MULTIPLE
    if size < 1 or rounded > top:
        raise EdgespecError(
            f"--draft-head {size} is outside [1, {top}]: the head keeps that many of the "
            f"draft's {n_vocab} tokens (rounded up to {HEAD_MULTIPLE})"
        )
    return rounded


def frequent_tokens(
    tokenizer: Tokenizer,
    n_vocab: int,
    size: int,
    corpus: Sequence[str | Path] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """The ids of a draft's frequent-token head (see the module docstring).

    Args:
        tokenizer: the draft's (and target's) tokenizer.
        n_vocab: the draft model's logits per position (may exceed the tokenizer's).
        size: ids wanted; rounded up to :data:`HEAD_MULTIPLE`.
        corpus: UTF-8 text files to count; None: :func:`default_corpus`
            (:data:`CORPUS_CHARS` of it). A user corpus is read whole.
    Returns:
        ``int64[size']`` ascending ids, every one ``< n_vocab``.
    Raises:
        EdgespecError: a bad size, an unreadable or empty corpus.
    """
    size = head_size(size, n_vocab)
    counts = corpus_counts(tokenizer, n_vocab, corpus, progress)
    return select(counts, size, _always(tokenizer, n_vocab), corpus is None)


def corpus_counts(
    tokenizer: Tokenizer,
    n_vocab: int,
    corpus: Sequence[str | Path] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """How often each id occurs in ``corpus`` (as :func:`frequent_tokens` takes it):
    ``int64[n_vocab]``, counted once and cached under ``$EDGESPEC_HOME/draft_heads``, keyed
    by the tokenizer, the files' paths, sizes and mtimes.

    Raises:
        EdgespecError: an unreadable or empty corpus.
    """
    files = default_corpus() if corpus is None else [Path(p).expanduser() for p in corpus]
    chars = CORPUS_CHARS if corpus is None else 0
    for f in files:
        if not f.is_file():
            raise EdgespecError(f"draft-head corpus file '{f}' does not exist")
    h = hashlib.sha256(f"{HEAD_VERSION}\n{tokenizer.vocab_digest()}\n{n_vocab}\n{chars}\n".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}\n{st.st_size}\n{st.st_mtime_ns}\n".encode())
    cache = edgespec_home() / "draft_heads" / f"{h.hexdigest()[:20]}.npy"
    counts = _read_counts(cache, n_vocab)
    if counts is None:
        if progress:
            import sys

            print(
                f"edgespec: counting tokens in {len(files)} corpus files for the draft head "
                "(once; cached)",
                file=sys.stderr,
            )
        counts = token_counts(tokenizer, _read_corpus(files, chars), n_vocab)
        if not counts.any():
            raise EdgespecError("the draft-head corpus has no text; pass UTF-8 text files")
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, counts, allow_pickle=False)
    return counts


def _read_counts(cache: Path, n_vocab: int) -> np.ndarray | None:
    """The cached counts ``int64[n_vocab]``, or None when absent, unreadable or mis-sized."""
    try:
        counts = np.load(cache, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return counts if counts.shape == (n_vocab,) else None


def _always(tokenizer: Tokenizer, n_vocab: int) -> list[int]:
    """Ids every head keeps: end of generation and BOS."""
    ids = sorted(tokenizer.eos_ids) + ([tokenizer.bos_id] if tokenizer.bos_id is not None else [])
    return [i for i in ids if 0 <= i < n_vocab]


def slot_count(slots: int, size: int) -> int:
    """Prompt slots of a head of ``size`` (a multiple of :data:`HEAD_MULTIPLE`): ``slots``
    rounded down to :data:`HEAD_MULTIPLE`, at most half the head."""
    return min(int(slots), size // 2) // HEAD_MULTIPLE * HEAD_MULTIPLE


def head_with_slots(
    tokenizer: Tokenizer,
    n_vocab: int,
    size: int,
    slots: int,
    corpus: Sequence[str | Path] | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, int]:
    """A head of :func:`frequent_tokens` whose least frequent ``slots`` ids (see
    :func:`slot_count`) come last, as fillers of its prompt slots.

    Returns:
        ``(ids int64[size'], slots')``: the fixed ids ascending, then the fillers ascending.
    Raises:
        EdgespecError: as :func:`frequent_tokens`.
    """
    size = head_size(size, n_vocab)
    counts = corpus_counts(tokenizer, n_vocab, corpus, progress)
    always, interleave = _always(tokenizer, n_vocab), corpus is None
    ids = select(counts, size, always, interleave)
    slots = slot_count(slots, size)
    if not slots:
        return ids, 0
    # the selection is greedy in one order, so a smaller head is a subset of a larger one
    core = select(counts, size - slots, always, interleave)
    return np.concatenate([core, np.setdiff1d(ids, core)]), slots


def prompt_slot_ids(
    prompt: Sequence[int], core: np.ndarray, fillers: np.ndarray, slots: int
) -> tuple[np.ndarray, int]:
    """What a head's ``slots`` prompt slots hold for ``prompt``: the prompt's ids that the
    head's fixed rows lack, most frequent in the prompt first (ties: the latest first),
    then ``fillers`` not already among them.

    Args:
        prompt: token ids (ids outside ``core``'s range are ignored).
        core: ``bool[V]``, True at the head's fixed ids.
        fillers: ``int64[slots]``, the slots' ids when the prompt needs none.
    Returns:
        ``(int64[slots] ids, how many of them came from the prompt)``.
    """
    p = np.asarray(prompt, dtype=np.int64).reshape(-1)
    p = p[(p >= 0) & (p < core.size)]
    p = p[~core[p]][::-1]  # latest first
    uniq, latest, counts = np.unique(p, return_index=True, return_counts=True)
    chosen = uniq[np.lexsort((latest, -counts))][:slots]
    rest = fillers[~np.isin(fillers, chosen)][: slots - chosen.size]
    return np.concatenate([chosen, rest]).astype(np.int64), int(chosen.size)
