"""The chunk-sparse FFN over the union of a chunk's active rows, as TensorIR (TVM, CPU).

For a chunk of M tokens (1 for plain decoding, k+1 for a verify, the nodes of a tree) and the
ascending union ``rows int64[A]`` of the FFN neurons any of them needs (whole BlockFFN expert
blocks, or thresholded neurons)::

    u[m, a] = x[m, :] . up[rows[a], :]            g[m, a] = x[m, :] . gate[rows[a], :]
    h[m, a] = act(g) * u * scale[m, a]            (ungated: act(u) * scale[m, a])
    y[m, :] = sum_a h[m, a] * down_t[rows[a], :]

Both weight reads are whole contiguous rows of ``[F, d]`` matrices (``down_t = down.T``, the
layout BlockFFN keeps), indexed through ``rows`` inside the kernel: nothing is gathered or
copied, and rows outside the list are never read. The dense twin (``dense_ffn:tvm``) is the
same function with ``rows[a] = a`` written in (no index load), scheduled the same way, so the
pair measures the sparse indirection against the best dense code of the same backend.

A is a ``tir.Var``: one kernel per row count M (:data:`BUCKETS`: every M up to 16, each
compiled on first use) serves every union size. Schedule: :func:`schedule_cpu` (the two
reductions over d split into 16 partial-sum lanes by ``rfactor`` so LLVM vectorizes along a
contiguous weight row, parallel over the active rows; the down product over contiguous ranges
of active rows, each streaming whole rows into its own partial sum). MetaSchedule
(:func:`tune_sparse`) samples that schedule's knobs (:func:`schedule_space`; its generic CPU
rules fail on this function) at a fixed A on valid block rows, and the record, knob decisions
only, replays on the dynamic-A kernels of :func:`default_kernels`; see docs/sparsity.md.

The entry points :func:`sparse_ffn` and :func:`dense_ffn` take exactly the arguments of
:func:`edgespec.kernels.reference.sparse_ffn` / ``dense_ffn`` and compute in float32. Float32
C-contiguous weights (and ``down`` given as ``down_t.T``) are used in place through DLPack;
other layouts or dtypes are converted once and cached by the source array's address.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.kernels import compiled, reference
from edgespec.kernels.compiled import (
    CompiledKernels,
    address,
    aligned_zeros,
    is_aligned,
)
from edgespec.kernels.compiled import tvm_module as _tvm

if TYPE_CHECKING:
    from tvm.ir import IRModule
    from tvm.target import Target
    from tvm.tirx import PrimFunc

    from edgespec.kernels.tuning import Scheduler

#: name of the compiled TVM function
FUNC_NAME = "ffn"
#: partial-sum lanes of the reductions over d (16 float32 = one AVX-512 register)
LANES = 16
#: the row counts M compiled (each on first use, 0.1-0.9 s here): every one up to 16, so that
#: no chunk is padded. With the other kernels' buckets (1, 2, 4, 8, 16) a 9-row verify chunk
#: ran the 16-row kernel, 3.0-3.4x the time of a 9-row one (5 rows on the 8-row kernel:
#: 1.5x; BlockFFN-Small's FFN at a union of 16 of 48 blocks, one thread:
#: benchmarks/sparse_ffn_rows.py)
BUCKETS: tuple[int, ...] = tuple(range(1, 17))


@dataclass(frozen=True)
class FFNShape:
    """What one compiled kernel is specialised for.

    Attributes:
        m_rows: M, the rows a call computes (:data:`BUCKETS`).
        d: model width.
        f: FFN width (all neurons).
        act: "silu", "relu" or "gelu_tanh".
        gated: with a gate projection (SwiGLU) or not (BlockFFN experts).
        scaled: with a per-token weight ``scale[M, A]`` of each row.
        sparse: rows through the ``rows`` list (True) or all F rows in order (dense).
        n_rows: a fixed A (tuning), or None for a dynamic A (the kernels that run).
        quant: the weights' form: "f32", or "q8_0" (GGML's Q8_0 blocks along d: int8 codes
            ``[F, d]`` and one float16 scale per 32 of them, ``[F, d / 32]``).
    """

    m_rows: int
    d: int
    f: int
    act: str = "silu"
    gated: bool = True
    scaled: bool = False
    sparse: bool = True
    n_rows: int | None = None
    quant: str = "f32"

    @property
    def key(self) -> str:
        """The kernel-and-shape key, as tuning records name them (A excluded: one kernel
        serves every A): ``sparse_ffn-silu-gated-m4-d576-f1536`` (``...-q8_0`` for Q8_0
        weights)."""
        op = "sparse_ffn" if self.sparse else "dense_ffn"
        kind = ("gated" if self.gated else "plain") + ("-scaled" if self.scaled else "")
        tail = "" if self.quant == "f32" else f"-{self.quant}"
        return f"{op}-{self.act}-{kind}-m{self.m_rows}-d{self.d}-f{self.f}{tail}"


def _act_expr(name: str, v: Any) -> Any:
    from tvm import tirx

    one = tirx.const(1.0, "float32")
    if name == "silu":
        return v / (one + tirx.exp(-v))
    if name == "relu":
        return tirx.max(v, tirx.const(0.0, "float32"))
    if name == "gelu_tanh":
        c = tirx.const(float(np.sqrt(2.0 / np.pi)), "float32")
        inner = c * (v + tirx.const(0.044715, "float32") * v * v * v)
        return tirx.const(0.5, "float32") * v * (one + tirx.tanh(inner))
    raise EdgespecError(f"unknown activation '{name}'; known: silu, relu, gelu_tanh")


#: the quantized weight forms :class:`FFNShape` takes, and the values one scale covers
QUANTS: dict[str, int] = {"f32": 1, "q8_0": 32}


def check_quant(quant: str) -> str:
    """``quant`` when :data:`QUANTS` has it, else a one-line error naming the known forms."""
    if quant not in QUANTS:
        raise EdgespecError(f"unknown FFN weight form '{quant}'; known: {', '.join(QUANTS)}")
    return quant


#: the registered implementations (``KERNELS["sparse_ffn:<impl>"]``) and their weight form
IMPL_QUANT: dict[str, str] = {"tvm": "f32", "tvm-q8": "q8_0"}


class _Operand:
    """One weight matrix ``[F, d]`` of :func:`ffn_func` as placeholders and its element
    expression: float32 ``w[r, k]``, or Q8_0 ``float32(codes[r, k]) * float32(scales[r, k //
    32])`` (GGML's dequantization, exact in float32)."""

    def __init__(self, name: str, f: int, d: int, quant: str) -> None:
        from tvm import te

        if quant == "f32":
            self.tensors = [te.placeholder((f, d), "float32", name=name)]
        else:
            per = QUANTS[quant]
            self.tensors = [
                te.placeholder((f, d), "int8", name=f"{name}_q"),
                te.placeholder((f, d // per), "float16", name=f"{name}_s"),
            ]

    def __call__(self, r: Any, k: Any) -> Any:
        if len(self.tensors) == 1:
            return self.tensors[0][r, k]
        codes, scales = self.tensors
        per = codes.shape[1] // scales.shape[1]
        return codes[r, k].astype("float32") * scales[r, k // per].astype("float32")


def ffn_func(shape: FFNShape) -> PrimFunc:
    """The unscheduled TensorIR function ``ffn(x, [rows], [gate], up, down_t, [scale], y)``.

    Blocks: ``u`` (and ``g``) the reductions over d, ``h`` the activation, ``y`` the
    reduction over the A rows. Operands: ``x f32[M, d]``, ``rows int64[A]`` (sparse),
    ``gate/up/down_t f32[F, d]`` (Q8_0: each as ``int8[F, d]`` codes then ``f16[F, d / 32]``
    scales), ``scale f32[M, A]`` (scaled), ``y f32[M, d]``; A is ``shape.n_rows`` or a
    variable (F for the dense function).
    """
    _tvm()
    from tvm import te

    m, d, f = shape.m_rows, shape.d, shape.f
    if d % QUANTS[check_quant(shape.quant)]:
        raise EdgespecError(
            f"{shape.quant} weights need d a multiple of {QUANTS[shape.quant]}; got d = {d}"
        )
    if shape.sparse:
        n_rows: Any = shape.n_rows if shape.n_rows is not None else te.var("n_rows", "int64")
    else:
        n_rows = f
    x = te.placeholder((m, d), "float32", name="x")
    rows = te.placeholder((n_rows,), "int64", name="rows") if shape.sparse else None
    gate = _Operand("gate", f, d, shape.quant) if shape.gated else None
    up = _Operand("up", f, d, shape.quant)
    down_t = _Operand("down_t", f, d, shape.quant)
    scale = te.placeholder((m, n_rows), "float32", name="scale") if shape.scaled else None

    def row(a: Any) -> Any:
        return rows[a] if rows is not None else a

    def rows_of(w: _Operand, name: str) -> Callable[[Any, Any], Any]:
        """``w``'s listed rows, ``[A, d]``: read in place (float32), or a dequantizing
        stage ``<name>_w`` that the schedule computes one row at a time, so that the M token
        rows share one dequantization (quantized)."""
        if shape.quant == "f32":
            return lambda a, k: w(row(a), k)
        stage = te.compute((n_rows, d), lambda a, k: w(row(a), k), name=f"{name}_w")
        return lambda a, k: stage[a, k]

    up_r = rows_of(up, "up")
    k = te.reduce_axis((0, d), name="k")
    u = te.compute((m, n_rows), lambda i, a: te.sum(x[i, k] * up_r(a, k), axis=k), name="u")
    g = None
    if gate is not None:
        gate_r = rows_of(gate, "gate")
        kg = te.reduce_axis((0, d), name="kg")
        g = te.compute(
            (m, n_rows), lambda i, a: te.sum(x[i, kg] * gate_r(a, kg), axis=kg), name="g"
        )

    def hidden(i: Any, a: Any) -> Any:
        v = (
            _act_expr(shape.act, g[i, a]) * u[i, a]
            if g is not None
            else _act_expr(shape.act, u[i, a])
        )
        return v * scale[i, a] if scale is not None else v

    h = te.compute((m, n_rows), hidden, name="h")
    down_r = rows_of(down_t, "down")
    r = te.reduce_axis((0, n_rows), name="r")
    y = te.compute((m, d), lambda i, j: te.sum(h[i, r] * down_r(r, j), axis=r), name="y")
    args = [x] + ([rows] if rows is not None else [])
    for w in (gate, up, down_t):
        args += w.tensors if w is not None else []
    args += ([scale] if scale is not None else []) + [y]
    return te.create_prim_func(args).with_attr("global_symbol", FUNC_NAME)


#: token rows up to which a quantized kernel dequantizes each weight inside the dot
#: product instead of into a row buffer first (the buffer pays once rows share it)
INLINE_ROWS = 1
#: partial-sum lanes of a quantized kernel's dot products past :data:`INLINE_ROWS` tokens,
#: where each token keeps its own accumulator (8 float32: one AVX2 register, so that 8
#: tokens' sums stay in AVX2's 16 registers). Against the float32 kernel's order (each
#: token a whole row in turn), 1.0-1.3x faster at M = 2-8 on the Qwen-sized FFN (Zen 3,
#: one thread, a quarter of the rows; docs/sparsity.md)
TILE_LANES = 8
#: partial-sum lanes of a quantized kernel's one-token dot products: four AVX2 registers,
#: four independent sums (16 lanes, two sums, ran 1.28x slower: bound by the adds' latency)
ONE_ROW_LANES = 32


def _has_block(sch: Any, name: str) -> bool:
    try:
        sch.get_sblock(name)
    except Exception:
        return False
    return True


def schedule_cpu(
    func: PrimFunc, row_tile: int = 8, parts: int = 2, lanes: int | None = None
) -> IRModule:
    """The untuned CPU schedule.

    ``u``/``g``: d split into :data:`LANES` partial sums (``rfactor``), so the inner loop runs
    over consecutive weights of one row and vectorizes; parallel over tiles of ``row_tile``
    active rows, the M token rows inside (a weight row is read from memory once, then from
    L1 for the other tokens). Quantized weights: each listed row dequantized once into a
    row buffer, and its vectors of :data:`TILE_LANES` each meet the M tokens in turn (at one
    token, dequantized inside the dot product, :data:`ONE_ROW_LANES` lanes).
    ``y``: the active rows split into ``parts`` ranges (``rfactor``, parallel), each
    streaming whole rows of ``down_t`` into its own ``[M, d]`` partial sum (column tiles
    instead, parallel over the output, read every row strided and ran 2-4x slower once
    ``down_t`` left L2: 6 ms for M = 8, d = 576, F = 1536), then the parts summed.
    """
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    _schedule(sch, row_tile, parts, lanes)
    return sch.mod


def _schedule(sch: Any, row_tile: Any, parts: Any, lanes: Any = None) -> None:
    """:func:`schedule_cpu`'s steps on ``sch``; the knobs are ints or sampled variables
    (``lanes`` None: :data:`LANES`, or :data:`ONE_ROW_LANES` for quantized weights at one
    token; quantized weights past one token always take :data:`TILE_LANES`)."""
    m_rows = int(sch.get(sch.get_loops(sch.get_sblock("u"))[0]).extent)
    quantized = _has_block(sch, "up_w")
    # quantized weights, several tokens: each weight vector (dequantized once, into the row
    # buffer) meets the M tokens in M accumulators of TILE_LANES, the tokens the inner loop
    tile = quantized and m_rows > INLINE_ROWS
    if tile:
        lanes = TILE_LANES  # (a sampled knob has no effect here)
    elif lanes is None:
        lanes = ONE_ROW_LANES if quantized else LANES
    for name in ("u", "g"):
        if not _has_block(sch, name):  # no gate: an ungated FFN
            continue
        blk = sch.get_sblock(name)
        i, a, k = sch.get_loops(blk)
        _, kv = sch.split(k, [None, lanes])
        rf = sch.rfactor(kv, factor_axis=2)  # <name>_rf[i, a, lane]
        i2, a2, ko2, kv2 = sch.get_loops(rf)
        ao, ai = sch.split(a2, [None, row_tile])
        if tile:
            sch.reorder(ao, ai, ko2, i2, kv2)
        else:
            sch.reorder(ao, ai, i2, ko2, kv2)
        sch.parallel(ao)
        sch.decompose_reduction(rf, ko2)
        sch.reverse_compute_at(sch.get_sblock(name), ai)
        sch.set_scope(rf, 0, "local")
        if tile:
            sch.unroll(i2)
        _dequantize_at(sch, "up" if name == "u" else "gate", ai, m_rows)
    blk = sch.get_sblock("y")
    i, j, r = sch.get_loops(blk)
    # the active rows split into `parts` contiguous ranges, one partial y per range: each task
    # streams whole rows of down_t (no strided column tiles) into an L1-resident [M, d] sum
    ro, _ = sch.split(r, [parts, None])
    rf = sch.rfactor(ro, factor_axis=0)  # y_rf[part, i, j]
    i2, j2, ro2, ri2 = sch.get_loops(rf)
    sch.reorder(ro2, ri2, i2, j2)
    sch.parallel(ro2)
    sch.decompose_reduction(rf, ri2)
    sch.unroll(i2)
    _dequantize_at(sch, "down", ri2, m_rows)


def _dequantize_at(sch: Any, name: str, loop: Any, m_rows: int) -> None:
    """Quantized weights: compute the dequantizing stage ``<name>_w`` (if any) one listed
    row at a time under ``loop`` (the loop over rows), in a row buffer that the M token
    rows then read, its 32-value groups (one scale each) vectorized; for M up to
    :data:`INLINE_ROWS`, inside the dot product instead."""
    if not _has_block(sch, f"{name}_w"):  # float32 weights: read in place
        return
    blk = sch.get_sblock(f"{name}_w")
    if m_rows <= INLINE_ROWS:
        sch.compute_inline(blk)
        return
    sch.compute_at(blk, loop)
    per = QUANTS["q8_0"]
    _, k = sch.get_loops(blk)[-2:]
    _, kv = sch.split(k, [None, per])
    sch.vectorize(kv)


#: the knobs MetaSchedule samples in :func:`schedule_space`
SPACE = {"row_tile": (4, 8, 16, 32), "parts": (2, 4), "lanes": (8, 16, 32)}


def schedule_space(sch: Any) -> None:
    """MetaSchedule design space (``ScheduleFn``): :func:`schedule_cpu` with its knobs
    (:data:`SPACE`) sampled. MetaSchedule's generic CPU rules fail on this function (a
    ``reverse_compute_at`` of the output under the gathered reduction)."""
    knobs = [sch.sample_categorical(list(v), [1.0 / len(v)] * len(v)) for v in SPACE.values()]
    _schedule(sch, *knobs)


def cpu_scheduler(func: PrimFunc, target: Target, key: str) -> IRModule:
    """The untuned :data:`~edgespec.kernels.tuning.Scheduler`: :func:`schedule_cpu`."""
    return schedule_cpu(func)


def bucket_for(m_rows: int, buckets: Sequence[int] = BUCKETS) -> int:
    """The smallest bucket that holds ``m_rows`` rows."""
    return compiled.bucket_for(m_rows, buckets, "sparse FFN", "split the chunk")


#: the largest slope of each activation, sup |act'(v)| (float64 grid, step 1e-4 on [-20, 20])
ACT_SLOPE: dict[str, float] = {"silu": 1.0999, "relu": 1.0, "gelu_tanh": 1.1290}
#: float32 roundings in evaluating ``h`` from the two dot products, per activation, each at
#: most one unit roundoff relative (``exp``/``tanh`` counted as 2: within 1 ulp in LLVM's libm):
#: silu: exp, add, divide, times u, times scale; gelu_tanh: v*v*v (2), times 0.044715, add,
#: times c, tanh, add, times 0.5, times v, times u, times scale; relu: times scale
ACT_ROUNDINGS: dict[str, int] = {"silu": 6, "relu": 1, "gelu_tanh": 13}


def ffn_bound(
    x: np.ndarray,
    rows: np.ndarray,
    gate: np.ndarray | None,
    up: np.ndarray,
    down: np.ndarray,
    *,
    act: str = "silu",
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """A first-order forward error bound of the float32 kernel, ``float64[M, d]``.

    With ``gamma_n = n u / (1 - n u)``, ``u = 2^-24`` (Higham, eq. 3.5) and ``L`` the
    activation's largest slope (:data:`ACT_SLOPE`)::

        E_u = gamma_d |x| @ |up_r|^T        E_g = gamma_d |x| @ |gate_r|^T
        E_h = (L E_g |u| + |act(g)| E_u) |scale| + ACT_ROUNDINGS u |h|
        E_y = gamma_A |h| @ |down_r|^T + E_h @ |down_r|^T

    (ungated: ``E_h = L E_u |scale| + ...``), the exact values in float64 from the float32
    inputs. Terms of order ``u^2`` are left out.
    """
    u = 2.0**-24

    def gamma(n: int) -> float:
        return n * u / (1 - n * u)

    f64 = np.float64
    x = np.asarray(x, f64)
    rows = np.asarray(rows)
    up_r = np.asarray(up, f64)[rows]
    down_r = np.asarray(down, f64)[:, rows].T  # [A, d]
    s = np.ones((x.shape[0], rows.size)) if scale is None else np.abs(np.asarray(scale, f64))
    fn = reference.ACTIVATIONS[act]
    uu = x @ up_r.T
    e_u = gamma(x.shape[1]) * (np.abs(x) @ np.abs(up_r).T)
    if gate is not None:
        gate_r = np.asarray(gate, f64)[rows]
        g = x @ gate_r.T
        e_g = gamma(x.shape[1]) * (np.abs(x) @ np.abs(gate_r).T)
        h = fn(g) * uu
        e_h = ACT_SLOPE[act] * e_g * np.abs(uu) + np.abs(fn(g)) * e_u
    else:
        h = fn(uu)
        e_h = ACT_SLOPE[act] * e_u
    h = np.abs(h) * s
    e_h = e_h * s + ACT_ROUNDINGS[act] * u * h
    return gamma(max(rows.size, 1)) * (h @ np.abs(down_r)) + e_h @ np.abs(down_r)


def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``w float[F, d]`` in GGML's Q8_0 blocks along each row, by gguf-py's quantizer: int8
    codes ``[F, d]`` and float16 scales ``[F, d / 32]``, both 64-byte aligned, so that
    ``codes * scales`` (each scale over its 32 codes) is exactly ``gguf.quants.dequantize``
    of the Q8_0 bytes.

    Raises:
        EdgespecError: d is not a multiple of 32.
    """
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    f, d = w.shape
    if d % QUANTS["q8_0"]:
        raise EdgespecError(f"q8_0 weights need rows a multiple of 32 long; got [{f}, {d}]")
    raw = quantize(np.ascontiguousarray(w, dtype=np.float32), GGMLQuantizationType.Q8_0)
    blocks = raw.reshape(f, d // 32, 34)  # per block: float16 scale, then 32 int8 codes
    codes = aligned_zeros((f, d), np.int8)
    codes[...] = blocks[:, :, 2:].view(np.int8).reshape(f, d)
    scales = aligned_zeros((f, d // 32), np.float16)
    scales[...] = blocks[:, :, :2].copy().view(np.float16).reshape(f, d // 32)
    return codes, scales


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A weight ``[F, d]`` held only in the quantized form the kernels read, without its
    float values: GGML's Q8_0 blocks along its rows (:func:`quantize_rows`). A model that
    runs on ``sparse_ffn:tvm-q8`` keeps these instead of float32 arrays (a quarter of the
    memory). ``.T`` is the same weight marked transposed (``[d, F]``), as models pass
    ``down = down_t.T``.

    Attributes:
        codes: ``int8[F, d]``.
        scales: ``float16[F, d / 32]``, one per 32 codes.
        quant: the form (:data:`QUANTS`).
        transposed: this is the ``[d, F]`` view of the rows.
    """

    codes: np.ndarray
    scales: np.ndarray
    quant: str = "q8_0"
    transposed: bool = False

    @classmethod
    def of(cls, w: np.ndarray, quant: str = "q8_0") -> QuantizedWeight:
        """``w float[F, d]`` quantized (:func:`quantize_rows`; "q8_0" is the one form)."""
        if quant != "q8_0":
            raise EdgespecError(f"no quantizer for FFN weights in '{quant}'; known: q8_0")
        return cls(*quantize_rows(w), quant=quant)

    @property
    def shape(self) -> tuple[int, int]:
        f, d = self.codes.shape
        return (d, f) if self.transposed else (f, d)

    @property
    def T(self) -> QuantizedWeight:  # noqa: N802 (NumPy's name)
        return replace(self, transposed=not self.transposed)

    def dequantize(self) -> np.ndarray:
        """The float32 values the kernels compute with, in this view's shape."""
        per = self.codes.shape[1] // self.scales.shape[1]
        w = self.codes.astype(np.float32) * np.repeat(self.scales.astype(np.float32), per, 1)
        return w.T if self.transposed else w


#: arrays :meth:`FFNKernels.weight` recognises by object (a model's weight matrices; views
#: made per call cycle through)
OBJECTS = 1024


class FFNKernels(CompiledKernels[FFNShape]):
    """Compiled kernels per :class:`FFNShape` and the TVM operands of the weights.

    Args:
        target: default :func:`edgespec.kernels.tuning.host_target`.
        scheduler: the scheduled module of each shape (default :func:`cpu_scheduler`).
        buckets: the row counts compiled (lazily, on first use).
        quant: the form the kernels read the weights in (:data:`QUANTS`): "f32", or "q8_0",
            each float weight quantized once, on first sight, to GGML's Q8_0 blocks along
            its rows (:func:`quantize_rows`; lossy: 8-bit codes, one float16 scale per 32).
    """

    def __init__(
        self,
        *,
        target: Target | None = None,
        scheduler: Scheduler | None = None,
        buckets: Sequence[int] = BUCKETS,
        quant: str = "f32",
    ) -> None:
        super().__init__(
            ffn_func, FUNC_NAME, scheduler or cpu_scheduler, target=target, buckets=buckets
        )
        self.quant = check_quant(quant)
        # {source key: (the source array, its operand tensors, the arrays they view)}
        self._weights: dict[tuple[Any, ...], tuple[np.ndarray, tuple[Any, ...], Any]] = {}
        # the last OBJECTS arrays weight() was given:
        # {(id, transposed): (the array, layout, its operand tensors)}
        self._by_object: dict[tuple[int, bool], tuple[np.ndarray, tuple[Any, ...], Any]] = {}
        self._scratch = threading.local()
        self._functions: dict[tuple[Any, ...], Any] = {}
        # the bucket of each row count up to the largest (index m_rows)
        self._bucket_of = [bucket_for(max(m, 1), self.buckets) for m in range(self.buckets[-1] + 1)]

    def weight(self, a: np.ndarray, transposed: bool = False) -> tuple[Any, ...]:
        """The kernel's operands of the weight ``a`` (``a.T`` when ``transposed``), ``[F, d]``:
        ``(float32 tensor,)``, in place (DLPack) when ``a`` already is a float32 C-contiguous
        aligned array, else converted once; for "q8_0" ``(int8 codes [F, d], float16 scales
        [F, d / 32])``, quantized once. Conversions are cached by the source's address,
        shape and strides (the cache keeps the source alive, so the address cannot be
        reused).

        A later call with the same array object is a dictionary lookup by object, without
        reading the address (about 0.8 us in NumPy, a call's largest bookkeeping). The entry
        holds the object, so its id cannot be reused while cached; the table keeps the last
        :data:`OBJECTS` objects seen (views made anew on every call pass through it; the
        weights that come back stay or come back). ``transposed`` lets a caller that keeps
        ``down = down_t.T`` hit by object too: ``down.T`` would be a new view each call."""
        if isinstance(a, QuantizedWeight):
            return self._quantized(a, transposed)[1]
        layout = (a.shape, a.strides)
        hit = self._by_object.get((id(a), transposed))
        if hit is not None and hit[0] is a and hit[1] == layout:  # (shape can be assigned)
            return hit[2]
        src = a.T if transposed else a
        key = self._source_key(src)
        got = self._weights.get(key)
        if got is None:
            from_dlpack = _tvm().runtime.from_dlpack
            in_place = key[0]
            if self.quant == "q8_0":
                held: Any = quantize_rows(src)
            elif in_place:
                held = (src,)
            else:
                held = (aligned_zeros(src.shape, np.float32),)
                held[0][...] = src
            got = (a, tuple(from_dlpack(h) for h in held), held)
            self._weights[key] = got
        with self._lock:
            if len(self._by_object) >= OBJECTS:  # the oldest entry out (dicts keep order)
                del self._by_object[next(iter(self._by_object))]
            self._by_object[(id(a), transposed)] = (a, layout, got[1])
        return got[1]

    def held(self, a: np.ndarray, transposed: bool = False) -> tuple[np.ndarray, ...]:
        """The NumPy arrays behind :meth:`weight`'s operands of ``a`` (converted if not yet):
        ``(float32 [F, d],)`` or ``(codes, scales)``; writing to them changes what the
        kernels read (the tests poison rows this way)."""
        if isinstance(a, QuantizedWeight):
            return self._quantized(a, transposed)[2]
        self.weight(a, transposed)
        return self._weights[self._source_key(a.T if transposed else a)][2]

    def _source_key(self, src: np.ndarray) -> tuple[Any, ...]:
        """The conversion cache's key of the ``[F, d]`` array ``src``: whether it is read in
        place (float32 kernels, float32 aligned data), its address, shape, strides, dtype."""
        at = address(src)
        in_place = self.quant == "f32" and src.dtype == np.float32 and is_aligned(src, at)
        return (in_place, at, src.shape, src.strides, src.dtype.str)

    def _quantized(
        self, a: QuantizedWeight, transposed: bool
    ) -> tuple[QuantizedWeight, tuple[Any, ...], tuple[np.ndarray, ...]]:
        """The cache entry of a weight given already quantized: its codes and scales as
        TVM tensors, made once per codes array (views share them).

        Raises:
            EdgespecError: a form these kernels do not read, or ``a`` not in the orientation
                the call wants (``down`` must come as the rows' ``.T``).
        """
        if a.quant != self.quant:
            raise EdgespecError(
                f"weights quantized to {a.quant} need a kernel on {a.quant} weights "
                f"(--sparse-kernel tvm-q8); these kernels read {self.quant}"
            )
        if a.transposed != transposed:
            raise EdgespecError("a quantized down must be passed as down_t.T ([d, F])")
        key = ("quantized", address(a.codes))
        got = self._weights.get(key)
        if got is None:
            from_dlpack = _tvm().runtime.from_dlpack
            held = (a.codes, a.scales)
            got = self._weights[key] = (a, tuple(from_dlpack(h) for h in held), held)
        return got

    def _buffers(self, bucket: int, d: int, f: int) -> _Scratch:
        """This thread's reusable operands for ``bucket`` rows of ``d`` and up to ``f``
        listed rows, allocated once per shape (a call copies its result out)."""
        cache = getattr(self._scratch, "by_shape", None)
        if cache is None:
            cache = self._scratch.by_shape = {}
        got = cache.get((bucket, d, f))
        if got is None:
            got = cache[(bucket, d, f)] = _Scratch(bucket, d, f)
        return got

    def run(
        self,
        x: np.ndarray,
        rows: np.ndarray | None,
        gate: np.ndarray | None,
        up: np.ndarray,
        down: np.ndarray,
        *,
        act: str,
        scale: np.ndarray | None,
    ) -> np.ndarray:
        """One FFN (see :func:`sparse_ffn`); ``rows`` None is the dense kernel."""
        m_rows, d = x.shape
        f = up.shape[0]
        if (
            up.shape[1] != d
            or down.shape != (d, f)
            or (gate is not None and gate.shape != up.shape)
        ):
            raise EdgespecError(
                f"FFN shapes do not fit: x {x.shape}, gate {None if gate is None else gate.shape},"
                f" up {up.shape}, down {down.shape} (want up/gate [F, d], down [d, F])"
            )
        bucket = (
            self._bucket_of[m_rows]
            if m_rows < len(self._bucket_of)
            else bucket_for(m_rows, self.buckets)  # (its error)
        )
        # FFNShape's fields in order (a tuple hashes faster than the dataclass)
        fkey = (
            bucket, d, f, act, gate is not None, scale is not None, rows is not None, None,
            self.quant,
        )  # fmt: skip
        fn = self._functions.get(fkey)
        if fn is None:
            fn = self._functions[fkey] = self.function(FFNShape(*fkey))
        own = self._buffers(bucket, d, f)
        args = [own.x_tensor]
        n_rows = f
        if rows is not None:
            n_rows = len(rows)
            if n_rows == 0:
                return np.zeros((m_rows, d), dtype=x.dtype)
            args.append(own.listed(rows, f))
        own.x[:m_rows] = x
        if m_rows < bucket:
            own.x[m_rows:] = 0
        if gate is not None:
            args += self.weight(gate)
        args += self.weight(up)
        args += self.weight(down, transposed=True)
        if scale is not None:
            if scale.shape != (m_rows, n_rows):
                raise EdgespecError(
                    f"scale must be [M, A] = [{m_rows}, {n_rows}]; got {scale.shape}"
                )
            args.append(own.scales(scale, n_rows))
        args.append(own.y_tensor)
        fn(*args)
        return own.y[:m_rows].astype(x.dtype)  # a copy: y is reused by the next call


class _Scratch:
    """One thread's operands of one kernel shape, reused from call to call: the input rows
    ``x [bucket, d]``, output rows ``y``, the row list (up to ``f``) and the per-row scales
    (``[bucket, A]`` for any A up to ``f``), all aligned, with their TVM tensors (one per
    listed length A)."""

    def __init__(self, bucket: int, d: int, f: int) -> None:
        from_dlpack = _tvm().runtime.from_dlpack
        self.bucket = bucket
        self.x = aligned_zeros((bucket, d), np.float32)
        self.y = aligned_zeros((bucket, d), np.float32)
        self.x_tensor, self.y_tensor = from_dlpack(self.x), from_dlpack(self.y)
        self.rows = aligned_zeros((f,), np.int64)
        self.row_tensors: dict[int, tuple[np.ndarray, Any]] = {}
        self.scale = aligned_zeros((bucket * f,), np.float32)
        self.scale_tensors: dict[int, tuple[np.ndarray, Any]] = {}

    @staticmethod
    def _view(
        flat: np.ndarray, tensors: dict[int, tuple[np.ndarray, Any]], n_rows: int, shape: Any
    ) -> tuple[np.ndarray, Any]:
        """The first elements of ``flat`` as ``shape`` and its TVM tensor, kept per
        ``n_rows``; a new buffer when ``flat`` is too short (more rows than F: repeated)."""
        got = tensors.get(n_rows)
        if got is None:
            size = int(np.prod(shape))
            if size <= len(flat):
                view = flat[:size].reshape(shape)
                got = tensors[n_rows] = (view, _tvm().runtime.from_dlpack(view))
            else:
                view = aligned_zeros(shape, flat.dtype)
                got = (view, _tvm().runtime.from_dlpack(view))
        return got

    def listed(self, rows: np.ndarray, f: int) -> Any:
        """``rows`` (A of them, each in ``[0, f)``, else one line) as an int64 tensor."""
        n_rows = len(rows)
        listed, tensor = self._view(self.rows, self.row_tensors, n_rows, (n_rows,))
        listed[:] = rows
        # both bounds in one look, a negative row being a huge unsigned one (argmax is a
        # plain C loop, several times cheaper than a max reduction for a call's rows)
        unsigned = listed.view(np.uint64)
        if unsigned[unsigned.argmax()] >= f:
            bad = np.asarray(rows)
            raise EdgespecError(f"FFN rows must lie in [0, {f}); got {bad.min()}..{bad.max()}")
        return tensor

    def scales(self, scale: np.ndarray, n_rows: int) -> Any:
        """``scale [M, A]`` in the first ``M`` rows of a ``[bucket, A]`` tensor (the rest
        zero)."""
        view, tensor = self._view(self.scale, self.scale_tensors, n_rows, (self.bucket, n_rows))
        m_rows = scale.shape[0]
        view[:m_rows] = scale
        if m_rows < self.bucket:
            view[m_rows:] = 0
        return tensor


def block_rows_maker(f: int, block: int) -> Callable[[Any, np.random.Generator, Any], Any]:
    """Tuning arguments (:data:`edgespec.kernels.tuning.ArgMaker`) for a fixed-A sparse
    kernel: the int64 row list holds A valid rows, whole random blocks of ``block`` neurons
    in ascending order (MetaSchedule's random integers in [-8, 8) would read out of bounds,
    and 8 repeated rows would sit in L1); float operands are random."""
    from edgespec.kernels import tuning

    def make(info: Any, rng: np.random.Generator, dev: Any) -> Any:
        _, dtype, shape = info
        if str(dtype) != "int64" or len(shape) != 1:  # (Q8_0 codes are int8 [F, d])
            return tuning._random_arg(info, rng, dev)
        n_rows = int(shape[0])
        blocks = np.sort(rng.choice(f // block, -(-n_rows // block), replace=False))
        rows = reference.block_rows(blocks, block)[:n_rows].astype(str(dtype))
        return _tvm().runtime.tensor(rows, dev)

    return make


def tune_sparse(
    shape: FFNShape,
    *,
    block: int = 64,
    trials: int = 16,
    target: Target | None = None,
    progress: bool = True,
) -> Any:
    """MetaSchedule on the sparse kernel at a fixed union size ``shape.n_rows`` (A), over
    :func:`schedule_space` (the untuned schedule's knobs), timed on valid block rows
    (:func:`block_rows_maker`). The record is stored under ``<shape.key>-a<A>`` (the
    measurement) and under ``shape.key`` (no A): its trace holds only knob decisions, so it
    replays on the dynamic-A kernel that runs, which :func:`default_kernels` picks up
    (:func:`edgespec.kernels.tuning.tuned_scheduler`: used when it beat the untuned
    schedule in the tuning run).

    Returns:
        the :class:`edgespec.kernels.tuning.TuningRecord` (of the fixed-A key).
    """
    from edgespec.kernels import tuning

    if shape.n_rows is None or not shape.sparse:
        raise EdgespecError("tune_sparse needs a sparse FFNShape with a fixed n_rows")
    from tvm.s_tir import meta_schedule as ms

    space = ms.space_generator.ScheduleFn(
        schedule_space, sch_rules=[], postprocs=[], mutator_probs={}
    )
    rec = tuning.tune(
        ffn_func(shape),
        f"{shape.key}-a{shape.n_rows}",
        cpu_scheduler,
        target=target,
        trials=trials,
        progress=progress,
        make_arg=block_rows_maker(shape.f, block),
        space=space,
    )
    dynamic = replace(rec, key=shape.key)
    tuning.apply_record(ffn_func(replace(shape, n_rows=None)), dynamic)  # raises if not
    dynamic.save(tuning.records_dir() / f"{shape.key}.json")
    return rec


_DEFAULT: dict[str, FFNKernels] = {}


def default_kernels(quant: str = "f32") -> FFNKernels:
    """The process-wide :class:`FFNKernels` of the registry entries for weights in the form
    ``quant``: this CPU's target, this device's MetaSchedule record of each shape when
    :func:`tune_sparse` made one that beat the untuned schedule, else the untuned schedule."""
    from edgespec.kernels import tuning

    got = _DEFAULT.get(quant)
    if got is None:
        got = _DEFAULT[quant] = FFNKernels(
            scheduler=tuning.tuned_scheduler(cpu_scheduler), quant=quant
        )
    return got


def sparse_ffn(
    x: np.ndarray,
    rows: np.ndarray,
    gate: np.ndarray | None,
    up: np.ndarray,
    down: np.ndarray,
    *,
    act: str = "silu",
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """``KERNELS["sparse_ffn:tvm"]``: :func:`edgespec.kernels.reference.sparse_ffn` compiled.

    Args:
        x: ``float[M, d]``, M up to the largest bucket (16).
        rows: ``int[A]`` the active neurons (ascending, in ``[0, F)``).
        gate: ``float[F, d]`` or None (ungated experts).
        up: ``float[F, d]``.
        down: ``float[d, F]``; pass ``down_t.T`` for ``down_t: float32[F, d]`` C-contiguous
            (then read in place; any other layout is transposed once and cached).
        act: "silu", "relu" or "gelu_tanh".
        scale: ``float[M, A]`` per-token weight of each listed row, or None for 1.

    Returns:
        ``float[M, d]`` in ``x``'s dtype, computed in float32; zeros when ``rows`` is empty.
    """
    return default_kernels().run(x, rows, gate, up, down, act=act, scale=scale)


def dense_ffn(
    x: np.ndarray,
    gate: np.ndarray | None,
    up: np.ndarray,
    down: np.ndarray,
    *,
    act: str = "silu",
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """``KERNELS["dense_ffn:tvm"]``: :func:`edgespec.kernels.reference.dense_ffn` compiled, the
    sparse kernel's schedule on all F rows in order (no index list); arguments as
    :func:`sparse_ffn` with ``scale: float[M, F]``."""
    return default_kernels().run(x, None, gate, up, down, act=act, scale=scale)


def sparse_ffn_q8(
    x: np.ndarray,
    rows: np.ndarray,
    gate: np.ndarray | None,
    up: np.ndarray,
    down: np.ndarray,
    *,
    act: str = "silu",
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """``KERNELS["sparse_ffn:tvm-q8"]``: :func:`sparse_ffn` on the weights in GGML's Q8_0
    blocks (lossy): each float weight is quantized once, on first sight, along its rows of
    d (``down`` along ``down_t``'s rows), and the kernel dequantizes each listed row once
    for the chunk's M tokens. About a quarter of the float32 bytes a call (1.0625 bytes a
    weight), so it pays where the weights stream from memory; arguments as
    :func:`sparse_ffn`, d a multiple of 32."""
    return default_kernels("q8_0").run(x, rows, gate, up, down, act=act, scale=scale)


def dense_ffn_q8(
    x: np.ndarray,
    gate: np.ndarray | None,
    up: np.ndarray,
    down: np.ndarray,
    *,
    act: str = "silu",
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """``KERNELS["dense_ffn:tvm-q8"]``: :func:`dense_ffn` on Q8_0 weights, the same-precision
    baseline of :func:`sparse_ffn_q8`."""
    return default_kernels("q8_0").run(x, None, gate, up, down, act=act, scale=scale)


sparse_ffn_q8.lossy = dense_ffn_q8.lossy = True  # type: ignore[attr-defined]
# the form a model may keep its FFN weights in for these kernels (QuantizedWeight)
sparse_ffn_q8.weight_form = dense_ffn_q8.weight_form = "q8_0"  # type: ignore[attr-defined]

#: the registered entry points, for tests that want them side by side
ENTRY_POINTS: dict[str, Callable[..., np.ndarray]] = {
    "sparse": sparse_ffn,
    "dense": dense_ffn,
    "sparse-q8": sparse_ffn_q8,
    "dense-q8": dense_ffn_q8,
}
