"""Prompt compression by self-information (Selective-Context, Li et al. 2023; the
coarse-to-fine budget of LLMLingua, Jiang et al. 2023), training-free.

A small causal LM (the *compressor*) reads the context once and scores every token by its
self-information ``I(x_i) = -log p(x_i | x_<i)`` (nats). Tokens the compressor predicted
well carry little information and are dropped first. Selection is coarse to fine:

1. coarse: whole segments (sentences and lines) with the lowest mean self-information (or
   question relevance) are dropped, lowest first, until the next would leave fewer than
   ``keep * (1 + coarse_slack)`` tokens;
2. fine: within the remaining segments, single tokens with the lowest self-information are
   dropped until exactly ``keep`` remain.

The question (the instruction at the end of the prompt) is never scored nor dropped; the
caller splits it off (:func:`split_question`). Order is preserved and ties break by
position, so the result is deterministic.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.model import Model
from edgespec.registry import Registry

#: characters that end a coarse segment when a token's text ends with one (after strip)
SEGMENT_ENDS = (".", "!", "?", ";", ":")


@dataclass(frozen=True)
class CompressOptions:
    """How much of a prompt to keep, and what must survive whole.

    Exactly one of ``ratio`` and ``budget`` is set.

    Attributes:
        ratio: keep this share of the context tokens, in (0, 1] (1: nothing dropped).
        budget: the whole prompt (context + question) in at most this many tokens of the
            compressor's vocabulary; a prompt already within it is left as it is.
        keep_last: the question is the prompt's last ``keep_last`` tokens; None: the text
            after ``separator``, else the last paragraph (after the last blank line, else
            the last line).
        separator: the question is the text after the last occurrence of this marker
            (the marker itself is removed); None: see ``keep_last``.
        coarse_slack: the coarse stage stops dropping whole segments at
            ``keep * (1 + coarse_slack)`` tokens; the fine stage drops single tokens.
        chunk: tokens per batched scoring forward.
        scoring: how the compressor scores the context, a :data:`SCORERS` name:
            ``overlap`` (one pass over the context; segments ranked by the question's rare
            tokens they repeat; the default: it keeps the facts as often as ``contrastive``
            at half the compressor time, measured in docs/compression.md), ``contrastive``
            (two passes: segments ranked by how much more predictable the question makes
            them, LongLLMLingua's contrastive perplexity, Jiang et al. 2024),
            ``conditional`` (one pass, the question placed before the context) or
            ``plain`` (one pass over the context alone, Selective-Context).
    """

    ratio: float | None = None
    budget: int | None = None
    keep_last: int | None = None
    separator: str | None = None
    coarse_slack: float = 0.25
    chunk: int = 512
    scoring: str = "overlap"

    def __post_init__(self) -> None:
        if (self.ratio is None) == (self.budget is None):
            raise EdgespecError("pass one of --compress RATIO and --context-budget TOKENS")
        if self.ratio is not None and not (0.0 < self.ratio <= 1.0):
            raise EdgespecError(
                f"--compress must be in (0, 1] (the share of the context to keep), got {self.ratio}"
            )
        if self.budget is not None and self.budget < 1:
            raise EdgespecError(f"--context-budget must be >= 1 token, got {self.budget}")
        if self.keep_last is not None and self.keep_last < 1:
            raise EdgespecError(f"--keep-last must be >= 1 token, got {self.keep_last}")
        if self.separator is not None and not self.separator:
            raise EdgespecError("--question-sep must not be empty")
        if self.scoring not in SCORERS:
            raise EdgespecError(
                f"unknown --compress-scoring '{self.scoring}'; known: {', '.join(SCORERS.names())}"
            )
        if self.coarse_slack < 0 or self.chunk < 2:
            raise EdgespecError("coarse_slack must be >= 0 and chunk >= 2")

    def kept_context(self, n_context: int, n_question: int) -> int:
        """How many of ``n_context`` context tokens to keep (the question: ``n_question``).

        Raises:
            EdgespecError: a budget that cannot hold the question and one context token.
        """
        if self.ratio is not None:
            return max(1, min(n_context, round(self.ratio * n_context)))
        assert self.budget is not None
        if self.budget <= n_question:
            raise EdgespecError(
                f"--context-budget {self.budget} cannot hold the question ({n_question} "
                "tokens kept whole) and any context; raise the budget or shorten the question"
            )
        return min(n_context, self.budget - n_question)


def split_question(text: str, separator: str | None) -> tuple[str, str]:
    """``text`` as (context, question): the question is kept whole, the context is scored.

    With ``separator``: the text after its last occurrence (the marker is removed).
    Otherwise: the last paragraph (from the last blank line), else the last line; a
    single-line prompt is all question (context ``""``).

    Raises:
        EdgespecError: ``separator`` does not occur in ``text``.
    """
    if separator is not None:
        context, sep, question = text.rpartition(separator)
        if not sep:
            raise EdgespecError(
                f"the question separator {separator!r} is not in the prompt; mark where the "
                "question starts or drop --question-sep"
            )
        return context, question
    body = text.rstrip()
    for mark in ("\n\n", "\n"):
        i = body.rfind(mark)
        if i > 0:
            return text[:i], text[i:]
    return "", text


def segment_ids(pieces: Sequence[str]) -> np.ndarray:
    """``int64[T]``: the coarse segment of each token, given each token's text.

    A segment ends with a token that holds a newline or ends a sentence
    (:data:`SEGMENT_ENDS`). A whitespace token holding a newline right after a segment's
    end belongs to that segment (``"." "\\n"``: the line's newline is kept or dropped with
    its last sentence, not ranked as a segment of its own, which the coarse stage dropped
    first and turned a kept directory into one run-on line).
    """
    out = np.zeros(len(pieces), dtype=np.int64)
    seg = 0
    ended = False  # the previous token ended a segment
    for i, piece in enumerate(pieces):
        if ended and "\n" in piece and not piece.strip():
            out[i] = seg - 1
            continue
        out[i] = seg
        stripped = piece.rstrip(" \t")
        ended = "\n" in piece or stripped.endswith(SEGMENT_ENDS)
        seg += ended
    return out


def structure_mask(pieces: Sequence[str]) -> np.ndarray:
    """``bool[T]``: the tokens that hold a newline. The fine stage drops them last, so each
    kept line keeps its line break (a directory, a table or a file stays one record a
    line instead of a run-on line)."""
    return np.array(["\n" in p for p in pieces], dtype=bool)


def self_information(
    model: Model,
    ids: Sequence[int],
    *,
    chunk: int = 512,
    first: float = math.inf,
    progress: bool = False,
) -> np.ndarray:
    """``float64[T]``: ``-log p(ids[i] | ids[:i])`` in nats, from batched forwards.

    ``ids`` are fed in chunks of ``chunk`` tokens over one growing cache, so each token is
    conditioned on everything before it. When the next chunk would overflow the model's
    context, the cache is reset and refilled with the last quarter of the context before
    going on. Token 0 has no prefix and gets ``first`` (infinite: always kept). The model is
    reset before and after.

    The log-softmax runs in float32 on the backend's own rows (no float64 copy of the
    ``[chunk, vocab]`` logits), block by block, and only the fed tokens' entries are kept
    (:func:`token_information`).
    """
    from tqdm.auto import tqdm

    n = len(ids)
    info = np.full(n, first, dtype=np.float64)
    if n < 2:
        return info
    n_ctx = int(getattr(model, "n_ctx", 0) or model.info.context_length or n)
    chunk = max(2, min(chunk, n_ctx // 2))
    model.reset()
    prev_row: np.ndarray | None = None  # logits after the last fed token
    start = 0
    bar = tqdm(
        total=n,
        desc="compress: scoring",
        unit="tok",
        disable=not progress or n <= 4 * chunk,
        file=sys.stderr,
        leave=False,
    )
    try:
        while start < n:
            end = min(n, start + chunk)
            if model.n_past + (end - start) > n_ctx:
                overlap = list(ids[max(0, start - n_ctx // 4) : start])
                model.reset()
                prev_row = model.forward(overlap, all_logits=False)[-1] if overlap else None
            rows = np.asarray(model.forward(list(ids[start:end]), all_logits=True))
            # row r predicts ids[start + r + 1]; prev_row predicts ids[start]
            nxt = np.asarray(ids[start + 1 : end + 1], dtype=np.int64)
            info[start + 1 : start + 1 + len(nxt)] = token_information(rows[: len(nxt)], nxt)
            if prev_row is not None and start > 0:
                info[start] = token_information(prev_row[None, :], np.array([ids[start]]))[0]
            prev_row = rows[-1]
            bar.update(end - start)
            start = end
    finally:
        bar.close()
        model.reset()
    return info


#: rows per block of :func:`token_information` (a ``[64, 49152]`` float32 block is 12 MB)
INFO_BLOCK = 64


def token_information(rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``float64[R]``: ``logsumexp(rows[r]) - rows[r, ids[r]]`` (nats), for ``rows``
    ``[R, V]`` logits of any float dtype and ``ids`` ``int[R]``.

    Computed in the rows' own precision (float32 on every backend) in blocks of
    :data:`INFO_BLOCK` rows, so that the ``exp`` temporary stays small; the max is
    subtracted first, so nothing overflows.
    """
    out = np.empty(len(ids), dtype=np.float64)
    for b in range(0, len(ids), INFO_BLOCK):
        blk = rows[b : b + INFO_BLOCK]
        peak = blk.max(axis=-1, keepdims=True)
        shifted = np.subtract(blk, peak)
        np.exp(shifted, out=shifted)
        lse = np.log(shifted.sum(axis=-1)) + peak[:, 0]
        picked = blk[np.arange(len(blk)), ids[b : b + INFO_BLOCK]]
        out[b : b + len(blk)] = lse.astype(np.float64) - picked
    return out


