"""The Relax graph of a llama / qwen2 decoder for the ``tvm`` backend.

One Relax function, ``forward``, scores T new tokens (T is a symbolic shape, so one
compiled library serves prefill, plain decoding and verification) over a KV cache that
lives in two preallocated device tensors ``k_cache: float32[L, KV, C/16, hd, 16]`` (keys in
blocks of 16 slots, each block hd rows of 16 slots, as the attention's score loop reads them:
:data:`KEY_BLOCK`) and ``v_cache: float32[L, C, KV, hd]`` (C = the cache capacity, symbolic
too, a multiple of 16; float16 instead with ``GraphSpec.kv_dtype``, ``--kv-cache f16``). The
new keys and values are written into the cache
in place (``call_tir_inplace``) at slots ``P .. P+T-1``, where ``P`` (the number of cached
positions) is passed as a shape argument, and attention reads slots ``0 .. P+T-1``.

Every op but the residual adds is a hand-written kernel
(:func:`_kernels`): per layer RMSNorm, the QKV matmul, rope + cache write, attention, the
output matmul, residual add, RMSNorm, the gate/up matmul, SiLU * up, the down matmul,
residual add (11 kernel calls a layer; the Relax ops they replace were about 50 unscheduled
kernels, each its own VM call and output allocation).

The caller gathers the new tokens' embedding rows (``x: float32[T, D]``, from the table as the
file stores it: :class:`edgespec.runtimes.embed_rows.EmbeddingRows`), so the table is not a
device weight. Everything that depends on positions is computed by the caller and passed in,
so chains and trees share the graph: ``cos, sin: float32[T, hd/2]`` (rope at each node's
position) and ``mask: float32[T, T]`` (0 or -inf among the new tokens: causal for a chain,
the ancestor mask for a tree; every cached slot is visible).

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

    x f32[T, D], cos f32[T, hd/2], sin f32[T, hd/2], mask f32[T, T], past Shape[P],
    k_cache f32[L, KV, C/16, hd, 16], v_cache f32[L, C, KV, hd], *weights (see param_names)

It returns ``logits float32[T, V]`` (``forward``) or ``float32[1, V]`` (``forward_last``,
the LM head on the last row only, for plain decoding). A third function,
``kv_keep(k_cache, v_cache, rows int32[n], base Shape[B])``, moves the cache slots ``rows``
to ``B .. B+n-1`` in place (committing a token tree's accepted path).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from edgespec.kernels.compiled import BuildChoice, stack_buffer

#: slots a block of the key cache holds (``k_cache[L, KV, C / KEY_BLOCK, hd, KEY_BLOCK]``:
#: a block's keys as hd rows of KEY_BLOCK slots, what one vector of the score loop reads)
KEY_BLOCK = 16
#: visible slots from which the attention of a forward of at most LONG_ROWS tokens (a step,
#: a verify chunk or a tree) runs by parts of the slots and of the head dimension, on every
#: core, each part's keys and values loaded once for all its rows (below it: one task a row
#: and a few heads, serially for one token, where a few tasks of microseconds do not pay
#: for waking the pool); the same sums in the same order either way
LONG_SLOTS = 256
LONG_ROWS = 16
#: how the attention's tasks keep their sums in registers, by the CPU's vector registers
#: (name -> the CPU flag it is for; "" any): "512" (AVX-512, 32 registers of 16 floats) HB x
#: U score vectors (U = 12 // HB, at most 4) and all HB x hd value sums in flight; "256"
#: (AVX2, 16 registers of 8 floats) one score vector a head and the value sums in parts of
#: 16 head dimensions (a slot's weights read again for each part). With the "512" plan on a
#: Zen 3 core (AVX2), whose sums did not fit its registers, SmolLM2's attention took 3.6-5.3
#: ms of a one-thread 9-token forward, 2.3-2.5 with "256" (``benchmarks/tvm_profile.py
#: --against``, docs/tvm.md "A real AVX2 core"). The same sums in the same order either way
ATTENTION_PLANS = {"512": "avx512f", "256": ""}


def _plan_for_cpu() -> str:
    from edgespec.kernels.tuning import cpu_flags

    flags = cpu_flags()
    return next(k for k, flag in ATTENTION_PLANS.items() if not flag or flag in flags)


#: the attention plan graphs built now use: the CPU's, unless a ``building_with(name)``
#: block overrides it (tests build both: the logits are the same bit for bit)
ATTENTION_PLAN = BuildChoice("attention register plan", ATTENTION_PLANS, _plan_for_cpu)

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
        n_out: outputs of ``lm_head`` when it is a draft's frequent-token head
            (:mod:`edgespec.draft_head`, fewer than V); 0: V. Shown in the repr (and so in
            the library's key) only when set.
        kv_dtype: the KV cache's element type, "float32" or "float16" (``--kv-cache f16``:
            keys and values rounded to float16 when written, read back as float32; half the
            bytes the attention reads). Shown in the repr only when not float32.
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
    n_out: int = field(default=0, repr=False)
    kv_dtype: str = field(default=f32, repr=False)

    def __repr__(self) -> str:
        base = "GraphSpec(" + ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr
        )
        base += f", n_out={self.n_out}" if self.n_out else ""
        return base + (f", kv_dtype={self.kv_dtype!r})" if self.kv_dtype != f32 else ")")

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
        names: list[str] = []
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
            top = {"out_norm": (D,), "lm_head": (D, self.n_out or V)}
            out[name] = per[tail] if tail else top[head]
        return out


def _kernels(spec: GraphSpec) -> dict[str, Any]:
    """The hand-written TIR functions by name: the attention, the in-place move of kept tree
    rows (``kv_keep``) and the per-layer elementwise kernels (:func:`_fused`).

    Scalars (the layer index, ``P``, the first kept slot) are ``int64`` parameters, passed
    from Relax as ``prim_value`` arguments.

    ``attention(q f32[T, H, hd], k_cache, v_cache, mask f32[T, T], layer, P) -> f32[T, H, hd]``
    reads the keys in their cache layout ``[L, KV, C/16, hd, 16]`` (a vector of the score
    loop is one row of a block) and the values in ``[L, C, KV, hd]``. One task computes the
    scores, softmax and weighted values of one row and ``HB`` heads of one KV group (the
    group's keys and values loaded once for them, and ``HB x U`` score vectors or ``HB x hd``
    value sums in flight, independent chains of fused multiply-adds, as many as the CPU's
    vector registers hold: :data:`ATTENTION_PLANS`); tasks run in parallel
    when T > 1 (serially at T = 1: a few tasks of microseconds do not pay for waking the
    pool). From :data:`LONG_SLOTS` visible slots on, a forward of at most :data:`LONG_ROWS`
    rows runs by parts instead (``long_scores``, ``long_exp``, ``long_values``: parts of the
    slots, then of the head dimension, in parallel, each part's keys and values loaded once
    for all rows), computing the same sums. Every sum runs in the order of the former
    one-(row, head)-a-task kernel (each
    slot's score over the head dimension in order, starting from its mask value; softmax and
    values over the slots in order), so the logits are bit for bit what they were. The
    softmax's ``exp`` is :func:`edgespec.kernels.expf.expf` on vectors of 16 slots (glibc's
    ``expf`` bit for bit, without a libm call per value). The score loop reads whole vectors
    of slots, up to 15 past ``P + T``: the capacity ``C`` must be a multiple of 16 (the
    backend allocates it so); the spare lanes are never summed.
    """
    from tvm.script import tirx as T

    from edgespec.kernels import expf

    KV, hd = spec.n_head_kv, spec.head_dim
    G = spec.n_head // KV
    H = spec.n_head
    fill = expf.table_filler()
    KVT = spec.kv_dtype

    def cached(x: Any, lanes_: int) -> Any:
        """A load from the cache as float32 (the float32 cache's loads as they are)."""
        return x if KVT == f32 else T.Cast(f"float32x{lanes_}" if lanes_ > 1 else f32, x)

    #: slots per vector in the score loop: a key block (every lane sums the same way)
    VEC = KEY_BLOCK
    #: heads a task (of one KV group), and slot vectors a pass of its score loop
    HB = next(b for b in (4, 3, 2, 1) if G % b == 0)
    wide = ATTENTION_PLAN.current() == "512"
    U = max(1, min(4, 12 // HB)) if wide else 1
    #: parts of the head dimension a short forward's task sums the values by (ATTENTION_PLANS)
    VP = 1 if wide or hd % VEC else hd // VEC
    NB = G // HB  # tasks per (row, KV group)
    #: from this many visible slots on, a one-row forward's attention runs on every core, in
    #: three parallel passes (scores and each part's largest, the exps, the values by parts
    #: of the head dimension) that compute exactly what ``attend`` does
    LONG = LONG_SLOTS
    CHV = 16  # slot vectors a score or exp task covers
    DP = 2 if hd % (2 * VEC) == 0 else 1  # parts of the head dimension in the values pass
    DW = hd // DP

    def parts(m: Any) -> Any:
        """Score tasks per (KV group, head block) over ``m`` visible slots."""
        return ((m + VEC - 1) // VEC + CHV - 1) // CHV

    def lanes(k: Any, width: int = VEC) -> Any:
        return _span(k * width, width)

    @T.macro
    def scores(
        acc: Any, q: Any, kc: Any, mask: Any, s: Any, layer: Any, P: Any, hs: Any, jv: Any, nu: int
    ) -> None:
        # heads hs = (t, g, h0), slot vectors jv .. jv+nu-1: each slot's sum starts at its
        # mask value (0 for cached slots) and adds q[d] * k[d] for d ascending
        for i, u in T.grid(HB, nu):
            acc[lanes(i * U + u)] = T.Broadcast(T.float32(0), VEC)
            if (jv + u + 1) * VEC > P:  # a vector with new slots: their mask values
                for e in range(VEC):
                    if (jv + u) * VEC + e >= P and (jv + u) * VEC + e < P + q.shape[0]:
                        acc[(i * U + u) * VEC + e] = mask[hs[0], (jv + u) * VEC + e - P]
        for d in range(hd):
            for i in T.unroll(HB):
                for u in T.unroll(nu):
                    acc[lanes(i * U + u)] = acc[lanes(i * U + u)] + T.Broadcast(
                        q[hs[0], hs[2] + i, d], VEC
                    ) * cached(kc[layer, hs[1], jv + u, d, lanes(0)], VEC)
        for i in T.unroll(HB):
            for u in T.unroll(nu):
                s[hs[0] * H + hs[2] + i, lanes(jv + u)] = acc[lanes(i * U + u)]

    @T.macro
    def score_range(
        acc: Any, q: Any, kc: Any, mask: Any, s: Any, layer: Any, P: Any, hs: Any, v0: Any, nw: Any
    ) -> None:
        # heads hs = (t, g, h0), slot vectors v0 .. v0 + nw - 1: U vectors a pass, then the rest
        for jb in range(nw // U):
            scores(acc, q, kc, mask, s, layer, P, hs, v0 + jb * U, U)
        for jv in range(v0 + nw // U * U, v0 + nw):
            scores(acc, q, kc, mask, s, layer, P, hs, jv, 1)

    @T.macro
    def head_max(
        s: Any, hs: Any, v0: Any, nw: Any, m: Any, dst: Any, base: Any, stride: Any
    ) -> None:
        # heads hs = (t, g, h0): each head i's largest score over slot vectors v0 .. v0 + nw
        # - 1 into dst[base + i * stride], a vector at a time (a maximum does not depend on
        # the order; lanes at or past the m visible slots count as -inf)
        mv = stack_buffer((HB * VEC,), "float32")
        for i in T.unroll(HB):
            mv[lanes(i)] = T.Broadcast(T.float32(-math.inf), VEC)
        for jv in range(v0, v0 + nw):
            for i in T.unroll(HB):
                mv[lanes(i)] = T.max(
                    mv[lanes(i)],
                    T.Select(
                        lanes(jv) < T.Broadcast(m, VEC),
                        s[hs[0] * H + hs[2] + i, lanes(jv)],
                        T.Broadcast(T.float32(-math.inf), VEC),
                    ),
                )
        for i in T.unroll(HB):
            dst[base + i * stride] = T.float32(-math.inf)
            for e in range(VEC):
                dst[base + i * stride] = T.max(dst[base + i * stride], mv[i * VEC + e])

    @T.macro
    def weigh(s: Any, vc: Any, out: Any, layer: Any, m: Any, hs: Any, d0: Any, width: int) -> None:
        # heads hs = (t, g, h0): the weighted values of head dims d0 .. d0 + width - 1 and the
        # softmax's sums, slots in order (the sums' chains of adds run beside the values'
        # multiply-adds; each lane's sum is the same whatever part of the head it is in)
        o = stack_buffer((HB * width,), "float32")
        z = stack_buffer((HB,), "float32")
        for i in T.unroll(HB):
            z[i] = T.float32(0)
            o[lanes(i, width)] = T.Broadcast(T.float32(0), width)
        for j in range(m):
            for i in T.unroll(HB):
                z[i] = z[i] + s[hs[0] * H + hs[2] + i, j]
                o[lanes(i, width)] = o[lanes(i, width)] + T.Broadcast(
                    s[hs[0] * H + hs[2] + i, j], width
                ) * cached(vc[layer, j, hs[1], _span(d0, width)], width)
        for i in T.unroll(HB):
            out[hs[0], hs[2] + i, _span(d0, width)] = o[lanes(i, width)] / T.Broadcast(z[i], width)

    @T.macro
    def attend(
        task: Any, q: Any, kc: Any, vc: Any, mask: Any, s: Any, out: Any, layer: Any, P: Any
    ) -> None:
        # task = (t * KV + g) * NB + b: row t, heads h0 = g * G + b * HB .. h0 + HB - 1
        m = P + q.shape[0]  # visible slots
        nv = (m + VEC - 1) // VEC  # slot vectors
        t = task // (KV * NB)
        g = task // NB % KV
        h0 = g * G + task % NB * HB
        acc = stack_buffer((HB * U * VEC,), "float32")
        score_range(acc, q, kc, mask, s, layer, P, (t, g, h0), 0, nv)
        mx = stack_buffer((HB,), "float32")
        head_max(s, (t, g, h0), 0, nv, m, mx, 0, 1)
        # exp on whole vectors (s has room for the last one's spare lanes, never summed)
        tab = stack_buffer((expf.N,), "uint64")
        fill(tab)
        for i, jv in T.grid(HB, nv):
            s[t * H + h0 + i, lanes(jv)] = expf.expf(
                s[t * H + h0 + i, lanes(jv)] - T.Broadcast(mx[i], VEC), tab, VEC
            )
        for p in range(VP):
            weigh(s, vc, out, layer, m, (t, g, h0), p * (hd // VP), hd // VP)

    @T.macro
    def long_scores(
        task: Any, nch: Any, q: Any, kc: Any, mask: Any, s: Any, pm: Any, layer: Any, P: Any
    ) -> None:
        # task = (g * NB + b) * nch + c: for every row, the scores of HB heads over slot
        # vectors c * CHV .. (c + 1) * CHV - 1 (as attend computes them; the rows after the
        # first find these keys in the cache), and each head's largest score there, into pm
        n = q.shape[0]
        nv = (P + n + VEC - 1) // VEC
        gb = task // nch
        c = task % nch
        g = gb // NB
        h0 = g * G + gb % NB * HB
        v0 = c * CHV
        nw = T.min(v0 + CHV, nv) - v0
        acc = stack_buffer((HB * U * VEC,), "float32")
        for t in range(n):
            score_range(acc, q, kc, mask, s, layer, P, (t, g, h0), v0, nw)
            head_max(s, (t, g, h0), v0, nw, P + n, pm, (t * KV * NB + gb) * HB * nch + c, nch)

    @T.macro
    def long_exp(task: Any, nch: Any, n: Any, s: Any, pm: Any, P: Any) -> None:
        # task = (g * NB + b) * nch + c: for every row, the softmax numerators of slot vectors
        # c * CHV .., each head's largest score taken over every part's (a maximum in any
        # order)
        nv = (P + n + VEC - 1) // VEC
        gb = task // nch
        c = task % nch
        h0 = gb // NB * G + gb % NB * HB
        mx = stack_buffer((HB,), "float32")
        tab = stack_buffer((expf.N,), "uint64")
        fill(tab)
        for t in range(n):
            for i in T.unroll(HB):
                mx[i] = T.float32(-math.inf)
                for cc in range(nch):
                    mx[i] = T.max(mx[i], pm[((t * KV * NB + gb) * HB + i) * nch + cc])
            for i, jv in T.grid(HB, T.min(c * CHV + CHV, nv) - c * CHV):
                s[t * H + h0 + i, lanes(c * CHV + jv)] = expf.expf(
                    s[t * H + h0 + i, lanes(c * CHV + jv)] - T.Broadcast(mx[i], VEC), tab, VEC
                )

    @T.macro
    def long_values(task: Any, n: Any, vc: Any, s: Any, out: Any, layer: Any, P: Any) -> None:
        # task = (g * NB + b) * DP + p: for every row, head dims p * hd / DP .. of HB heads'
        # weighted values, slots in order (each lane's sum as attend's), and the softmax's sums
        m = P + n
        gb = task // DP
        g = gb // NB
        h0 = g * G + gb % NB * HB
        d0 = task % DP * DW
        for t in range(n):
            weigh(s, vc, out, layer, m, (t, g, h0), d0, DW)

    @T.prim_func(private=True)
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
        n, L, C, CB = T.int64(), T.int64(), T.int64(), T.int64()
        q = T.match_buffer(var_q, (n, H, hd), "float32")
        kc = T.match_buffer(var_kc, (L, KV, CB, hd, KEY_BLOCK), KVT)
        vc = T.match_buffer(var_vc, (L, C, KV, hd), KVT)
        mask = T.match_buffer(var_mask, (n, n), "float32")
        out = T.match_buffer(var_out, (n, H, hd), "float32")
        s = T.alloc_buffer((n * H, (P + n + VEC - 1) // VEC * VEC), "float32")
        if n > LONG_ROWS or (n > 1 and P + n < LONG):
            for task in T.parallel(n * KV * NB):
                attend(task, q, kc, vc, mask, s, out, layer, P)
        elif P + n < LONG:
            for task in range(KV * NB):
                attend(task, q, kc, vc, mask, s, out, layer, P)
        else:
            pm = T.alloc_buffer((n * KV * NB * HB * parts(P + n),), "float32")
            for task in T.parallel(KV * NB * parts(P + n)):
                long_scores(task, parts(P + n), q, kc, mask, s, pm, layer, P)
            for task in T.parallel(KV * NB * parts(P + n)):
                long_exp(task, parts(P + n), n, s, pm, P)
            for task in T.parallel(KV * NB * DP):
                long_values(task, n, vc, s, out, layer, P)

    @T.prim_func(private=True, s_tir=True)
    def kv_keep_keys(var_cache: T.handle, var_rows: T.handle, base: T.int64):
        T.func_attr({"tirx.noalias": True})
        L, CB, n = T.int64(), T.int64(), T.int64()
        cache = T.match_buffer(var_cache, (L, KV, CB, hd, KEY_BLOCK), KVT)
        rows = T.match_buffer(var_rows, (n,), "int32")
        # as kv_keep, in the keys' layout (blocks of VEC slots, slots innermost)
        for layer, h, i, d in T.grid(L, KV, n, hd):
            with T.sblock("keep"):
                vl, vh, vi, vd = T.axis.remap("SSSS", [layer, h, i, d])
                cache[vl, vh, (base + vi) // KEY_BLOCK, vd, (base + vi) % KEY_BLOCK] = cache[
                    vl,
                    vh,
                    T.Cast("int64", rows[vi]) // KEY_BLOCK,
                    vd,
                    T.Cast("int64", rows[vi]) % KEY_BLOCK,
                ]

    @T.prim_func(private=True, s_tir=True)
    def kv_keep(var_cache: T.handle, var_rows: T.handle, base: T.int64):
        T.func_attr({"tirx.noalias": True})
        L, C, n = T.int64(), T.int64(), T.int64()
        cache = T.match_buffer(var_cache, (L, C, KV, hd), KVT)
        rows = T.match_buffer(var_rows, (n,), "int32")
        # rows ascend and rows[i] >= base + i: in order, no slot is overwritten before read
        for layer, i, h, d in T.grid(L, n, KV, hd):
            with T.sblock("keep"):
                vl, vi, vh, vd = T.axis.remap("SSSS", [layer, i, h, d])
                cache[vl, base + vi, vh, vd] = cache[vl, T.Cast("int64", rows[vi]), vh, vd]

    return {
        "attention": attention,
        "kv_keep": kv_keep,
        "kv_keep_keys": kv_keep_keys,
        **_fused(spec),
    }


def _span(start: Any, lanes: int) -> Any:
    """The index of ``lanes`` consecutive elements from ``start`` (``start`` itself for one)."""
    from tvm.script import tirx as T

    return T.ramp(start, 1, lanes) if lanes > 1 else start


#: rows :func:`_fused`'s ``rms_norm`` sums at a time (their chains of adds interleaved)
RMS_ROWS = 4


def _fence(x: Any) -> Any:
    """``x`` behind ``llvm.arithmetic.fence``: TVM's LLVM contracts a product into a following
    add or subtract (one FMA); the fence keeps the product rounded, as it was when each Relax
    op was its own kernel (the fused kernels below compute bit for bit what those did)."""
    from tvm.script import tirx as T

    return T.call_llvm_pure_intrin("float32", "llvm.arithmetic.fence", x)


def _fused(spec: GraphSpec) -> dict[str, Any]:
    """The per-layer elementwise work as three hand-written kernels (instead of the ~40 Relax
    ops, each its own unscheduled kernel and VM call, that ``LegalizeOps`` made of it):

    - ``rms_norm(x f32[T, D], w f32[D]) -> f32[T, D]``: ``x * rsqrt(mean(x*x) + eps) * w``;
    - ``rope_append(k_cache, v_cache, qkv f32[T, (H+2KV) hd], cos, sin f32[T, hd/2], layer,
      P) -> (k_cache, v_cache, q f32[T, H, hd])``: the queries rotated and scaled, the keys
      rotated and the values written into the caches' slots ``P ..`` in place (the first two
      outputs are the caches: ``call_tir_inplace``);
    - ``silu_mul(gu f32[T, 2F]) -> f32[T, F]``: ``silu(gate) * up``.

    Each computes the same operations in the same order as the Relax ops did (products fenced,
    :func:`_fence`), so the logits are bit for bit the same; rows are independent (a row
    gives the same result whatever T is). ``silu_mul`` (one ``exp`` a feature, kernels/expf.py's)
    runs its rows x 256-feature chunks in parallel when T > 1; the others are a few
    microseconds and stay serial.
    """
    from tvm.script import tirx as T

    from edgespec.kernels import expf

    D, F, hd, H, KV = spec.n_embd, spec.n_ff, spec.head_dim, spec.n_head, spec.n_head_kv
    half, nqkv = hd // 2, (spec.n_head + 2 * spec.n_head_kv) * hd
    eps, scale = spec.rms_eps, spec.attn_scale
    chunk = next(c for c in (256, 128, 64, 1) if F % c == 0)
    KVT = spec.kv_dtype

    def stored(x: Any) -> Any:
        """A float32 value as the cache holds it (rounded to nearest for float16)."""
        return x if KVT == f32 else T.Cast(KVT, x)

    VEC = 16 if chunk > 1 else 1  # features a vector in silu_mul
    fill = expf.table_filler()
    one = T.Broadcast(T.float32(1), VEC) if VEC > 1 else T.float32(1)

    @T.prim_func(private=True)
    def rms_norm(var_x: T.handle, var_w: T.handle, var_y: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        x = T.match_buffer(var_x, (n, D), "float32")
        w = T.match_buffer(var_w, (D,), "float32")
        y = T.match_buffer(var_y, (n, D), "float32")
        # RMS_ROWS rows at a time, features outer and rows inner: each row's sum in feature
        # order, the rows' chains interleaved, in registers (stack_buffer: a workspace buffer
        # made every add a store and a reload); past the last row the block repeats it (the
        # same values, written again)
        for tb in range((n + RMS_ROWS - 1) // RMS_ROWS):
            ss = stack_buffer((RMS_ROWS,), "float32")
            for r in T.unroll(RMS_ROWS):
                ss[r] = T.float32(0)
            for k in range(D):
                for r in T.unroll(RMS_ROWS):
                    row: T.let = T.min(tb * RMS_ROWS + r, n - 1)
                    ss[r] = ss[r] + _fence(x[row, k] * x[row, k])
            for r in T.unroll(RMS_ROWS):
                t: T.let = T.min(tb * RMS_ROWS + r, n - 1)
                inv: T.let = T.rsqrt(ss[r] / T.float32(D) + T.float32(eps))
                for k in T.vectorized(D):
                    y[t, k] = x[t, k] * inv * w[k]

    @T.prim_func(private=True)
    def rope_append(
        var_kc: T.handle,
        var_vc: T.handle,
        var_qkv: T.handle,
        var_cos: T.handle,
        var_sin: T.handle,
        layer: T.int64,
        P: T.int64,
        var_q: T.handle,
    ):
        T.func_attr({"tirx.noalias": True})
        n, L, C, CB = T.int64(), T.int64(), T.int64(), T.int64()
        kc = T.match_buffer(var_kc, (L, KV, CB, hd, KEY_BLOCK), KVT)
        vc = T.match_buffer(var_vc, (L, C, KV, hd), KVT)
        qkv = T.match_buffer(var_qkv, (n, nqkv), "float32")
        cos = T.match_buffer(var_cos, (n, half), "float32")
        sin = T.match_buffer(var_sin, (n, half), "float32")
        q = T.match_buffer(var_q, (n, H, hd), "float32")
        for t, h in T.grid(n, H):
            for i in T.vectorized(half):
                q[t, h, i] = (
                    _fence(qkv[t, h * hd + i] * cos[t, i])
                    - _fence(qkv[t, h * hd + half + i] * sin[t, i])
                ) * T.float32(scale)
                q[t, h, half + i] = (
                    _fence(qkv[t, h * hd + half + i] * cos[t, i])
                    + _fence(qkv[t, h * hd + i] * sin[t, i])
                ) * T.float32(scale)
        for t, g in T.grid(n, KV):
            for i in T.vectorized(half):
                kc[layer, g, (P + t) // KEY_BLOCK, i, (P + t) % KEY_BLOCK] = stored(
                    _fence(qkv[t, (H + g) * hd + i] * cos[t, i])
                    - _fence(qkv[t, (H + g) * hd + half + i] * sin[t, i])
                )
                kc[layer, g, (P + t) // KEY_BLOCK, half + i, (P + t) % KEY_BLOCK] = stored(
                    _fence(qkv[t, (H + g) * hd + half + i] * cos[t, i])
                    + _fence(qkv[t, (H + g) * hd + i] * sin[t, i])
                )
            for d in T.vectorized(hd):
                vc[layer, P + t, g, d] = stored(qkv[t, (H + KV + g) * hd + d])

    def cols(tc: Any, i: Any, off: int) -> Any:
        # chunk tc = t * (F / chunk) + c: vector i of its gate (off 0) or up (off F) features
        return _span(off + tc % (F // chunk) * chunk + i * VEC, VEC)

    @T.macro
    def silu_chunk(gu: Any, a: Any, tc: Any) -> None:
        # g * sigmoid(g) * up, sigmoid as TVM lowers it, 1 / (1 + exp(-g)), with
        # kernels/expf.py's exp; VEC features at a time
        tab = stack_buffer((expf.N,), "uint64")
        fill(tab)
        for i in range(chunk // VEC):
            a[tc // (F // chunk), cols(tc, i, 0)] = (
                gu[tc // (F // chunk), cols(tc, i, 0)]
                * (one / (one + expf.expf(-gu[tc // (F // chunk), cols(tc, i, 0)], tab, VEC)))
                * gu[tc // (F // chunk), cols(tc, i, F)]
            )

    # s_tir: Relax's reshape detection (RewriteDataflowReshape) inspects one-input kernels'
    # root block
    @T.prim_func(private=True, s_tir=True)
    def silu_mul(var_gu: T.handle, var_a: T.handle):
        T.func_attr({"tirx.noalias": True})
        n = T.int64()
        gu = T.match_buffer(var_gu, (n, 2 * F), "float32")
        a = T.match_buffer(var_a, (n, F), "float32")
        with T.sblock("root"):
            if n > 1:
                for tc in T.parallel(n * (F // chunk)):
                    silu_chunk(gu, a, tc)
            else:
                for tc in range(F // chunk):
                    silu_chunk(gu, a, tc)

    return {"rms_norm": rms_norm, "rope_append": rope_append, "silu_mul": silu_mul}


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
    """Whether the graph takes weight ``name`` packed by :func:`pack_weight`: every matrix."""
    return len(shape) == 2


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
    CB = tirx.Var("CB", "int64")  # key blocks: C / KEY_BLOCK
    L = spec.n_layers
    # the caches' shapes (module docstring) and their types
    k_shape, v_shape = (L, KV, CB, hd, KEY_BLOCK), (L, C, KV, hd)
    kvt = spec.kv_dtype
    k_ty, v_ty = relax.TensorType(k_shape, kvt), relax.TensorType(v_shape, kvt)

    bb = relax.BlockBuilder()
    kernels = {name: bb.add_func(func, name) for name, func in _kernels(spec).items()}
    g_attn, g_keep, g_rms = kernels["attention"], kernels["kv_keep"], kernels["rms_norm"]
    g_rope, g_silu = kernels["rope_append"], kernels["silu_mul"]
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

    def rms(x: Any, w: Any, rows: Any = n) -> Any:
        return relax.call_tir(g_rms, [x, w], relax.TensorType((rows, spec.n_embd), f32))

    for fname, last in (("forward", False), ("forward_last", True)):
        x_in = tensor("x", (n, spec.n_embd))
        cos_in, sin_in = tensor("cos", (n, half)), tensor("sin", (n, half))
        mask = tensor("mask", (n, n))
        past = relax.Var("past", relax.ShapeType([P]))
        kc, vc = tensor("k_cache", k_shape, kvt), tensor("v_cache", v_shape, kvt)
        w.clear()
        w |= {
            name: tensor(name.replace(".", "_"), shape, dtype)
            for name, (shape, dtype) in spec.param_shapes().items()
        }
        params = [x_in, cos_in, sin_in, mask, past, kc, vc, *w.values()]
        with bb.function(fname, params):
            with bb.dataflow():
                x: Any = x_in
                k_cache, v_cache = kc, vc
                for i in range(L):
                    h = bb.emit(rms(x, w[f"l{i}.attn_norm"]))
                    qkv = linear(h, f"l{i}.wqkv", w.get(f"l{i}.bqkv"))
                    qkv = bb.emit(qkv)
                    scalars = [relax.prim_value(tirx.IntImm("int64", i)), relax.prim_value(P)]
                    kvq = bb.emit(
                        relax.call_tir_inplace(
                            g_rope,
                            [k_cache, v_cache, qkv, cos_in, sin_in, *scalars],
                            [0, 1, -1],
                            [k_ty, v_ty, relax.TensorType((n, H, hd), f32)],
                        )
                    )
                    k_cache = bb.emit(relax.TupleGetItem(kvq, 0))
                    v_cache = bb.emit(relax.TupleGetItem(kvq, 1))
                    q = bb.emit(relax.TupleGetItem(kvq, 2))
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
                    a = bb.emit(relax.call_tir(g_silu, [gu], relax.TensorType((n, spec.n_ff), f32)))
                    x = bb.emit(R.add(x, bb.emit(linear(a, f"l{i}.w_down"))))
                if last:
                    x = bb.emit(R.strided_slice(x, axes=[0], begin=[n - 1], end=[n]))
                h = bb.emit(rms(x, w["out_norm"], rows=1 if last else n))
                logits = bb.emit_output(linear(h, "lm_head", rows=1 if last else n))
            bb.emit_func_output(logits)

    # kv_keep(k_cache, v_cache, rows int32[n], base Shape[B]): slots rows -> B .. B+n-1
    kc, vc = tensor("k_cache", k_shape, kvt), tensor("v_cache", v_shape, kvt)
    rows = tensor("rows", (n,), "int32")
    B = tirx.Var("B", "int64")
    base = relax.Var("base", relax.ShapeType([B]))
    with bb.function("kv_keep", [kc, vc, rows, base]):
        keep = [rows, relax.prim_value(B)]
        k2 = bb.emit(relax.call_tir_inplace(kernels["kv_keep_keys"], [kc, *keep], [0], k_ty))
        v2 = bb.emit(relax.call_tir_inplace(g_keep, [vc, *keep], [0], v_ty))
        bb.emit_func_output(relax.Tuple([k2, v2]))
    return bb.get()
