"""The decoder graph's kernels for GPUs, as TVM TensorIR, run as OpenCL C through pyopencl.

The ``tvm`` backend's ``--device opencl`` path. The apache-tvm wheel generates OpenCL C but
has no OpenCL runtime (:mod:`edgespec.kernels.opencl`), so the Relax VM cannot launch the
kernels; instead every operation of the decoder (:mod:`edgespec.runtimes.tvm_graph`'s
``forward``: RMSNorm, the projections, rope with the cache write, attention over the cache
under a mask, SiLU-gate, the residual adds, the LM head) is written here as a TensorIR
function with GPU thread bindings, all compiled by TVM for ``Target({"kind": "opencl"})`` in
one module, and :class:`ClProgram` builds the generated source with pyopencl and launches
the kernels in the graph's order (:class:`edgespec.runtimes.tvm_opencl.ClModel`). On PoCL
(Debian ``pocl-opencl-icd``, a CPU driver) this checks correctness, not speed.

Every kernel is one work item per output element or row (``THREADS`` per work group, the
launch rounded up and guarded), float32 throughout, with the graph's shapes fixed at build
time and the token count ``n``, the cached positions ``P`` and the layer passed as scalars.
TVM's common-subexpression pass is off for the device code so that each kernel's parameters
are exactly its buffers (by name) and its scalar variables (by name): :func:`parse_kernels`
reads them back from the source and :meth:`ClProgram.launch` binds arguments by name.

Shapes (``D`` width, ``H``/``KV`` heads, ``hd`` head size, ``F`` FFN width, ``L`` layers,
``C`` cache slots)::

    rms_norm(x f32[n, D], w f32[D], y f32[m, D], r0, m)      y[r] = norm(x[r0 + r]) * w
    linear_KxN(x f32[n, K], w f32[K, N], y f32[n, N], n)     y = x @ w      (+ b f32[N])
    qlinear_FMT_KxN(x, c, d[, m] f32[, sd[, sm]], y, n)      the same on a GGUF matrix's blocks
    rope_qkv(qkv f32[n, (H+2KV) hd], cos/sin f32[n, hd/2], q f32[n, H, hd],
             kc/vc f32[L, C, KV, hd], layer, P, n)          q rotated and scaled; k, v cached
    attention(q, kc, vc, mask f32[n, n], o f32[n, H hd], layer, P, n)
    silu_mul(gu f32[n, 2F], a f32[n, F], n)                  a = silu(gate) * up
    add(x f32[n, D], y f32[n, D], n)                         x += y  (in place)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.kernels.opencl import _KERNEL, OPENCL_TARGET, _cl
from edgespec.kernels.qlinear import LAYOUTS, get_layout

if TYPE_CHECKING:
    from edgespec.runtimes.tvm_graph import GraphSpec

#: work items per work group of every kernel
THREADS = 64
_SCALARS = {"int": np.int32, "long": np.int64}


@dataclass(frozen=True)
class ClKernelSig:
    """One generated kernel's entry name and parameters in order.

    Attributes:
        name: the ``__kernel`` function's name.
        params: ``(name, numpy scalar type or None for a buffer)`` in parameter order.
    """

    name: str
    params: tuple[tuple[str, Any], ...]


def parse_kernels(source: str) -> dict[str, ClKernelSig]:
    """``{function name: signature}`` of every ``__kernel`` in TVM's OpenCL C (TVM names the
    kernel of function ``f`` ``f_kernel``; buffers are ``name_ptr``)."""
    out: dict[str, ClKernelSig] = {}
    for found in _KERNEL.finditer(source):
        params: list[tuple[str, Any]] = []
        for p in found.group(2).split(","):
            words = p.replace("*", " * ").split()
            if "*" in words:
                params.append((words[-1].removesuffix("_ptr"), None))
            elif words and words[0] in _SCALARS:
                params.append((words[-1], _SCALARS[words[0]]))
            else:
                raise EdgespecError(f"unexpected OpenCL kernel parameter '{p.strip()}'")
        name = found.group(1).removesuffix("_kernel")
        out[name] = ClKernelSig(found.group(1), tuple(params))
    return out


def _groups(items: Any) -> Any:
    return (items + THREADS - 1) // THREADS


def linear_name(K: int, N: int, bias: bool) -> str:
    """The kernel name of ``x [n, K] @ w [K, N]`` (with a bias: ``linear_bias_KxN``)."""
    return f"linear{'_bias' if bias else ''}_{K}x{N}"


def _linear(K: int, N: int, bias: bool) -> Any:
    """One work item per output feature j; it loops over the rows, each a sum over K in
    order."""
    from tvm.script import tirx as T

    @T.prim_func(private=True)
    def linear(var_x: T.handle, var_w: T.handle, var_y: T.handle, var_b: T.handle) -> None:
        n = T.int32()
        w = T.match_buffer(var_w, (K, N), "float32")
        x = T.match_buffer(var_x, (n, K), "float32")
        y = T.match_buffer(var_y, (n, N), "float32")
        b = T.match_buffer(var_b, (N,), "float32")
        for g in T.thread_binding(_groups(N), "blockIdx.x"):
            for t in T.thread_binding(THREADS, "threadIdx.x"):
                if g * THREADS + t < N:
                    acc = T.alloc_buffer((1,), "float32", scope="local")
                    for r in range(n):
                        acc[0] = T.float32(0)
                        for k in range(K):
                            acc[0] = acc[0] + x[r, k] * w[k, g * THREADS + t]
                        if bias:
                            y[r, g * THREADS + t] = acc[0] + b[g * THREADS + t]
                        else:
                            y[r, g * THREADS + t] = acc[0]

    return linear


#: the GGUF types (and fused formats) :func:`_qlinear` multiplies on their own blocks: every
#: layout of kernels/qlinear.py (K-quants with their super-block scales and integer
#: sub-scales, multiplied per group in the kernel)
CL_QUANT = tuple(LAYOUTS)


def qlinear_name(fmt: str, K: int, N: int, bias: bool) -> str:
    """The kernel name of ``x [n, K] @ W`` on ``fmt`` blocks (``qlinear[_bias]_FMT_KxN``)."""
    return f"qlinear{'_bias' if bias else ''}_{fmt}_{K}x{N}"


def _qlinear(fmt: str, K: int, N: int, bias: bool) -> Any:
    """``x [n, K] @ W`` on a matrix packed by :func:`edgespec.kernels.qlinear.pack` (the
    file's codes, tiled ``[N/tile, ., tile]``, so neighbouring work items read neighbouring
    bytes), scales as :func:`cl_operands` gives them: float32 (widened on the host, so no
    ``cl_khr_fp16`` is needed), one per group of ``g`` weights (32; 16 for Q6_K and the mixed
    Q4_K/Q6_K format), or for K-quants one per 256 with the file's integer sub-scale per
    group (``sd``, ``sm``), their product ``D = d * sd`` formed in the kernel (exact in
    float32, the value the CPU build and ``gguf.quants.dequantize`` use). One work item per
    output feature j; per row and group, as the CPU kernel factors it: ``y += D * sum(x *
    code) + M * sum(x)``."""
    from tvm.script import tirx as T

    from edgespec.kernels.qlinear import SUPER, tile_for

    lay, tile = get_layout(fmt), tile_for(N)
    g, four, zero, affine = lay.group, lay.code_bits == 4, float(lay.zero), lay.affine
    nb, sub = K // g, lay.sub
    per = SUPER // g if sub else 1  # groups per scale d (and m)
    if four and g != 32:  # 4-bit codes are packed in Q4_0's nibble order per 32
        raise EdgespecError(f"{fmt}: 4-bit codes need groups of 32, not {g}")
    ctype, cols = ("uint8", K // 2) if four else ("int8", K)

    def scale(s: Any, si: Any, jt: Any, k: Any, ln: Any) -> Any:
        # D (or M) of group k: the float32 scale, times the group's sub-scale for K-quants
        if sub:
            return s[jt, k // per, ln] * T.Cast("float32", si[jt, k, ln])
        return s[jt, k, ln]

    @T.prim_func(private=True)
    def qlinear(
        var_x: T.handle,
        var_c: T.handle,
        var_d: T.handle,
        var_m: T.handle,
        var_sd: T.handle,
        var_sm: T.handle,
        var_y: T.handle,
        var_b: T.handle,
    ) -> None:
        n = T.int32()
        x = T.match_buffer(var_x, (n, K), "float32")
        c = T.match_buffer(var_c, (N // tile, cols, tile), ctype)
        d = T.match_buffer(var_d, (N // tile, nb // per, tile), "float32")
        m = T.match_buffer(var_m, (N // tile, nb // per, tile), "float32")
        sd = T.match_buffer(var_sd, (N // tile, nb, tile), sub or "int8")
        sm = T.match_buffer(var_sm, (N // tile, nb, tile), sub or "int8")
        y = T.match_buffer(var_y, (n, N), "float32")
        b = T.match_buffer(var_b, (N,), "float32")
        for gr in T.thread_binding(_groups(N), "blockIdx.x"):
            for t in T.thread_binding(THREADS, "threadIdx.x"):
                if gr * THREADS + t < N:
                    jt, ln = (gr * THREADS + t) // tile, (gr * THREADS + t) % tile
                    acc = T.alloc_buffer((3,), "float32", scope="local")  # y, sum x*c, sum x
                    for r in range(n):
                        acc[0] = T.float32(0)
                        for k in range(nb):
                            acc[1] = T.float32(0)
                            acc[2] = T.float32(0)
                            for i in range(g):
                                if four:
                                    acc[1] = acc[1] + x[r, k * g + i] * (
                                        T.Cast(
                                            "float32",
                                            (c[jt, k * 16 + i % 16, ln] >> T.uint8(4 * (i // 16)))
                                            & T.uint8(15),
                                        )
                                        - T.float32(zero)
                                    )
                                else:
                                    acc[1] = acc[1] + x[r, k * g + i] * T.Cast(
                                        "float32", c[jt, k * g + i, ln]
                                    )
                                if affine:
                                    acc[2] = acc[2] + x[r, k * g + i]
                            if affine:
                                acc[0] = (
                                    acc[0]
                                    + scale(d, sd, jt, k, ln) * acc[1]
                                    + scale(m, sm, jt, k, ln) * acc[2]
                                )
                            else:
                                acc[0] = acc[0] + scale(d, sd, jt, k, ln) * acc[1]
                        if bias:
                            y[r, gr * THREADS + t] = acc[0] + b[gr * THREADS + t]
                        else:
                            y[r, gr * THREADS + t] = acc[0]

    return qlinear


def cl_operands(fmt: str, operands: list[np.ndarray]) -> dict[str, np.ndarray]:
    """``{"c", "d"[, "m"][, "sd"[, "sm"]]}``: the operands :func:`_qlinear` takes for a matrix
    in ``fmt`` whose CPU-build operands (:func:`edgespec.kernels.qlinear.pack`, in
    :meth:`~edgespec.kernels.qlinear.Layout.parts` order) are ``operands``: the codes and
    K-quants' integer sub-scales as packed, the float16 scales widened to float32 (exactly)."""
    named = dict(zip(get_layout(fmt).parts(), operands, strict=True))
    return {
        p: np.ascontiguousarray(a, np.float32) if p in ("d", "m") else a for p, a in named.items()
    }