@dataclass(frozen=True)
class Scores:
    """What a scoring mode gives :func:`select` for the context's tokens.

    Attributes:
        info: ``float64[T]`` the fine stage's ranking, nats (``inf``: must stay).
        relevance: ``float64[T]`` the coarse stage's segment ranking (None: ``info``).
        passes: compressor forwards over the context (for the docs' cost accounting).
    """

    info: np.ndarray
    relevance: np.ndarray | None
    passes: int


def score_plain(
    model: Model,
    ctx: Sequence[int],
    question: Sequence[int],
    n_bos: int,
    chunk: int,
    progress: bool,
    *,
    pieces: Sequence[str] = (),
    question_text: str = "",
) -> Scores:
    """Selective-Context: the context alone, one pass; the question is not read."""
    return Scores(self_information(model, ctx, chunk=chunk, progress=progress), None, 1)


def score_conditional(
    model: Model,
    ctx: Sequence[int],
    question: Sequence[int],
    n_bos: int,
    chunk: int,
    progress: bool,
    *,
    pieces: Sequence[str] = (),
    question_text: str = "",
) -> Scores:
    """One pass with the question placed before the context: each context token's
    self-information given the question and the context before it,
    ``-log p(x_i | question, x_<i)``, ranks both the coarse segments (their mean) and the
    single tokens. Half the compressor time of ``contrastive``. The context's BOS (if any)
    stays forced."""
    head = list(ctx[:n_bos]) + list(question)
    given = self_information(model, head + list(ctx[n_bos:]), chunk=chunk, progress=progress)
    return Scores(np.concatenate([np.full(n_bos, math.inf), given[len(head) :]]), None, 1)


