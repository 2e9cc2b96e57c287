"""Ways of choosing which FFN neurons or input channels to skip (training-free, lossy).

One registry, :data:`METHODS`, name -> :class:`FFNMethod`. A method thresholds one or more
*sites* of a layer's gated MLP ``y = (act(h Wg) * (h Wu)) Wd`` (``h: [T, D]`` the normed
hidden, F neurons); each site has its own per-layer threshold, fitted on calibration text as
a quantile of ``|value|`` at that site (the same target sparsity for every site):

- ``cats`` (CATS, Lee et al. 2024): site ``gate_act = |act(h Wg)|`` over F neurons. The gate is
  computed in full; an off neuron skips its row of ``up`` and its column of ``down``.
- ``act-up``: site ``down_in = |act(h Wg) * (h Wu)|``, the input of ``down``. Gate and up are
  computed in full; an off neuron skips only its column of ``down``.
- ``teal`` (TEAL, Liu et al. 2024): sites ``ffn_in = |h|`` over D input channels (an off channel
  skips that *input column* of gate and up) and ``down_in`` over F (skips input columns of
  ``down``); the down site is thresholded on the masked forward's own activations.

:meth:`FFNMethod.ffn` evaluates the masked FFN densely (values at off positions set to 0,
which is exactly what a kernel skipping those rows/columns computes, up to summation order)
and returns the magnitudes it thresholded, so one call serves fitting (thresholds 0: the
dense FFN, bit for bit) and measuring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edgespec.registry import Registry

Act = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Site:
    """One thresholded quantity of a layer.

    Attributes:
        name: "gate_act", "down_in" or "ffn_in".
        dim: "F" (one value per neuron) or "D" (one per input channel of gate/up).
        skips: what an off unit lets a kernel skip, for reports.
        rows: the matrices (of "gate", "up", "down") an off unit removes a whole output row
            of (contiguous in GGUF's layout).
        cols: the matrices an off unit removes an input column (the K dimension) of:
            in GGUF's layout only whole K-blocks of off units save bytes.
        dense_value: ``(h [T, D], act(gate) [T, F], up [T, F]) -> |value|`` in the dense
            forward (what thresholds are fitted on).
    """

    name: str
    dim: str
    skips: str
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    dense_value: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


GATE_ACT = Site(
    "gate_act", "F", "rows of up, columns of down", ("up",), ("down",), lambda h, a, u: np.abs(a)
)
DOWN_IN = Site("down_in", "F", "columns of down", (), ("down",), lambda h, a, u: np.abs(a * u))
FFN_IN = Site(
    "ffn_in", "D", "input columns of gate and up", (), ("gate", "up"), lambda h, a, u: np.abs(h)
)


class FFNMethod:
    """A training-free sparsity method for a gated MLP; subclasses set the class variables
    and :meth:`ffn`.

    Attributes:
        name: registry key (``edgespec sparsify --method``).
        bundle_name: the ``method`` written into a bundle.
        sites: the thresholded quantities, in threshold order.
        gathered: a bundle of this method runs chunk-sparse on the NumPy backend
            (:mod:`edgespec.sparse.dense`); otherwise it is measured only.
    """

    name: ClassVar[str]
    bundle_name: ClassVar[str]
    sites: ClassVar[tuple[Site, ...]]
    gathered: ClassVar[bool] = False

    def ffn(
        self,
        h: np.ndarray,
        w_gate_up: np.ndarray,
        w_down: np.ndarray,
        act: Act,
        t: np.ndarray,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The masked FFN of one layer.

        Args:
            h: ``[T, D]`` normed hidden (the MLP's input).
            w_gate_up: ``[D, 2F]`` fused gate and up (gate first).
            w_down: ``[F, D]``.
            act: the activation of the gate (silu or gelu_tanh).
            t: ``[len(sites)]`` thresholds; a unit is on when ``|value| > t`` (all zeros:
                the dense FFN exactly).

        Returns:
            ``y: [T, D]`` and ``{site name: |value| [T, D or F]}`` (before masking, so the
            on-mask is ``value > t``).
        """
        raise NotImplementedError


METHODS: Registry[FFNMethod] = Registry("sparsity method")


def _gate_up(h: np.ndarray, w_gate_up: np.ndarray, act: Act) -> tuple[np.ndarray, np.ndarray]:
    F = w_gate_up.shape[1] // 2
    gu = h @ w_gate_up
    return act(gu[:, :F]), gu[:, F:]


class Cats(FFNMethod):
    """Threshold on ``|act(gate)|`` (CATS)."""

    name = "cats"
    bundle_name = "cats-gate-threshold"
    sites = (GATE_ACT,)
    gathered = True

    def ffn(
        self, h: np.ndarray, w_gate_up: np.ndarray, w_down: np.ndarray, act: Act, t: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        a, u = _gate_up(h, w_gate_up, act)
        v = np.abs(a)
        return np.where(v > t[0], a * u, 0) @ w_down, {"gate_act": v}


class ActUp(FFNMethod):
    """Threshold on ``|act(gate) * up|``, the input of ``down``."""

    name = "act-up"
    bundle_name = "act-up-threshold"
    sites = (DOWN_IN,)

    def ffn(
        self, h: np.ndarray, w_gate_up: np.ndarray, w_down: np.ndarray, act: Act, t: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        a, u = _gate_up(h, w_gate_up, act)
        m = a * u
        v = np.abs(m)
        return np.where(v > t[0], m, 0) @ w_down, {"down_in": v}


class Teal(FFNMethod):
    """Thresholds on the inputs of the FFN's matrices (TEAL): ``|h|`` for gate/up, the
    ``down`` input for down."""

    name = "teal"
    bundle_name = "teal-input-threshold"
    sites = (FFN_IN, DOWN_IN)

    def ffn(
        self, h: np.ndarray, w_gate_up: np.ndarray, w_down: np.ndarray, act: Act, t: np.ndarray
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        vin = np.abs(h)
        a, u = _gate_up(np.where(vin > t[0], h, 0), w_gate_up, act)
        m = a * u
        v = np.abs(m)
        return np.where(v > t[1], m, 0) @ w_down, {"ffn_in": vin, "down_in": v}


for _cls in (Cats, ActUp, Teal):
    METHODS.register(_cls.name)(_cls())


def method_names() -> list[str]:
    """The registered method names, sorted."""
    return METHODS.names()


def by_bundle_name(bundle_name: str) -> FFNMethod:
    """The method whose :attr:`FFNMethod.bundle_name` is ``bundle_name``."""
    from edgespec.errors import EdgespecError

    for n in METHODS.names():
        m = METHODS.get(n)
        if m.bundle_name == bundle_name:
            return m
    raise EdgespecError(
        f"unknown sparsity method '{bundle_name}' in the bundle; known: "
        + ", ".join(METHODS.get(n).bundle_name for n in METHODS.names())
    )


def site_dims(method: FFNMethod, n_embd: int, n_ff: int) -> list[int]:
    """Units per site (D or F) of ``method`` on a model of width ``n_embd`` and FFN ``n_ff``."""
    return [n_embd if s.dim == "D" else n_ff for s in method.sites]


def describe(method: FFNMethod) -> dict[str, Any]:
    """A JSON-able summary of ``method`` for reports."""
    return {
        "method": method.name,
        "bundle_name": method.bundle_name,
        "sites": [
            {"name": s.name, "dim": s.dim, "skips": s.skips, "rows": s.rows, "cols": s.cols}
            for s in method.sites
        ],
    }
