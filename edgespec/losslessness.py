"""Checking a lossless strategy against plain greedy decoding, near-ties included.

On backends whose batched forward is exact (NumPy reference in float64, ONNX Runtime fp32) a
lossless strategy must reproduce plain greedy decoding token for token. Quantized kernels
(llama.cpp, ONNX Runtime MatMulNBits) compute a batch slightly differently from one token at
a time, so there the contract is: identical, or the first divergence is a near-tie, where
plain decoding's logits of the two competing tokens differ by no more than the
**near-tie bound** measured for that backend, model and weights.

The bound is a measurement, never a constant: :func:`measure_near_tie_bound` evaluates the
same positions of a fixed calibration text one token at a time (as plain decoding does) and
in verify-shaped chunks (``pending + k`` draft tokens, and token trees where the backend
scores them), and returns the largest change of plain decoding's top-2 logit gap.
``edgespec calibrate`` stores it with the cost curve; :func:`check` takes it explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import cycle

import numpy as np

from edgespec.model import Model
from edgespec.quality import exact_prefix
from edgespec.tokenizer import Tokenizer

#: candidates kept per position of a reference run
TOP = 16
#: positions ``edgespec calibrate`` measures the near-tie bound on
CALIBRATE_POSITIONS = 256
#: positions measured on the spot when no stored bound exists (bench)
QUICK_POSITIONS = 64
#: tokens fed in one forward before the measured positions (both runs share that prefill)
CALIBRATION_PREFIX = 8
#: the calibration text: prose, code and JSON, like the shipped bench workloads
#: (benchmarks/workloads/*.jsonl); fixed, so a stored bound can be re-measured
CALIBRATION_TEXT = (
    "The Amazon rainforest covers much of the Amazon basin of South America. This basin "
    "encompasses seven million square kilometres, of which five and a half million square "
    "kilometres are covered by the rainforest. Photosynthesis is the process by which green "
    "plants use sunlight to synthesize foods from carbon dioxide and water.\n\n"
    "def binary_search(items, target):\n"
    '    """Return the index of target in the sorted list items, or -1."""\n'
    "    lo, hi = 0, len(items) - 1\n"
    "    while lo <= hi:\n"
    "        mid = (lo + hi) // 2\n"
    "        if items[mid] == target:\n"
    "            return mid\n"
    "        if items[mid] < target:\n"
    "            lo = mid + 1\n"
    "        else:\n"
    "            hi = mid - 1\n"
    "    return -1\n\n"
    '{"name": "Maria", "age": 34, "city": "Lisbon", "hobbies": ["reading", "hiking"]}\n\n'
    "Three tips for staying focused while studying: put your phone in another room, work "
    "in short blocks with breaks in between, and write down what you want to finish before "
    "you start. The sky is blue because air scatters the short blue wavelengths of sunlight "
    "more than the long red ones, so blue light reaches our eyes from every direction."
)


@dataclass(frozen=True)
class PlainReference:
    """Plain greedy decoding of one prompt, with the top candidates of every step.

    Attributes:
        tokens: ``int[n]`` the greedy tokens.
        top_ids: ``int[n, TOP]`` best token ids per step, best first.
        top_logits: ``float[n, TOP]`` their logits.
    """

    tokens: list[int]
    top_ids: np.ndarray
    top_logits: np.ndarray

    def gap(self, i: int, token: int) -> tuple[float, bool]:
        """Logit of the greedy token minus that of ``token`` at step i, and whether that is
        exact (True) or only a lower bound (``token`` was not among the top candidates)."""
        hits = np.flatnonzero(self.top_ids[i] == token)
        if hits.size:
            return float(self.top_logits[i, 0] - self.top_logits[i, hits[0]]), True
        return float(self.top_logits[i, 0] - self.top_logits[i, -1]), False


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first differing token, or None when one is a prefix of the other."""
    n = exact_prefix(a, b)
    return None if n == min(len(a), len(b)) else n