def score_contrastive(
    model: Model,
    ctx: Sequence[int],
    question: Sequence[int],
    n_bos: int,
    chunk: int,
    progress: bool,
    *,
    pieces: Sequence[str] = (),
    question_text: str = "",
) -> Scores:
    """Two passes (LongLLMLingua's contrastive perplexity, Jiang et al. 2024): the context
    alone (fine stage), then after the question; segments are ranked by how much the
    question lowers their tokens' self-information (:func:`question_gain`)."""
    info = self_information(model, ctx, chunk=chunk, progress=progress)
    if not question:
        return Scores(info, None, 1)
    head = list(ctx[:n_bos]) + list(question)
    given = self_information(model, head + list(ctx[n_bos:]), chunk=chunk, progress=progress)
    relevance = question_gain(info[n_bos:], given[len(head) :])
    return Scores(info, np.concatenate([np.zeros(n_bos), relevance]), 2)


def score_overlap(
    model: Model,
    ctx: Sequence[int],
    question: Sequence[int],
    n_bos: int,
    chunk: int,
    progress: bool,
    *,
    pieces: Sequence[str] = (),
    question_text: str = "",
) -> Scores:
    """One pass over the context alone (the fine stage's self-information, as ``plain``);
    segments are ranked by :func:`question_overlap`, which needs no forward. The fine stage
    keeps the tokens that name what the question asks about (a name the question repeats
    is not made cheap by it, as in ``conditional``)."""
    info = self_information(model, ctx, chunk=chunk, progress=progress)
    return Scores(info, question_overlap(ctx, question, pieces, question_text), 1)