def graph_kernels(spec: GraphSpec) -> dict[str, Any]:
    """``{name: PrimFunc}``: every kernel the graph of ``spec`` launches (a matrix that
    ``spec.quant`` names runs on its blocks, :data:`CL_QUANT` types only)."""
    from tvm.script import tirx as T

    D, H, KV, hd, F = spec.n_embd, spec.n_head, spec.n_head_kv, spec.head_dim, spec.n_ff
    G, half, heads = H // KV, hd // 2, H + 2 * KV
    eps, scale = float(spec.rms_eps), float(spec.attn_scale)

    @T.prim_func(private=True)
    def rms_norm(var_x: T.handle, var_w: T.handle, var_y: T.handle, r0: T.int32) -> None:
        n, m = T.int32(), T.int32()
        w = T.match_buffer(var_w, (D,), "float32")
        x = T.match_buffer(var_x, (n, D), "float32")
        y = T.match_buffer(var_y, (m, D), "float32")
        for g in T.thread_binding(_groups(m), "blockIdx.x"):
            for t in T.thread_binding(THREADS, "threadIdx.x"):
                if g * THREADS + t < m:
                    s = T.alloc_buffer((1,), "float32", scope="local")
                    s[0] = T.float32(0)
                    for k in range(D):
                        s[0] = s[0] + x[r0 + g * THREADS + t, k] * x[r0 + g * THREADS + t, k]
                    s[0] = T.rsqrt(s[0] / T.float32(D) + T.float32(eps))
                    for k in range(D):
                        y[g * THREADS + t, k] = x[r0 + g * THREADS + t, k] * s[0] * w[k]

    @T.prim_func(private=True)
    def rope_qkv(
        var_qkv: T.handle,
        var_cos: T.handle,
        var_sin: T.handle,
        var_q: T.handle,
        var_kc: T.handle,
        var_vc: T.handle,
        layer: T.int32,
        P: T.int32,
    ) -> None:
        n, L, C = T.int32(), T.int32(), T.int32()
        qkv = T.match_buffer(var_qkv, (n, heads * hd), "float32")
        cos = T.match_buffer(var_cos, (n, half), "float32")
        sin = T.match_buffer(var_sin, (n, half), "float32")
        q = T.match_buffer(var_q, (n, H, hd), "float32")
        kc = T.match_buffer(var_kc, (L, C, KV, hd), "float32")
        vc = T.match_buffer(var_vc, (L, C, KV, hd), "float32")
        for g in T.thread_binding(_groups(n * heads * half), "blockIdx.x"):
            for t in T.thread_binding(THREADS, "threadIdx.x"):
                if g * THREADS + t < n * heads * half:
                    i = g * THREADS + t
                    r, h, e = i // (heads * half), i // half % heads, i % half
                    x1 = qkv[r, h * hd + e]
                    x2 = qkv[r, h * hd + e + half]
                    if h < H:
                        q[r, h, e] = (x1 * cos[r, e] - x2 * sin[r, e]) * T.float32(scale)
                        q[r, h, e + half] = (x2 * cos[r, e] + x1 * sin[r, e]) * T.float32(scale)
                    elif h < H + KV:
                        kc[layer, P + r, h - H, e] = x1 * cos[r, e] - x2 * sin[r, e]
                        kc[layer, P + r, h - H, e + half] = x2 * cos[r, e] + x1 * sin[r, e]
                    else:
                        vc[layer, P + r, h - H - KV, e] = x1
                        vc[layer, P + r, h - H - KV, e + half] = x2

    @T.prim_func(private=True)
    def attention(
        var_q: T.handle,
        var_kc: T.handle,
        var_vc: T.handle,
        var_mask: T.handle,
        var_o: T.handle,
        layer: T.int32,
        P: T.int32,
    ) -> None:
        n, L, C = T.int32(), T.int32(), T.int32()
        q = T.match_buffer(var_q, (n, H, hd), "float32")
        kc = T.match_buffer(var_kc, (L, C, KV, hd), "float32")
        vc = T.match_buffer(var_vc, (L, C, KV, hd), "float32")
        mask = T.match_buffer(var_mask, (n, n), "float32")
        o = T.match_buffer(var_o, (n, H * hd), "float32")
        for g in T.thread_binding(_groups(n * H), "blockIdx.x"):
            for t in T.thread_binding(THREADS, "threadIdx.x"):
                if g * THREADS + t < n * H:
                    r, h = (g * THREADS + t) // H, (g * THREADS + t) % H
                    acc = T.alloc_buffer((hd,), "float32", scope="local")
                    s = T.alloc_buffer((3,), "float32", scope="local")  # score, max, sum
                    s[1] = T.float32(-math.inf)
                    for j in range(P + n):
                        s[0] = T.if_then_else(
                            j >= P, mask[r, T.max(j - P, 0)], T.float32(0), dtype="float32"
                        )
                        for d in range(hd):
                            s[0] = s[0] + q[r, h, d] * kc[layer, j, h // G, d]
                        s[1] = T.max(s[1], s[0])
                    s[2] = T.float32(0)
                    for d in range(hd):
                        acc[d] = T.float32(0)
                    for j in range(P + n):
                        s[0] = T.if_then_else(
                            j >= P, mask[r, T.max(j - P, 0)], T.float32(0), dtype="float32"
                        )
                        for d in range(hd):
                            s[0] = s[0] + q[r, h, d] * kc[layer, j, h // G, d]
                        s[0] = T.exp(s[0] - s[1])
                        s[2] = s[2] + s[0]
                        for d in range(hd):
                            acc[d] = acc[d] + s[0] * vc[layer, j, h // G, d]
                    for d in range(hd):
                        o[r, h * hd + d] = acc[d] / s[2]

    @T.prim_func(private=True)
    def silu_mul(var_gu: T.handle, var_a: T.handle) -> None:
        n = T.int32()
        gu = T.match_buffer(var_gu, (n, 2 * F), "float32")
        a = T.match_buffer(var_a, (n, F), "float32")
        for g in T.thread_binding(_groups(n * F), "blockIdx.x"):
            for t in T.thread_binding(THREADS, "threadIdx.x"):
                if g * THREADS + t < n * F:
                    r, f = (g * THREADS + t) // F, (g * THREADS + t) % F
                    x = gu[r, f]
                    a[r, f] = x / (T.float32(1) + T.exp(-x)) * gu[r, F + f]

    @T.prim_func(private=True)
    def add(var_x: T.handle, var_y: T.handle) -> None:
        n = T.int32()
        x = T.match_buffer(var_x, (n, D), "float32")
        y = T.match_buffer(var_y, (n, D), "float32")
        for g in T.thread_binding(_groups(n * D), "blockIdx.x"):
            for t in T.thread_binding(THREADS, "threadIdx.x"):
                if g * THREADS + t < n * D:
                    r, c = (g * THREADS + t) // D, (g * THREADS + t) % D
                    x[r, c] = x[r, c] + y[r, c]

    out = {
        "rms_norm": rms_norm,
        "rope_qkv": rope_qkv,
        "attention": attention,
        "silu_mul": silu_mul,
        "add": add,
    }
    shapes = spec.weight_shapes()
    matrices = [f"l{i}.{m}" for i in range(spec.n_layers) for m in MATRICES] + ["lm_head"]
    for name in matrices:
        K, N = shapes[name]
        bias, fmt = name.endswith(".wqkv") and spec.qkv_bias, spec.quant_format(name)
        if fmt is None:
            out.setdefault(linear_name(K, N, bias), _linear(K, N, bias))
        else:
            out.setdefault(qlinear_name(fmt, K, N, bias), _qlinear(fmt, K, N, bias))
    return out


#: the per-layer matrices of the graph (GraphSpec.weight_names' ``l{i}.<name>``)
MATRICES = ("wqkv", "wo", "w_gate_up", "w_down")


class ClProgram:
    """TVM's OpenCL C for a set of TensorIR kernels, built and launched with pyopencl.

    Args:
        funcs: ``{name: PrimFunc}`` with GPU thread bindings (e.g. :func:`graph_kernels`).
        device: a ``pyopencl.Device`` (default :func:`edgespec.kernels.opencl.cl_device`).
    """

    def __init__(self, funcs: dict[str, Any], device: Any = None) -> None:
        import tvm
        from tvm.target import Target

        from edgespec.kernels.opencl import cl_device

        cl = _cl()
        mod = tvm.IRModule({n: f.with_attr("global_symbol", n) for n, f in funcs.items()})
        # without CSE, a kernel's scalar parameters are its own variables, bound by name
        with tvm.transform.PassContext(config={"tirx.disable_cse_tir": True}):
            lib = tvm.compile(mod, target=Target(OPENCL_TARGET))
        self.source = str(lib.mod.imports[0].inspect_source())
        self.sigs = parse_kernels(self.source)
        missing = set(funcs) - set(self.sigs)
        if missing:
            raise EdgespecError(f"TVM's OpenCL output lacks the kernels {sorted(missing)}")
        self.device = device if device is not None else cl_device()
        self.context = cl.Context(devices=[self.device])
        self.queue = cl.CommandQueue(self.context)
        program = cl.Program(self.context, self.source).build()
        self._kernels = {n: getattr(program, s.name) for n, s in self.sigs.items()}

    def buffer(self, array: np.ndarray | None = None, nbytes: int = 0) -> Any:
        """A device buffer holding ``array`` (copied), or ``nbytes`` uninitialised."""
        cl = _cl()
        mf = cl.mem_flags
        if array is not None:
            host = np.ascontiguousarray(array)
            return cl.Buffer(self.context, mf.READ_WRITE | mf.COPY_HOST_PTR, hostbuf=host)
        return cl.Buffer(self.context, mf.READ_WRITE, max(int(nbytes), 4))

    def launch(self, name: str, items: int, **args: Any) -> None:
        """Run kernel ``name`` over ``items`` work items (rounded up to whole groups),
        binding buffers and scalars by parameter name (unused ones are dropped)."""
        sig = self.sigs[name]
        bound = []
        for p, scalar in sig.params:
            if p not in args:
                raise EdgespecError(f"kernel {name}: no argument for parameter '{p}'")
            bound.append(args[p] if scalar is None else scalar(args[p]))
        size = max(1, _groups(int(items))) * THREADS
        self._kernels[name](self.queue, (size,), (THREADS,), *bound)

    def read(self, buf: Any, shape: tuple[int, ...]) -> np.ndarray:
        """``float32[shape]`` copied back from ``buf`` (waits for the queue)."""
        cl = _cl()
        out = np.empty(shape, np.float32)
        cl.enqueue_copy(self.queue, out, buf).wait()
        return out

    def copy(
        self, dst: Any, src: Any, nbytes: int, dst_offset: int = 0, src_offset: int = 0
    ) -> None:
        """Copy ``nbytes`` between device buffers (in queue order)."""
        _cl().enqueue_copy(
            self.queue, dst, src, byte_count=nbytes, dst_offset=dst_offset, src_offset=src_offset
        )
