"""Dense models run chunk-sparse with a bundle's training-free neuron thresholds (lossy).

A bundle that ``edgespec sparsify`` wrote into (``calibration.sparsity``) and that is loaded
on the NumPy backend runs :class:`SparseNumpyModel`: per layer the gate is computed in full
(CATS needs it for the mask), a neuron is on for a token when ``|act(gate)| > t_l``, and the
up and down projections are computed over the union of the chunk's on neurons only, with
``KERNELS["sparse_ffn:<impl>"]`` (``--sparse-kernel``). Each token's own mask is applied, so
the result is the dense FFN of the masked neurons (what
:meth:`~edgespec.sparse.neuron.NeuronThresholds.hook` computes), up to summation order.

Cost per token and layer: ``F*d`` for the gate plus about ``3*A*d`` for the A union rows
(the kernel's contract recomputes the gate on them) against ``3*F*d`` dense: it pays while
the union stays under two thirds of the neurons, i.e. for short chunks.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from typing import Any, cast

import numpy as np

from edgespec.model import Model
from edgespec.runtimes.base import LoadOptions, ModelSource
from edgespec.runtimes.numpy_ref import (
    LayerWeights,
    NumpyModel,
    Weights,
    _gelu_tanh,
    _silu,
    matmul,
)
from edgespec.sparse.neuron import NeuronThresholds
from edgespec.sparse.stats import ForwardSparsity


class SparseNumpyModel(NumpyModel):
    """A :class:`NumpyModel` whose MLP computes only the union of a chunk's on neurons.

    Attributes:
        thresholds: the per-layer thresholds on ``|act(gate)|``.
        kernel: the ``sparse_ffn`` implementation.
        sparsity: neurons on per token and per chunk union, per layer (lossy).
    """

    thresholds: NeuronThresholds
    kernel: Any
    sparsity: ForwardSparsity
    _gate_up_t: list[tuple[np.ndarray, np.ndarray]]
    _down: list[np.ndarray]  # each layer's w_down.T [D, F], one view object per layer

    @classmethod
    def from_model(cls, model: NumpyModel, th: NeuronThresholds, kernel: Any) -> SparseNumpyModel:
        """Take over ``model``'s weights and cache (``model`` must not be used afterwards):
        each layer's fused ``[D, 2F]`` gate/up becomes contiguous ``gate, up: [F, D]`` (the
        kernel's layout), so memory stays that of the dense model."""
        F = model.hp.n_ff
        obj = cls.__new__(cls)
        obj.__dict__.update(model.__dict__)
        pairs, layers = [], []
        for L in model.w.layers:
            gate = np.ascontiguousarray(L.w_gate_up[:, :F].T)
            up = np.ascontiguousarray(L.w_gate_up[:, F:].T)
            pairs.append((gate, up))
            layers.append(replace(L, w_gate_up=np.empty((0, 0), L.w_gate_up.dtype)))
        obj.w = Weights(model.w.tok_embd, model.w.out_norm, model.w.output, layers)
        obj.w.freq_factors = model.w.freq_factors
        obj._gate_up_t = pairs
        obj._down = [L.w_down.T for L in layers]  # kept: the compiled kernel knows it by object
        obj.thresholds = th
        obj.kernel = kernel
        obj.sparsity = ForwardSparsity(F, model.hp.n_layers, unit="neuron", lossy=True)
        obj.info = replace(
            model.info,
            extra={
                **model.info.extra,
                "sparsity": f"{th.target_sparsity:g} neurons off (lossy)",
                "variant": "+".join(
                    v
                    for v in (
                        str(model.info.extra.get("variant", "")),
                        f"sparse{th.target_sparsity:g}",
                    )
                    if v
                ),
            },
        )
        return obj

    def fork(self) -> SparseNumpyModel:
        other = cast(SparseNumpyModel, super().fork())  # copy.copy keeps the class
        other.sparsity = ForwardSparsity(self.hp.n_ff, self.hp.n_layers, unit="neuron", lossy=True)
        return other

    def _ffn(self, li: int, L: LayerWeights, h: np.ndarray) -> np.ndarray:
        """``h: [T, D]`` -> ``[T, D]``: the gate in full, up/down over the union only."""
        gate, up = self._gate_up_t[li]
        g = matmul(h, gate.T)  # [T, F]
        a = _silu(g) if self.hp.act == "silu" else _gelu_tanh(g)  # as the dense model's mask
        on = np.abs(a) > self.thresholds.thresholds[li]
        self.sparsity.record(h.shape[0], on, li)
        if li == self.hp.n_layers - 1:  # chains, trees and long prompts' pieces alike
            self.sparsity.end_forward(h.shape[0])
        rows = np.flatnonzero(on.any(axis=0))
        scale = on[:, rows].astype(h.dtype)  # each token's own mask inside the union
        return self.kernel(h, rows, gate, up, self._down[li], act=self.hp.act, scale=scale)


def apply_bundle_sparsity(source: ModelSource, model: Model, options: LoadOptions) -> Model:
    """``model`` as it runs with the sparsity layout of the bundle ``source`` comes from.

    A source outside a bundle, or a bundle without ``calibration.sparsity``, gives ``model``
    back. On the NumPy backend the layout is checked against the model (checksums, layers,
    FFN width: one-line errors) and a :class:`SparseNumpyModel` replaces it; other backends
    run dense, and say so on stderr.
    """
    from edgespec.bundle import bundle_root, read_manifest

    root = bundle_root(source.path)
    if root is None or "sparsity" not in (read_manifest(root).get("calibration") or {}):
        return model
    if not isinstance(model, NumpyModel):
        print(
            f"edgespec: the bundle's sparsity layout is not applied: backend "
            f"'{model.backend}' runs dense (--backend numpy runs it, lossy)",
            file=sys.stderr,
        )
        return model
    from edgespec.sparse.kernel import sparse_kernel
    from edgespec.sparse.layout import read_sparsity

    th = read_sparsity(root, n_layers=model.hp.n_layers, n_ff=model.hp.n_ff)
    if not th.ffn_method.gathered:
        from edgespec.errors import EdgespecError

        raise EdgespecError(
            f"bundle '{root}': sparsity method '{th.ffn_method.name}' is measured only, it has "
            "no sparse runtime yet; run edgespec sparsify --method cats for one that runs"
        )
    return SparseNumpyModel.from_model(model, th, sparse_kernel(options.sparse_kernel))