def _letters(text: str) -> str:
    """``text`` lower-cased, letters and digits only (``"_FIELD"`` -> ``"field"``)."""
    return "".join(c for c in text.lower() if c.isalnum())


def question_overlap(
    ctx: Sequence[int],
    question: Sequence[int],
    pieces: Sequence[str] = (),
    question_text: str = "",
) -> np.ndarray:
    """``float64[T]``: per context token, ``log(T / count)`` when it also occurs in the
    question (``count``: its occurrences in the context), else 0. A segment's mean is then
    high where it repeats the question's rare tokens (a name, "vault") and low where it
    shares only common ones ("lives", "the"): an inverse-document-frequency overlap.

    A token occurs in the question when its id does, or (given the context tokens' texts
    ``pieces`` and ``question_text``) when its letters, lower-cased, are a whole word of
    two or more letters or digits of the question: ``BASE`` and ``_FIELD`` in
    ``BASE_FIELD_5`` match "the base field limit", whose tokens (`` base``, `` field``)
    have other ids. Such tokens are counted by that word, whatever their id. Tokens with
    no letter or digit do not count (a code question repeats the file's newlines,
    indentation and quotes: they put one-newline segments first and the constants, which
    the question describes in words, past the quarter kept; docs/compression.md).

    A token inside a run of two or more consecutive question words that the context repeats
    in the question's order (:func:`phrase_lengths`: "Sven Rossi", "the vault code",
    ``BASE_FIELD`` for "base field") counts that many times: a segment naming the asked
    person whole outranks the near-misses that share one of the names ("Sven Tanaka",
    "Ines Rossi"), which a bag of words ranks alike.

    A token whose question words the context repeats only in *partial* runs counts nothing
    (:func:`phrase_runs`): when the context holds "Sven Rossi" somewhere, a lone "Sven"
    ("Sven Tanaka") is a near-miss, not evidence, and "Kowalski lives in" is part of
    "Nadia Kowalski lives in". Such segments then rank with those that share no word with
    the question instead of before them, so the kept share holds fewer near-misses (which
    the target confused with the asked record when they were packed together;
    docs/compression.md, "Near-misses"). A question word that the context never repeats
    inside a longer run still counts alone.
    """
    ids = np.asarray(ctx, dtype=np.int64)
    asked = np.isin(ids, np.asarray(list(question), dtype=np.int64))
    keys = [f"#{t}" for t in ctx]  # ids, apart from any word
    runs = np.ones(len(ids))
    if pieces and question_text:
        words = {w for w in re.findall(r"[0-9a-z]+", question_text.lower()) if len(w) > 1}
        for i, piece in enumerate(pieces):
            word = _letters(piece)
            if word in words:
                asked[i], keys[i] = True, word
            elif not word:  # whitespace and punctuation ("\n", indentation, '"""') never
                asked[i] = False  # rank a segment: in code they are half the question
        longest, whole = phrase_runs(pieces, question_text)
        asked[(longest > 0) & (whole == 0)] = False  # only in partial runs: a near-miss
        runs = np.maximum(runs, whole)
        asked |= runs > 1
    _, inverse, counts = np.unique(
        np.asarray(keys, dtype=str), return_inverse=True, return_counts=True
    )
    return np.where(asked, runs * np.log(len(ids) / counts[inverse]), 0.0)


#: a word for :func:`phrase_lengths`: a run of ASCII letters and digits (``_`` splits
#: ``BASE_FIELD_5``); one-character words are skipped on both sides
PHRASE_WORD = re.compile(r"[0-9A-Za-z]{2,}")


def _phrase_words(text: str) -> list[tuple[str, int, int]]:
    """``(word lower-cased, start, end)`` of each :data:`PHRASE_WORD` of ``text``."""
    return [(m.group().lower(), m.start(), m.end()) for m in PHRASE_WORD.finditer(text)]


def phrase_lengths(pieces: Sequence[str], question_text: str) -> np.ndarray:
    """``float64[T]``: per context token (``pieces``: each token's text), the length in
    words of the longest run of consecutive question words that the context repeats word
    for word, in order, and that the token is part of; 0 for a token in no such run
    (a run of one word is a word the question holds). The first of :func:`phrase_runs`.

    Words are :data:`PHRASE_WORD` runs, compared lower-cased; punctuation and spacing
    between them do not break a run (``"Rossi's job"`` and ``"Rossi, job"`` alike).
    """
    return phrase_runs(pieces, question_text)[0]