def plain_reference(model: Model, prompt: Sequence[int], n: int) -> PlainReference:
    """Plain greedy decoding evaluated exactly as the autoregressive strategy does it
    (prompt in one forward, then one token at a time); the cache is reset afterwards."""
    model.reset()
    logits = model.forward(list(prompt), all_logits=False)[-1]
    tokens, ids, vals = [], [], []
    for step in range(n):
        top = np.argsort(-logits, kind="stable")[:TOP]
        ids.append(top)
        vals.append(logits[top].astype(np.float64))
        tokens.append(int(top[0]))
        if step + 1 < n:
            logits = model.forward([tokens[-1]], all_logits=False)[-1]
    model.reset()
    return PlainReference(tokens, np.stack(ids), np.stack(vals))


@dataclass(frozen=True)
class Check:
    """How one output compares with the plain reference.

    Attributes:
        index: first differing position, or None when identical.
        gap: plain decoding's logit margin there (None when identical).
        near_tie: True when identical, or when the divergence is at a near-tie: the margin is
            exact (the chosen token was among the top candidates) and at most the bound.
            False means a losslessness failure.
    """

    index: int | None
    gap: float | None
    near_tie: bool


def check(tokens: Sequence[int], ref: PlainReference, bound: float) -> Check:
    """Compare ``tokens`` with ``ref`` under the near-tie rule.

    Args:
        tokens: the output of a lossless strategy.
        ref: plain greedy decoding of the same prompt on the same model.
        bound: the measured near-tie bound of that backend, model and weights (logits;
            :func:`measure_near_tie_bound`). 0 on exact backends: any divergence fails.
    """
    i = first_divergence(tokens, ref.tokens)
    if i is None:
        return Check(None, None, True)
    gap, exact = ref.gap(i, int(tokens[i]))
    return Check(i, gap, exact and gap <= bound)


# -- the near-tie bound -------------------------------------------------------------------------


