"""Training-free activation sparsity for dense SwiGLU models (per-layer thresholds). Lossy.

CATS (Lee et al. 2024, "CATS: Contextually-Aware Thresholding for Sparsity in Large Language
Models") and TEAL (Liu et al. 2024) switch a neuron (or an input channel) off for a token when
its activation is small. The method (:data:`edgespec.sparse.methods.METHODS`: ``cats``,
``act-up``, ``teal``) says which quantities are thresholded; per layer and site the threshold
``t_l`` is the ``target_sparsity`` quantile of the site's ``|value|`` over the calibration
text (dense forward). With ``cats`` (the default, and the only method with a gathered
runtime, :mod:`edgespec.sparse.dense`) a neuron is on when ``|act(gate_i)| > t_l``: the gate
is computed in full, then only the on rows of ``up`` and the on columns of ``down`` are needed
(``sparse_ffn`` over the chunk's union). Measured on our models
(/work/shared/sparsity.md): blocks of neurons are useless on dense models, so the layout is
per neuron, and a verify chunk's union grows like ``1 - s^T``.

Quality is measured, never assumed: teacher-forced top-1 agreement of the sparse model with
the dense one, and perplexity of both, on held-out text (the second part of the calibration
file, or ``--held``).

Everything here runs on the NumPy reference (:mod:`edgespec.runtimes.numpy_ref`), whose
MLP is replaced for the duration of a measurement by the method's masked FFN
(:func:`ffn_override`): the mask makes the FFN exactly "dense of the masked FFN", the
quantity a gathered kernel computes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.sparse.methods import METHODS, FFNMethod, Site

#: the default method's name written into bundles
METHOD = "cats-gate-threshold"
#: whole blocks of a K-dimension input (columns of a GGUF matrix) reported off: Q4_K's
#: 32-wide sub-blocks, 64 = one 32-byte run of Q4_K nibbles, 256 = a K-quant super-block
BLOCK_SIZES = (32, 64, 256)
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
    """Per-layer, per-site thresholds of one method.

    Attributes:
        thresholds: ``float32[L, S]``, S = the method's sites (a 1-D ``[L]`` is taken as
            ``[L, 1]``).
        n_ff: FFN width F the thresholds were fitted for.
        target_sparsity: the fraction of (token, unit) pairs fitted to be off at each site.
        method: a :data:`~edgespec.sparse.methods.METHODS` name.
    """

    thresholds: np.ndarray
    n_ff: int
    target_sparsity: float
    method: str = "cats"

    def __post_init__(self) -> None:
        t = np.asarray(self.thresholds, dtype=np.float32)
        self.thresholds = t.reshape(t.shape[0], -1) if t.ndim else t.reshape(1, 1)

    @property
    def ffn_method(self) -> FFNMethod:
        """The method object."""
        return METHODS.get(self.method)

    def hook(self, record: list[np.ndarray] | None = None) -> Callable[..., np.ndarray]:
        """A ``cats`` ``ffn_hook`` (``NumpyModel.ffn_hook``) that zeroes off neurons;
        ``record`` collects ``bool[T, F]`` on-masks (layer order) when given."""
        t = self.thresholds[:, 0]

        def masked(li: int, g: np.ndarray, up: np.ndarray) -> np.ndarray:
            on = np.abs(g) > t[li]
            if record is not None:
                record.append(on)
            return np.where(on, g * up, 0)

        return masked


def _act(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    from edgespec.runtimes.numpy_ref import _gelu_tanh, _silu

    return {"silu": _silu, "gelu_tanh": _gelu_tanh}[model.hp.act]


@contextlib.contextmanager
def ffn_override(model: Any, fn: Callable[[int, Any, np.ndarray], np.ndarray]) -> Iterator[Any]:
    """Run ``model``'s MLPs through ``fn(layer index, LayerWeights, h [T, D]) -> [T, D]``
    inside the block; the model's own MLP is back afterwards (its cache is reset on entry
    and on exit)."""
    model.reset()
    model._ffn = fn  # an instance attribute shadows the method
    try:
        yield model
    finally:
        del model.__dict__["_ffn"]
        model.reset()


def masked_ffn(
    model: Any, th: NeuronThresholds, record: list[dict[str, np.ndarray]] | None = None
) -> Callable[[int, Any, np.ndarray], np.ndarray]:
    """The ``ffn_override`` function of ``th``'s method at ``th``'s thresholds; ``record``
    collects ``{site: bool on-mask [T, D or F]}`` per layer call when given."""
    meth, act, t = th.ffn_method, _act(model), th.thresholds

    def ffn(li: int, L: Any, h: np.ndarray) -> np.ndarray:
        y, vals = meth.ffn(h, L.w_gate_up, L.w_down, act, t[li])
        if record is not None:
            record.append({s.name: vals[s.name] > t[li, j] for j, s in enumerate(meth.sites)})
        return y

    return ffn


def collect_site_values(
    model: Any, ids: Sequence[int], sites: Sequence[Site], *, progress: bool = False
) -> dict[str, list[np.ndarray]]:
    """``|value|`` samples per site and layer over a dense teacher-forced pass on ``ids``.

    Returns:
        ``{site name: [float32 sample per layer]}`` (at most :data:`SAMPLE` values per layer
        and window, uniform).
    """
    from tqdm.auto import tqdm

    L, F = model.hp.n_layers, model.hp.n_ff
    act = _act(model)
    acc: dict[str, list[list[np.ndarray]]] = {s.name: [[] for _ in range(L)] for s in sites}
    rng = np.random.default_rng(0)

    def record(li: int, Lw: Any, h: np.ndarray) -> np.ndarray:
        gu = h @ Lw.w_gate_up
        a, u = act(gu[:, :F]), gu[:, F:]
        for s in sites:
            v = s.dense_value(h, a, u).reshape(-1)
            if v.size > SAMPLE:  # a uniform sample keeps memory flat on large models
                v = v[rng.choice(v.size, SAMPLE, replace=False)]
            acc[s.name][li].append(v.astype(np.float32))
        return (a * u) @ Lw.w_down

    windows = list(_windows(ids, WINDOW))
    with ffn_override(model, record):
        for w in tqdm(windows, desc="calibration", unit="window", disable=not progress):
            model.reset()
            model.forward(w[:-1], all_logits=False)
    return {k: [np.concatenate(x) for x in v] for k, v in acc.items()}


def thresholds_from_values(
    values: dict[str, list[np.ndarray]], method: str, target: float, n_ff: int
) -> NeuronThresholds:
    """Per layer and site of ``method``: the ``target`` quantile of the collected values."""
    meth = METHODS.get(method)
    t = np.array(
        [[np.quantile(values[s.name][li], target) for s in meth.sites]
         for li in range(len(values[meth.sites[0].name]))],
        dtype=np.float32,
    )  # fmt: skip
    return NeuronThresholds(thresholds=t, n_ff=n_ff, target_sparsity=target, method=method)


def fit_thresholds(
    model: Any,
    ids: Sequence[int],
    target: float,
    *,
    method: str = "cats",
    progress: bool = False,
) -> NeuronThresholds:
    """Fit ``t_l`` = the ``target`` quantile of each of ``method``'s sites over ``ids``.

    Args:
        model: a NumPy reference model (:class:`~edgespec.runtimes.numpy_ref.NumpyModel`).
        ids: calibration token ids (at least 2).
        target: sparsity in (0, 1).
        method: a :data:`~edgespec.sparse.methods.METHODS` name.
    """
    meth = METHODS.get(method)
    values = collect_site_values(model, ids, meth.sites, progress=progress)
    return thresholds_from_values(values, method, target, model.hp.n_ff)


@dataclass(frozen=True)
class Quality:
    """Sparse against dense, teacher-forced on held-out text.

    Attributes:
        tokens: scored positions.
        top1_agreement: fraction of positions where both argmaxes agree.
        ppl_dense, ppl_sparse: perplexity of the held text under each.
        token_sparsity: measured fraction of (token, neuron) pairs off at the method's last
            site (a neuron site), mean over layers.
        chunk_sparsity: ``{T: fraction of neurons outside a T-token chunk's union}`` (same
            site).
        method: the method's name.
        site_sparsity: ``{site: fraction of (token, unit) pairs off}``, mean over layers.
        block_off: ``{site: {B: fraction of (token, block of B consecutive units) pairs with
            every unit off}}``: what a kernel skipping whole K-blocks could skip.
    """

    tokens: int
    top1_agreement: float
    ppl_dense: float
    ppl_sparse: float
    token_sparsity: float
    chunk_sparsity: dict[str, float]
    method: str = "cats"
    site_sparsity: dict[str, float] = field(default_factory=dict)
    block_off: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "top1_agreement": self.top1_agreement,
            "ppl_dense": self.ppl_dense,
            "ppl_sparse": self.ppl_sparse,
            "token_sparsity": self.token_sparsity,
            "chunk_sparsity": self.chunk_sparsity,
            "method": self.method,
            "site_sparsity": self.site_sparsity,
            "block_off": self.block_off,
        }


def _nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -logp[np.arange(len(targets)), targets]


@dataclass(frozen=True)
class DenseReference:
    """The dense model's teacher-forced argmax and NLL on held text, per window (computed
    once and shared by every sparse configuration measured against it)."""

    ids: tuple[int, ...]
    argmax: list[np.ndarray]
    nll: list[np.ndarray]


def dense_reference(model: Any, ids: Sequence[int], *, progress: bool = False) -> DenseReference:
    """Teacher-forced dense pass over ``ids`` in windows of :data:`WINDOW` tokens."""
    from tqdm.auto import tqdm

    am, nll = [], []
    try:
        for w in tqdm(list(_windows(ids, WINDOW)), desc="dense", disable=not progress):
            model.reset()
            logits = model.forward(w[:-1])
            am.append(logits.argmax(-1))
            nll.append(_nll(logits, w[1:]))
    finally:
        model.reset()
    return DenseReference(tuple(int(i) for i in ids), am, nll)


def block_off_fraction(on: np.ndarray, B: int) -> float:
    """Fraction of (token, block) pairs whose B consecutive units are all off.

    Args:
        on: ``bool[T, N]`` on-mask (N a multiple of B; a last partial block is dropped).

    Raises:
        ValueError: ``B`` wider than N.
    """
    n = (on.shape[1] // B) * B
    if n == 0:
        raise ValueError(f"blocks of {B} do not fit in {on.shape[1]} units")
    return float((~on[:, :n]).reshape(on.shape[0], n // B, B).all(axis=-1).mean())


def measure_quality(
    model: Any,
    th: NeuronThresholds,
    ids: Sequence[int],
    *,
    dense: DenseReference | None = None,
    progress: bool = False,
) -> Quality:
    """Teacher-forced top-1 agreement and perplexities of dense vs sparse on ``ids``.

    ``dense``: a :func:`dense_reference` of the same ``ids`` (computed here when None).
    """
    from tqdm.auto import tqdm

    from edgespec.sparse.stats import chunk_active_fraction

    if dense is None or dense.ids != tuple(int(i) for i in ids):
        dense = dense_reference(model, ids, progress=progress)
    meth = th.ffn_method
    L = model.hp.n_layers
    agree = n = 0
    nll_s: list[np.ndarray] = []
    per_layer: dict[str, list[list[np.ndarray]]] = {
        s.name: [[] for _ in range(L)] for s in meth.sites
    }
    windows = list(_windows(ids, WINDOW))
    rec: list[dict[str, np.ndarray]] = []
    with ffn_override(model, masked_ffn(model, th, rec)):
        for wi, w in enumerate(tqdm(windows, desc="quality", unit="window", disable=not progress)):
            x, y = w[:-1], w[1:]
            rec.clear()
            model.reset()
            sparse = model.forward(x)
            for li, masks in enumerate(rec):
                for k, m in masks.items():
                    per_layer[k][li % L].append(m)
            agree += int((dense.argmax[wi] == sparse.argmax(-1)).sum())
            n += len(y)
            nll_s.append(_nll(sparse, y))
    if n == 0:
        raise EdgespecError("the held-out text has fewer than 2 tokens; give more text")
    on = {k: [np.concatenate(p) for p in v] for k, v in per_layer.items()}
    neuron = on[meth.sites[-1].name]
    chunk = {
        str(T): float(np.mean([1.0 - chunk_active_fraction(a, T) for a in neuron]))
        for T in (1, 2, 4, 8)
        if neuron[0].shape[0] >= T
    }
    return Quality(
        tokens=n,
        top1_agreement=agree / n,
        ppl_dense=float(np.exp(np.concatenate(dense.nll).mean())),
        ppl_sparse=float(np.exp(np.concatenate(nll_s).mean())),
        token_sparsity=float(np.mean([1.0 - a.mean() for a in neuron])),
        chunk_sparsity=chunk,
        method=meth.name,
        site_sparsity={k: float(np.mean([1.0 - a.mean() for a in v])) for k, v in on.items()},
        block_off={
            k: {
                str(B): float(np.mean([block_off_fraction(a, B) for a in v]))
                for B in BLOCK_SIZES
                if B <= v[0].shape[1]
            }
            for k, v in on.items()
        },
    )