def phrase_runs(pieces: Sequence[str], question_text: str) -> tuple[np.ndarray, np.ndarray]:
    """``(longest, whole)``, ``float64[T]`` each: per context token (``pieces``: each
    token's text), the length in words of the longest run of consecutive question words
    that the context repeats in order and that the token is part of (:func:`phrase_lengths`),
    and the longest such run that is *whole*; 0 where none.

    A run (maximal: it extends neither way) matches a span of the question's words; it is
    whole when no run anywhere in the context matches a longer stretch through any word of
    that span. When the context holds "Sven Rossi", the lone "Sven" of "Sven Tanaka" is a
    partial run (``longest`` 1, ``whole`` 0); when it holds "Nadia Kowalski lives in" (the
    question's answer stub), "Kowalski lives in" elsewhere is partial too; the lone "in"
    of "joined in 2010" is whole when the question also says "In which" and the context
    never repeats "in which". Where the context repeats none of a question's phrases, every
    run is whole.

    Runs are found by the longest-common-substring recurrence over the two word lists,
    ``O(context words x repeats of each word in the question)``.
    """
    cwords = _phrase_words("".join(pieces))
    qwords = _phrase_words(question_text)
    where: dict[str, list[int]] = {}
    for k, (w, _, _) in enumerate(qwords):
        where.setdefault(w, []).append(k)
    runs: list[tuple[int, int, int]] = []  # (last context word, last question word, length)
    prev: dict[int, int] = {}  # question word k -> run length ending at (word j - 1, k)
    for j, (w, _, _) in enumerate(cwords):
        cur = {k: prev.get(k - 1, 0) + 1 for k in where.get(w, ())}
        runs += [(j - 1, k, n) for k, n in prev.items() if k + 1 not in cur]
        prev = cur
    runs += [(len(cwords) - 1, k, n) for k, n in prev.items()]
    span = np.zeros(len(qwords))  # per question word: the longest run through it
    for _, k, n in runs:
        span[k - n + 1 : k + 1] = np.maximum(span[k - n + 1 : k + 1], n)
    longest, whole = np.zeros(len(cwords)), np.zeros(len(cwords))
    for j, k, n in runs:
        longest[j - n + 1 : j + 1] = np.maximum(longest[j - n + 1 : j + 1], n)
        if n >= span[k - n + 1 : k + 1].max():
            whole[j - n + 1 : j + 1] = np.maximum(whole[j - n + 1 : j + 1], n)
    ends = np.cumsum([len(p) for p in pieces])
    out = np.zeros((2, len(pieces)))
    for (_, start, end), a, b in zip(cwords, longest, whole, strict=True):
        if a:
            first, last = np.searchsorted(ends, [start, end - 1], side="right")
            tok = slice(first, last + 1)
            out[0, tok] = np.maximum(out[0, tok], a)
            out[1, tok] = np.maximum(out[1, tok], b)
    return out[0], out[1]


#: how the compressor scores the context (``CompressOptions.scoring``); each entry is
#: ``scorer(model, ctx_ids, question_ids, n_bos, chunk, progress) -> Scores``
SCORERS: Registry[Callable[..., Scores]] = Registry("scoring mode")
SCORERS.register("plain")(score_plain)
SCORERS.register("conditional")(score_conditional)
SCORERS.register("contrastive")(score_contrastive)
SCORERS.register("overlap")(score_overlap)


