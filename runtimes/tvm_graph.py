"""The Relax graph of a llama / qwen2 decoder for the ``tvm`` backend.

One Relax function, ``forward``, scores T new tokens (T is a symbolic shape, so one
compiled library serves prefill, plain decoding and verification) over a KV cache that
lives in two preallocated device tensors ``k_cache, v_cache: float32[L, C, KV, hd]``
(C = the cache capacity, symbolic too). The new keys and values are written into the cache
in place (``call_tir_inplace``) at slots ``P .. P+T-1``, where ``P`` (the number of cached
positions) is passed as a shape argument, and attention reads slots ``0 .. P+T-1``.

Everything that depends on positions is computed by the caller and passed in, so chains and
trees share the graph: ``cos, sin: float32[T, hd/2]`` (rope at each node's position) and
``mask: float32[T, T]`` (0 or -inf among the new tokens: causal for a chain, the ancestor
mask for a tree; every cached slot is visible).

Weights are parameters, not constants: the compiled library depends only on the
architecture's shapes and the weights' formats (:class:`GraphSpec`), so it compiles in
seconds and is shared by every file of one architecture and quantization; the weights are
uploaded once at load.

Each matrix is either float32 (packed by :func:`pack_weight`, multiplied by
:func:`matmul_kernel`) or, in the quantized build, the GGUF file's own blocks
(``GraphSpec.quant`` names its GGUF type; the parameters are the codes, scales and offsets of
:class:`edgespec.kernels.qlinear.PackedQWeight`, multiplied by
:func:`edgespec.kernels.qlinear.qlinear_kernel`).

Parameter order of ``forward``::

    ids int32[T], cos f32[T, hd/2], sin f32[T, hd/2], mask f32[T, T], past Shape[P],
    k_cache f32[L, C, KV, hd], v_cache f32[L, C, KV, hd], *weights (see param_names)

It returns ``logits float32[T, V]`` (``forward``) or ``float32[1, V]`` (``forward_last``,
the LM head on the last row only, for plain decoding). A third function,
``kv_keep(k_cache, v_cache, rows int32[n], base Shape[B])``, moves the cache slots ``rows``
to ``B .. B+n-1`` in place (committing a token tree's accepted path).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: bump when the graph changes in a way its key would not show (compiled libraries rekey)
GRAPH_VERSION = 2
f32 = "float32"


@dataclass(frozen=True)
class GraphSpec:
    """The shapes a compiled library is specialised to.

    Attributes:
        n_layers: L.
        n_embd: model width D.
        n_head: query heads H.
        n_head_kv: key/value heads KV.
        head_dim: hd.
        n_ff: feed-forward width F.
        n_vocab: V.
        rms_eps: RMSNorm epsilon.
        attn_scale: multiplier of q (usually ``hd ** -0.5``).
        qkv_bias: whether the fused QKV projection has a bias (qwen2).
        quant: ``(matrix name, GGUF type)`` of every matrix the graph multiplies on the
            file's own blocks (the quantized build; :mod:`edgespec.kernels.qlinear`);
            the other matrices are float32. Empty: the fp32 build.
    """

    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    rms_eps: float
    attn_scale: float
    qkv_bias: bool
    quant: tuple[tuple[str, str], ...] = ()

    def quant_format(self, name: str) -> str | None:
        """The GGUF type matrix ``name`` is multiplied in, or None (float32)."""
        return dict(self.quant).get(name)

    def param_names(self) -> list[str]:
        """The graph's weight parameters in order: :meth:`weight_names`, each quantized
        matrix replaced by its ``name.c, name.d, ...``
        (:func:`edgespec.kernels.qlinear.operand_names`)."""
        from edgespec.kernels.qlinear import operand_names

        out: list[str] = []
        for name in self.weight_names():
            fmt = self.quant_format(name)
            if fmt is None:
                out.append(name)
            else:
                out += [name + p for p in operand_names(fmt)]
        return out

    def param_shapes(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """``{parameter: (shape, dtype)}`` as the graph takes them (packed matrices)."""
        from edgespec.kernels.qlinear import operand_names, operand_types

        shapes = self.weight_shapes()
        out: dict[str, tuple[tuple[int, ...], str]] = {}
        for p in self.param_names():
            name, dot, part = p.rpartition(".")
            fmt = self.quant_format(name) if dot else None
            if fmt is not None:
                K, N = shapes[name]
                out[p] = operand_types(fmt, K, N)[operand_names(fmt).index("." + part)]
            else:
                out[p] = (packed_shape(p, shapes[p]), f32)
        return out

    def weight_names(self) -> list[str]:
        """The weight parameters of ``forward`` in order (matrices ``[in, out]``: ``x @ W``)."""
        names = ["embed"]
        for i in range(self.n_layers):
            names += [f"l{i}.attn_norm", f"l{i}.wqkv"]
            names += [f"l{i}.bqkv"] if self.qkv_bias else []
            names += [f"l{i}.wo", f"l{i}.ffn_norm", f"l{i}.w_gate_up", f"l{i}.w_down"]
        return names + ["out_norm", "lm_head"]

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """``{name: shape}`` of every weight parameter, matrices as ``(K, N)`` (``x @ W``;
        :func:`pack_weight` turns them into the packed shape the graph takes)."""
        D, F, V = self.n_embd, self.n_ff, self.n_vocab
        nqkv = (self.n_head + 2 * self.n_head_kv) * self.head_dim
        per = {
            "attn_norm": (D,),
            "wqkv": (D, nqkv),
            "bqkv": (nqkv,),
            "wo": (self.n_head * self.head_dim, D),
            "ffn_norm": (D,),
            "w_gate_up": (D, 2 * F),
            "w_down": (F, D),
        }
        out: dict[str, tuple[int, ...]] = {}
        for name in self.weight_names():
            head, _, tail = name.partition(".")
            top = {"embed": (V, D), "out_norm": (D,), "lm_head": (D, V)}
            out[name] = per[tail] if tail else top[head]
        return out


def _kernels(spec: GraphSpec) -> tuple[Any, Any, Any]:
    """The hand-written TIR functions: the in-place cache write, the attention and the
    in-place move of kept tree rows (``kv_keep``).

    Scalars (the layer index, ``P``, the first kept slot) are ``int64`` parameters, passed
    from Relax as ``prim_value`` arguments.
    """
    from tvm.script import tirx as T

    KV, hd = spec.n_head_kv, spec.head_dim
    G = spec.n_head // KV
    H = spec.n_head

    @T.prim_func(private=True, s_tir=True)
    def kv_write(var_cache: T.handle, var_new: T.handle, layer: T.int64, P: T.int64):
        T.func_attr({"tirx.noalias": True})
        L, C, n = T.int64(), T.int64(), T.int64()
        cache = T.match_buffer(var_cache, (L, C, KV, hd), "float32")
        new = T.match_buffer(var_new, (n, KV, hd), "float32")
        for t, h, d in T.grid(n, KV, hd):
            with T.sblock("write"):
                vt, vh, vd = T.axis.remap("SSS", [t, h, d])
                cache[layer, P + vt, vh, vd] = new[vt, vh, vd]

    @T.prim_func(private=True, s_tir=True)
    def attention(
        var_q: T.handle,
        var_kc: T.handle,
        var_vc: T.handle,
        var_mask: T.handle,
        layer: T.int64,
        P: T.int64,
        var_out: T.handle,
    ):
        T.func_attr({"tirx.noalias": True})
        n, L, C = T.int64(), T.int64(), T.int64()
        q = T.match_buffer(var_q, (n, H, hd), "float32")
        kc = T.match_buffer(var_kc, (L, C, KV, hd), "float32")
        vc = T.match_buffer(var_vc, (L, C, KV, hd), "float32")
        mask = T.match_buffer(var_mask, (n, n), "float32")
        out = T.match_buffer(var_out, (n, H, hd), "float32")
        s = T.alloc_buffer((n, H, P + n), "float32")
        kt = T.alloc_buffer((KV, hd, P + n), "float32")
        mx = T.alloc_buffer((n, H), "float32")
        z = T.alloc_buffer((n, H), "float32")
        # the layer's keys transposed, so that the score loop runs over slots innermost
        for g, d, j in T.grid(KV, hd, P + n):
            with T.sblock("keys_t"):
                vg, vd, vj = T.axis.remap("SSS", [g, d, j])
                kt[vg, vd, vj] = kc[layer, vj, vg, vd]
        for t, h, j in T.grid(n, H, P + n):
            with T.sblock("score_init"):
                vt, vh, vj = T.axis.remap("SSS", [t, h, j])
                s[vt, vh, vj] = T.if_then_else(
                    vj >= P, mask[vt, vj - P], T.float32(0), dtype="float32"
                )
        # each score still sums over d in order (bit for bit the same whatever the loop
        # order); slots innermost make the sums independent, so they pipeline and vectorize
        for t, h, d, j in T.grid(n, H, hd, P + n):
            with T.sblock("score"):
                vt, vh, vd, vj = T.axis.remap("SSRS", [t, h, d, j])
                s[vt, vh, vj] = s[vt, vh, vj] + q[vt, vh, vd] * kt[vh // G, vd, vj]
        for t, h, j in T.grid(n, H, P + n):
            with T.sblock("max"):
                vt, vh, vj = T.axis.remap("SSR", [t, h, j])
                with T.init():
                    mx[vt, vh] = T.float32(-math.inf)
                mx[vt, vh] = T.max(mx[vt, vh], s[vt, vh, vj])
        for t, h, j in T.grid(n, H, P + n):
            with T.sblock("exp"):
                vt, vh, vj = T.axis.remap("SSS", [t, h, j])
                s[vt, vh, vj] = T.exp(s[vt, vh, vj] - mx[vt, vh])
        for t, h, j in T.grid(n, H, P + n):
            with T.sblock("sum"):
                vt, vh, vj = T.axis.remap("SSR", [t, h, j])
                with T.init():
                    z[vt, vh] = T.float32(0)
                z[vt, vh] = z[vt, vh] + s[vt, vh, vj]
        for t, h, d in T.grid(n, H, hd):
            with T.sblock("pv_init"):
                vt, vh, vd = T.axis.remap("SSS", [t, h, d])
                out[vt, vh, vd] = T.float32(0)
        # over slots j in order for each output, features innermost (contiguous rows of v)
        for t, h, j, d in T.grid(n, H, P + n, hd):
            with T.sblock("pv"):
                vt, vh, vj, vd = T.axis.remap("SSRS", [t, h, j, d])
                out[vt, vh, vd] = out[vt, vh, vd] + s[vt, vh, vj] * vc[layer, vj, vh // G, vd]
        for t, h, d in T.grid(n, H, hd):
            with T.sblock("norm"):
                vt, vh, vd = T.axis.remap("SSS", [t, h, d])
                out[vt, vh, vd] = out[vt, vh, vd] / z[vt, vh]

    @T.prim_func(private=True, s_tir=True)
    def kv_keep(var_cache: T.handle, var_rows: T.handle, base: T.int64):
        T.func_attr({"tirx.noalias": True})
        L, C, n = T.int64(), T.int64(), T.int64()
        cache = T.match_buffer(var_cache, (L, C, KV, hd), "float32")
        rows = T.match_buffer(var_rows, (n,), "int32")
        # rows ascend and rows[i] >= base + i: in order, no slot is overwritten before read
        for layer, i, h, d in T.grid(L, n, KV, hd):
            with T.sblock("keep"):
                vl, vi, vh, vd = T.axis.remap("SSSS", [layer, i, h, d])
                cache[vl, base + vi, vh, vd] = cache[vl, T.Cast("int64", rows[vi]), vh, vd]

    return kv_write, attention, kv_keep


#: output features per vectorized tile of :func:`matmul_kernel` (falls back to 16, then 1)
MATMUL_TILE = 64


def matmul_tile(N: int) -> int:
    """Output features per tile of :func:`matmul_kernel` for ``N`` outputs."""
    return next(f for f in (MATMUL_TILE, 16, 1) if N % f == 0)


def pack_weight(w: Any) -> Any:
    """``float32[K, N]`` (``x @ w``) -> the tiled layout ``[N / tile, K, tile]`` that
    :func:`matmul_kernel` streams contiguously (a NumPy array in, a NumPy array out)."""
    K, N = w.shape
    tile = matmul_tile(N)
    return w.reshape(K, N // tile, tile).transpose(1, 0, 2).copy()


def matmul_kernel(K: int, N: int) -> Any:
    """``y f32[T, N] = x f32[T, K] @ W`` for a symbolic T, scheduled for CPUs, with ``W``
    packed by :func:`pack_weight` (``w[j // tile, k, j % tile] = W[k, j]``).

    Loops: output tiles (parallel), the reduction over K in order, rows, and the tile's
    features innermost (vectorized). Each tile of ``w`` is one contiguous stream read once
    for all T rows, and each row's sums run in the same order whatever T is (batched and
    one-token forwards agree bit for bit).
    """
    from tvm import s_tir, te, tirx

    tile = matmul_tile(N)
    n = tirx.Var("T", "int64")
    x = te.placeholder((n, K), "float32", name="x")
    w = te.placeholder((N // tile, K, tile), "float32", name="w")
    k = te.reduce_axis((0, K), name="k")
    y = te.compute(
        (n, N), lambda t, j: te.sum(x[t, k] * w[j // tile, k, j % tile], axis=k), name="y"
    )
    sch = s_tir.Schedule(te.create_prim_func([x, w, y]))
    block = sch.get_sblock("y")
    t, j, kk = sch.get_loops(block)
    jo, ji = sch.split(j, factors=[None, tile])
    sch.reorder(jo, kk, t, ji)
    sch.parallel(jo)
    sch.vectorize(ji)
    sch.decompose_reduction(block, kk)
    return sch.mod["main"].with_attr("tirx.noalias", True).without_attr("global_symbol")


def is_packed(name: str, shape: tuple[int, ...]) -> bool:
    """Whether the graph takes weight ``name`` packed by :func:`pack_weight`: every matrix
    but the embedding (whose rows are gathered)."""
    return len(shape) == 2 and name != "embed"


def packed_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape weight ``name`` of ``shape`` has in the graph (see :func:`is_packed`)."""
    if not is_packed(name, shape):
        return shape
    K, N = shape
    return (N // matmul_tile(N), K, matmul_tile(N))


def build_module(spec: GraphSpec) -> Any:
    """The ``tvm.IRModule`` with ``forward`` and ``forward_last`` (see the module docstring)."""
    from tvm import relax, tirx

    R = relax.op
    KV, hd, H = spec.n_head_kv, spec.head_dim, spec.n_head
    half = hd // 2
    n = tirx.Var("T", "int64")
    P = tirx.Var("P", "int64")
    C = tirx.Var("C", "int64")
    L = spec.n_layers

    bb = relax.BlockBuilder()
    kv_write, attention, kv_keep = _kernels(spec)
    g_write = bb.add_func(kv_write, "kv_write")
    g_attn = bb.add_func(attention, "attention")
    g_keep = bb.add_func(kv_keep, "kv_keep")
    matmuls: dict[tuple[str, int, int], Any] = {}
    w: dict[str, Any] = {}  # this function's weight parameters, by name

    shapes = spec.weight_shapes()

    def linear(x: Any, name: str, bias: Any = None, rows: Any = n) -> Any:
        """``x [rows, K] @ W[name] [K, N] (+ bias)`` through :func:`matmul_kernel`, or
        :func:`~edgespec.kernels.qlinear.qlinear_kernel` for a quantized matrix."""
        from edgespec.kernels.qlinear import qlinear_kernel

        K, N = shapes[name]
        fmt = spec.quant_format(name)
        key = (fmt or "f32", K, N)
        if key not in matmuls:
            func = matmul_kernel(K, N) if fmt is None else qlinear_kernel(fmt, K, N)
            matmuls[key] = bb.add_func(func, f"matmul_{key[0].replace('@', '_')}_{K}x{N}")
        ops = [w[name]] if fmt is None else [w[p] for p in w if p.rpartition(".")[0] == name]
        out = relax.call_tir(matmuls[key], [x, *ops], relax.TensorType((rows, N), f32))
        return out if bias is None else R.add(bb.emit(out), bias)

    def tensor(name: str, shape: Any, dtype: str = f32) -> relax.Var:
        return relax.Var(name, relax.TensorType(shape, dtype))

    def rms(x: Any, w: Any) -> Any:
        ms = R.mean(R.multiply(x, x), axis=[-1], keepdims=True)
        inv = R.rsqrt(R.add(ms, relax.const(spec.rms_eps, f32)))
        return R.multiply(R.multiply(x, inv), w)

    def rope(x: Any, cos: Any, sin: Any) -> Any:
        x1 = R.strided_slice(x, axes=[2], begin=[0], end=[half])
        x2 = R.strided_slice(x, axes=[2], begin=[half], end=[hd])
        return R.concat(
            [
                R.subtract(R.multiply(x1, cos), R.multiply(x2, sin)),
                R.add(R.multiply(x2, cos), R.multiply(x1, sin)),
            ],
            axis=2,
        )

    for fname, last in (("forward", False), ("forward_last", True)):
        ids = tensor("ids", (n,), "int32")
        cos_in, sin_in = tensor("cos", (n, half)), tensor("sin", (n, half))
        mask = tensor("mask", (n, n))
        past = relax.Var("past", relax.ShapeType([P]))
        kc = tensor("k_cache", (L, C, KV, hd))
        vc = tensor("v_cache", (L, C, KV, hd))
        cache_ty = relax.TensorType((L, C, KV, hd), f32)
        w.clear()
        w |= {
            name: tensor(name.replace(".", "_"), shape, dtype)
            for name, (shape, dtype) in spec.param_shapes().items()
        }
        params = [ids, cos_in, sin_in, mask, past, kc, vc, *w.values()]
        with bb.function(fname, params):
            with bb.dataflow():
                cos = bb.emit(R.reshape(cos_in, (n, 1, half)))
                sin = bb.emit(R.reshape(sin_in, (n, 1, half)))
                x = bb.emit(R.take(w["embed"], ids, axis=0, mode="clip"))
                k_cache, v_cache = kc, vc
                for i in range(L):
                    h = bb.emit(rms(x, w[f"l{i}.attn_norm"]))
                    qkv = linear(h, f"l{i}.wqkv", w.get(f"l{i}.bqkv"))
                    qkv = bb.emit(qkv)
                    q = R.strided_slice(qkv, axes=[1], begin=[0], end=[H * hd])
                    k = R.strided_slice(qkv, axes=[1], begin=[H * hd], end=[(H + KV) * hd])
                    v = R.strided_slice(
                        qkv, axes=[1], begin=[(H + KV) * hd], end=[(H + 2 * KV) * hd]
                    )
                    q = bb.emit(
                        R.multiply(
                            rope(R.reshape(q, (n, H, hd)), cos, sin),
                            relax.const(spec.attn_scale, f32),
                        )
                    )
                    k = bb.emit(rope(R.reshape(k, (n, KV, hd)), cos, sin))
                    v = bb.emit(R.reshape(v, (n, KV, hd)))
                    scalars = [relax.prim_value(tirx.IntImm("int64", i)), relax.prim_value(P)]
                    k_cache = bb.emit(
                        relax.call_tir_inplace(g_write, [k_cache, k, *scalars], [0], cache_ty)
                    )
                    v_cache = bb.emit(
                        relax.call_tir_inplace(g_write, [v_cache, v, *scalars], [0], cache_ty)
                    )
                    o = bb.emit(
                        relax.call_tir(
                            g_attn,
                            [q, k_cache, v_cache, mask, *scalars],
                            relax.TensorType((n, H, hd), f32),
                        )
                    )
                    o = linear(bb.emit(R.reshape(o, (n, H * hd))), f"l{i}.wo")
                    x = bb.emit(R.add(x, o))
                    h = bb.emit(rms(x, w[f"l{i}.ffn_norm"]))
                    gu = bb.emit(linear(h, f"l{i}.w_gate_up"))
                    gate = R.strided_slice(gu, axes=[1], begin=[0], end=[spec.n_ff])
                    up = R.strided_slice(gu, axes=[1], begin=[spec.n_ff], end=[2 * spec.n_ff])
                    a = bb.emit(R.multiply(R.nn.silu(gate), up))
                    x = bb.emit(R.add(x, bb.emit(linear(a, f"l{i}.w_down"))))
                if last:
                    x = bb.emit(R.strided_slice(x, axes=[0], begin=[n - 1], end=[n]))
                h = bb.emit(rms(x, w["out_norm"]))
                logits = bb.emit_output(linear(h, "lm_head", rows=1 if last else n))
            bb.emit_func_output(logits)

    # kv_keep(k_cache, v_cache, rows int32[n], base Shape[B]): slots rows -> B .. B+n-1
    kc, vc = tensor("k_cache", (L, C, KV, hd)), tensor("v_cache", (L, C, KV, hd))
    rows = tensor("rows", (n,), "int32")
    B = tirx.Var("B", "int64")
    base = relax.Var("base", relax.ShapeType([B]))
    cache_ty = relax.TensorType((L, C, KV, hd), f32)
    with bb.function("kv_keep", [kc, vc, rows, base]):
        k2 = bb.emit(relax.call_tir_inplace(g_keep, [kc, rows, relax.prim_value(B)], [0], cache_ty))
        v2 = bb.emit(relax.call_tir_inplace(g_keep, [vc, rows, relax.prim_value(B)], [0], cache_ty))
        bb.emit_func_output(relax.Tuple([k2, v2]))
    return bb.get()
