"""Training-free neuron sparsity for dense SwiGLU models (CATS-style gate thresholds). Lossy.

CATS (Lee et al. 2024, "CATS: Contextually-Aware Thresholding for Sparsity in Large Language
Models") and TEAL (Liu et al. 2024) switch a neuron off for a token when its activation is
small. Here a neuron i of layer l is *on* for a token when ``|act(gate_i)| > t_l``, where
``t_l`` is the ``target_sparsity`` quantile of ``|act(gate)|`` over the calibration text: the
gate is computed in full, then only the on rows of ``up`` and the on columns of ``down`` are
needed (``sparse_ffn`` over the chunk's union). Measured on our models
(/work/shared/sparsity.md): blocks of neurons are useless on dense models, so the layout is
per neuron, and a verify chunk's union grows like ``1 - s^T``.

Quality is measured, never assumed: teacher-forced top-1 agreement of the sparse model with
the dense one, and perplexity of both, on held-out text (the second part of the calibration
file, or ``--held``).

Everything here runs on the NumPy reference (:mod:`edgespec.runtimes.numpy_ref`) through its
``ffn_hook``: the mask makes the FFN exactly "dense of the masked FFN", the quantity a
gathered kernel computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgespec.errors import EdgespecError

#: the method name written into bundles
METHOD = "cats-gate-threshold"
#: tokens per teacher-forced window (the model's context is reset between windows)
WINDOW = 256
#: |act(gate)| values kept per layer and window for the quantile (uniform sample)
SAMPLE = 1 << 16


def check_target(s: float) -> float:
    """``s`` if it is a sparsity strictly inside (0, 1), else a one-line error."""
    if not (isinstance(s, (int, float)) and 0.0 < float(s) < 1.0) or math.isnan(s):
        raise EdgespecError(
            f"--target-sparsity must be strictly between 0 and 1 (a fraction of neurons "
            f"switched off), got {s}"
        )
    return float(s)


def _windows(ids: Sequence[int], size: int) -> Iterator[np.ndarray]:
    arr = np.asarray(ids, dtype=np.int64)
    for s in range(0, len(arr) - 1, size):
        w = arr[s : s + size + 1]  # one extra token: the last target
        if len(w) >= 2:
            yield w


@dataclass
class NeuronThresholds:
    """Per-layer thresholds on ``|act(gate)|``.

    Attributes:
        thresholds: ``float32[L]``.
        n_ff: FFN width F the thresholds were fitted for.
        target_sparsity: the fraction of (token, neuron) pairs fitted to be off.
    """

    thresholds: np.ndarray
    n_ff: int
    target_sparsity: float

    def hook(self, record: list[np.ndarray] | None = None) -> Callable[..., np.ndarray]:
        """An ``ffn_hook`` that zeroes off neurons; ``record`` collects ``bool[T, F]`` on-masks
        (layer order) when given."""
        t = self.thresholds

        def masked(li: int, g: np.ndarray, up: np.ndarray) -> np.ndarray:
            on = np.abs(g) > t[li]
            if record is not None:
                record.append(on)
            return np.where(on, g * up, 0)

        return masked


def fit_thresholds(
    model: Any, ids: Sequence[int], target: float, *, progress: bool = False
) -> NeuronThresholds:
    """Fit ``t_l`` = the ``target`` quantile of ``|act(gate)|`` of layer l over ``ids``.

    Args:
        model: a NumPy reference model (:class:`~edgespec.runtimes.numpy_ref.NumpyModel`).
        ids: calibration token ids (at least 2).
        target: sparsity in (0, 1).
    """
    from tqdm.auto import tqdm

    L, F = model.hp.n_layers, model.hp.n_ff
    acts: list[list[np.ndarray]] = [[] for _ in range(L)]

    rng = np.random.default_rng(0)

    def record(li: int, g: np.ndarray, up: np.ndarray) -> np.ndarray:
        a = np.abs(g).reshape(-1)
        if a.size > SAMPLE:  # a uniform sample keeps memory flat on large models
            a = a[rng.choice(a.size, SAMPLE, replace=False)]
        acts[li].append(a.astype(np.float32))
        return g * up

    windows = list(_windows(ids, WINDOW))
    model.ffn_hook = record
    try:
        for w in tqdm(windows, desc="calibration", unit="window", disable=not progress):
            model.reset()
            model.forward(w[:-1], all_logits=False)
    finally:
        model.ffn_hook = None
        model.reset()
    t = np.array([np.quantile(np.concatenate(a), target) for a in acts], dtype=np.float32)
    return NeuronThresholds(thresholds=t, n_ff=F, target_sparsity=target)


@dataclass(frozen=True)
class Quality:
    """Sparse against dense, teacher-forced on held-out text.

    Attributes:
        tokens: scored positions.
        top1_agreement: fraction of positions where both argmaxes agree.
        ppl_dense, ppl_sparse: perplexity of the held text under each.
        token_sparsity: measured fraction of (token, neuron) pairs off, mean over layers.
        chunk_sparsity: ``{T: fraction of neurons outside a T-token chunk's union}``.
    """

    tokens: int
    top1_agreement: float
    ppl_dense: float
    ppl_sparse: float
    token_sparsity: float
    chunk_sparsity: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "top1_agreement": self.top1_agreement,
            "ppl_dense": self.ppl_dense,
            "ppl_sparse": self.ppl_sparse,
            "token_sparsity": self.token_sparsity,
            "chunk_sparsity": self.chunk_sparsity,
        }


def _nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -logp[np.arange(len(targets)), targets]


def measure_quality(
    model: Any, th: NeuronThresholds, ids: Sequence[int], *, progress: bool = False
) -> Quality:
    """Teacher-forced top-1 agreement and perplexities of dense vs sparse on ``ids``."""
    from tqdm.auto import tqdm

    from edgespec.sparse.stats import chunk_active_fraction

    L = model.hp.n_layers
    agree = n = 0
    nll_d: list[np.ndarray] = []
    nll_s: list[np.ndarray] = []
    per_layer: list[list[np.ndarray]] = [[] for _ in range(L)]
    windows = list(_windows(ids, WINDOW))
    try:
        for w in tqdm(windows, desc="quality", unit="window", disable=not progress):
            x, y = w[:-1], w[1:]
            model.ffn_hook = None
            model.reset()
            dense = model.forward(x)
            rec: list[np.ndarray] = []
            model.ffn_hook = th.hook(rec)
            model.reset()
            sparse = model.forward(x)
            for li, mask in enumerate(rec):
                per_layer[li % L].append(mask)
            agree += int((dense.argmax(-1) == sparse.argmax(-1)).sum())
            n += len(y)
            nll_d.append(_nll(dense, y))
            nll_s.append(_nll(sparse, y))
    finally:
        model.ffn_hook = None
        model.reset()
    if n == 0:
        raise EdgespecError("the held-out text has fewer than 2 tokens; give more text")
    on = [np.concatenate(p) for p in per_layer]
    chunk = {
        str(T): float(np.mean([1.0 - chunk_active_fraction(a, T) for a in on]))
        for T in (1, 2, 4, 8)
        if on[0].shape[0] >= T
    }
    return Quality(
        tokens=n,
        top1_agreement=agree / n,
        ppl_dense=float(np.exp(np.concatenate(nll_d).mean())),
        ppl_sparse=float(np.exp(np.concatenate(nll_s).mean())),
        token_sparsity=float(np.mean([1.0 - a.mean() for a in on])),
        chunk_sparsity=chunk,
    )