def select(
    info: np.ndarray,
    segments: np.ndarray,
    keep: int,
    *,
    coarse_slack: float = 0.25,
    relevance: np.ndarray | None = None,
    words: np.ndarray | None = None,
    structure: np.ndarray | None = None,
) -> np.ndarray:
    """The indices of the ``keep`` tokens to keep, in order.

    Args:
        info: ``float[T]`` self-information per token (``inf``: must stay).
        segments: ``int[T]`` coarse segment per token (non-decreasing).
        keep: how many tokens to keep, ``1 <= keep <= T``; at least the number of ``inf``.
        coarse_slack: see :class:`CompressOptions`.
        relevance: ``float[T]`` per-token score that ranks segments in the coarse stage
            (lowest mean dropped first); None: ``info``. :func:`question_gain` gives the
            question-aware one.
        words: ``int[T]`` word per token (:func:`word_ids`, non-decreasing): the fine stage
            drops whole words first, lowest total information first, so that a name or a
            number is kept or dropped whole; None: single tokens only.
        structure: ``bool[T]`` line breaks (:func:`structure_mask`): one that the coarse stage
            dropped comes back when anything else of its line stayed (a record's last
            sentence, which holds its line break, goes, its first stays), and the fine stage
            drops them only when nothing else is left. None: none.

    Returns:
        ``int64[keep]`` sorted positions.
    """
    n = len(info)
    forced = np.isinf(info)
    if not 1 <= keep <= n or keep < int(forced.sum()):
        raise ValueError(f"cannot keep {keep} of {n} tokens ({int(forced.sum())} forced)")
    alive = np.ones(n, dtype=bool)
    # coarse: whole segments, lowest mean information first (ties: earlier first)
    floor = keep * (1.0 + coarse_slack)
    seg_ids = np.unique(segments)
    rank = info if relevance is None else relevance
    means = []
    for s in seg_ids:
        member = segments == s
        if forced[member].any():
            continue
        means.append((float(rank[member].mean()), int(s), int(member.sum())))
    remaining = n
    for _, s, size in sorted(means):
        if remaining - size < floor:
            # stop here: skipping ahead to a smaller segment that still fits would drop one
            # ranked as more relevant (it lost the needle's short sentence, measured in
            # docs/compression.md); the fine stage takes the rest
            break
        alive[segments == s] = False
        remaining -= size
    spare = np.zeros(n, dtype=bool) if structure is None else np.asarray(structure, dtype=bool)
    if spare.any():
        line = np.concatenate([[0], np.cumsum(spare)[:-1]])  # line breaks before each token
        held = np.bincount(line[alive & ~spare], minlength=int(line[-1]) + 1) > 0
        back = spare & ~alive & held[line]
        alive |= back
        remaining += int(back.sum())
    if words is not None:
        remaining = _drop_words(info, words, alive & ~forced & ~spare, alive, remaining, keep)
    # fine: single tokens, lowest information first (ties: earlier first), structure last
    candidates = np.flatnonzero(alive & ~forced)
    order = candidates[np.lexsort((candidates, info[candidates], spare[candidates]))]
    drop = remaining - keep
    alive[order[:drop]] = False
    return np.flatnonzero(alive)


def _drop_words(
    info: np.ndarray,
    words: np.ndarray,
    live: np.ndarray,
    alive: np.ndarray,
    remaining: int,
    keep: int,
) -> int:
    """Drop whole words of the ``live`` tokens from ``alive`` (in place), lowest summed
    information first (ties: earlier first), stopping at the first word that would leave
    fewer than ``keep``; returns how many tokens remain."""
    pos = np.flatnonzero(live)
    if len(pos) == 0:
        return remaining
    uniq, first, inverse = np.unique(words[pos], return_index=True, return_inverse=True)
    sums = np.bincount(inverse, weights=info[pos])
    sizes = np.bincount(inverse)
    for w in np.lexsort((first, sums)):
        if remaining - int(sizes[w]) < keep:
            break
        alive[pos[inverse == w]] = False
        remaining -= int(sizes[w])
    return remaining


def word_ids(pieces: Sequence[str]) -> np.ndarray:
    """``int64[T]``: the word of each token, given each token's text. A word starts at a
    token that starts with whitespace or a character that is not a letter, digit or ``_``,
    or after a token that ends with one; so ``" Dak" "ar"`` and ``" " "3" "5" "6" "2"``
    (a space, then the digits) are one word each after the space, and so is the identifier
    ``"BASE" "_FIELD" "_" "5"`` (its predictable index alone would be dropped first)."""
    out = np.zeros(len(pieces), dtype=np.int64)
    word = 0
    for i, piece in enumerate(pieces):
        if i and (not _in_word(piece[:1]) or not _in_word(pieces[i - 1][-1:])):
            word += 1
        out[i] = word
    return out


def _in_word(char: str) -> bool:
    """A letter, a digit or ``_`` (so an identifier such as ``BASE_FIELD_5`` is one word)."""
    return char.isalnum() or char == "_"


def question_gain(info: np.ndarray, info_given_question: np.ndarray) -> np.ndarray:
    """``float[T]``: how much the question lowers each token's self-information (nats;
    positive: the question makes the token expected, so it is likely relevant). Forced
    tokens (``inf``) get 0."""
    gain = info - info_given_question
    gain[~np.isfinite(gain)] = 0.0
    return gain