def calibration_tokens(tokenizer: Tokenizer, n: int) -> list[int]:
    """``int[n]``: :data:`CALIBRATION_TEXT` as token ids, repeated to length ``n``.

    A tokenizer that cannot spell the text (the test alphabets) gets the text's code points
    modulo its vocabulary instead: still a fixed sequence.
    """
    try:
        ids = list(tokenizer.encode(CALIBRATION_TEXT))
    except (ValueError, KeyError):
        ids = []
    if not ids:
        ids = [ord(c) % tokenizer.vocab_size for c in CALIBRATION_TEXT]
    return (ids * (n // len(ids) + 1))[:n]


def verify_chunk_sizes(max_k: int) -> list[int]:
    """The forward sizes speculation runs: ``pending + k`` draft tokens, k = 1..max_k."""
    if max_k < 1:
        raise ValueError(f"max_k must be >= 1, got {max_k}")
    return list(range(2, max_k + 2))


def _single_rows(model: Model, ids: list[int], start: int) -> Iterable[np.ndarray]:
    """Rows ``float[V]`` after ``ids[start:]``, evaluated one token at a time (plain decoding)."""
    model.reset()
    model.forward(ids[:start], all_logits=False)
    for t in ids[start:]:
        yield model.forward([t], all_logits=False)[-1]


def _chunk_rows(
    model: Model, ids: list[int], start: int, sizes: Sequence[int], tree: bool
) -> Iterable[np.ndarray]:
    """The same rows, evaluated in chunks of ``sizes`` (cycled) as speculation scores them.

    ``tree``: each chunk is scored by ``forward_tree`` as a chain with one extra branch (a
    wrong sibling of the chunk's second token), and the chain is committed, so the cache holds
    the interleaved layout a tree step leaves behind.
    """
    model.reset()
    model.forward(ids[:start], all_logits=False)
    p = start
    for n in cycle(sizes):
        if p >= len(ids):
            return
        chunk = ids[p : p + n]
        base = model.n_past
        if tree and len(chunk) > 1:
            wrong = ids[(p + 7 * n) % len(ids)]
            parents = [-1, *range(len(chunk) - 1), 0]
            rows = model.forward_tree([*chunk, wrong], parents)[: len(chunk)]
            model.commit_tree_path(base, list(range(len(chunk))))
        else:
            rows = model.forward(chunk, all_logits=True)
        yield from rows
        p += len(chunk)


def measure_near_tie_bound(
    model: Model,
    token_ids: Sequence[int],
    chunk_sizes: Sequence[int],
    *,
    start: int = CALIBRATION_PREFIX,
    trees: bool = True,
    progress: bool = False,
) -> float:
    """The largest change of plain decoding's top-2 logit gap that batching causes.

    Positions ``start .. len(token_ids)-1`` are scored twice after the same one-forward
    prefill of ``token_ids[:start]``: one token at a time (plain decoding), and in chunks of
    ``chunk_sizes`` (verify-shaped: ``pending + k`` draft tokens), plus, when ``trees`` and
    the model supports them, as token trees. At each position, with ``a`` and ``b`` the
    best and second-best token of the one-token row, ``gap = logit[a] - logit[b]`` is taken in
    both rows. A speculative run can pick ``b`` instead of ``a`` only where plain decoding's
    gap is at most this bound (on text like the calibration text).

    Args:
        model: any :class:`Model`; its cache is reset before and after.
        token_ids: ``int[N]``, N > start: the calibration sequence (teacher-forced).
        chunk_sizes: forward sizes >= 1 to cycle through (:func:`verify_chunk_sizes`).
        start: tokens prefilled before the first measured position.
        trees: also measure tree-shaped forwards where ``model.supports_tree``.
        progress: show a tqdm bar on stderr (one step per scored position).

    Returns:
        ``max |gap_batched - gap_single|`` in logits (0.0 when batching is exact).
    """
    ids = [int(t) for t in token_ids]
    if not 1 <= start < len(ids):
        raise ValueError(f"need more than start={start} calibration tokens, got {len(ids)}")
    if not chunk_sizes or min(chunk_sizes) < 1:
        raise ValueError(f"chunk sizes must be >= 1, got {list(chunk_sizes)}")
    import sys

    from tqdm.auto import tqdm

    shapes = [False] + ([True] if trees and model.supports_tree else [])
    n = len(ids) - start
    bar = tqdm(
        total=n * (1 + len(shapes)),
        desc="near-tie bound",
        unit="pos",
        disable=not progress,
        file=sys.stderr,
        leave=False,
    )
    pairs, gaps = [], []
    worst = 0.0
    try:
        for row in _single_rows(model, ids, start):
            a, b = np.argsort(-row, kind="stable")[:2]
            pairs.append((int(a), int(b)))
            gaps.append(float(row[a]) - float(row[b]))
            bar.update()
        for tree in shapes:
            rows = _chunk_rows(model, ids, start, list(chunk_sizes), tree)
            for (a, b), g, row in zip(pairs, gaps, rows, strict=True):
                worst = max(worst, abs(float(row[a]) - float(row[b]) - g))
                bar.update()
    finally:
        bar.close()
        model.reset()
    return worst


def calibrate_near_tie_bound(
    model: Model,
    tokenizer: Tokenizer,
    *,
    max_k: int = 8,
    positions: int = CALIBRATE_POSITIONS,
    progress: bool = False,
) -> float:
    """:func:`measure_near_tie_bound` on ``positions`` positions of the calibration text,
    with verify chunks of 1 pending + 1..``max_k`` draft tokens (``edgespec calibrate``)."""
    ids = calibration_tokens(tokenizer, CALIBRATION_PREFIX + positions)
    return measure_near_tie_bound(model, ids, verify_chunk_sizes(max_k), progress=progress)


@dataclass(frozen=True)
class NearTieBound:
    """A near-tie bound and where it came from.

    Attributes:
        value: the bound in logits (:func:`measure_near_tie_bound`).
        source: "calibrate" (stored with the cost curve by ``edgespec calibrate``) or
            "measured" (none was stored: measured just now on :data:`QUICK_POSITIONS`
            positions).
        key: the cost-curve key it was looked up under.
    """

    value: float
    source: str
    key: str


def near_tie_bound(
    model: Model,
    tokenizer: Tokenizer,
    key: str,
    *,
    max_k: int = 8,
    positions: int = QUICK_POSITIONS,
) -> NearTieBound:
    """The stored near-tie bound of cost-curve ``key``, else one measured now (``positions``
    calibration positions, verify chunks of up to ``max_k`` draft tokens). Never a default:
    where nothing is stored, the bound comes from this model's own forwards."""
    from edgespec.speculative import cost_curves

    stored = cost_curves.load_near_tie_bound(key)
    if stored is not None:
        return NearTieBound(stored, "calibrate", key)
    value = calibrate_near_tie_bound(model, tokenizer, max_k=max_k, positions=positions)
    return NearTieBound(value, "measured", key)
