"""``--backend tvm --device opencl``: the decoder on an OpenCL device, kernels by TVM.

The apache-tvm wheel has no OpenCL runtime, so the Relax VM cannot run the graph there; this
module runs the same decoder (:class:`~edgespec.runtimes.tvm_graph.GraphSpec`, the same
weights as the llvm build: fp32, or gguf-exact's packed blocks of every type it packs,
K-quants included: :data:`~edgespec.kernels.opencl_graph.CL_QUANT`) as a sequence of
TVM-generated OpenCL kernels (:mod:`edgespec.kernels.opencl_graph`) launched with pyopencl,
in the graph's order, with the KV cache ``float32[L, n_ctx, KV, hd]`` in two device
buffers. Host-side work is the embedding lookup (a row gather from the host table,
uploaded), rope angles and masks (as the llvm build's caller computes them), and the
read-back of the logits.

On PoCL (the CPU driver ``./install.sh`` installs) this checks correctness, not speed; a
phone's GPU driver runs the same source. ``--weights gguf-q8act`` (int8 dot products with CPU
instructions) does not run here.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.model import ModelInfo, tree_path_rows
from edgespec.runtimes.base import LoadOptions, ModelSource
from edgespec.runtimes.embed_rows import EmbeddingRows
from edgespec.runtimes.tvm_backend import TvmModel

_F32 = 4


class ClModel(TvmModel):
    """A llama / qwen2 decoder whose every operation runs as an OpenCL kernel.

    Same contract as :class:`~edgespec.runtimes.tvm_backend.TvmModel` (forward with
    per-position logits, trees, rollback, fork).

    Args:
        program: the compiled kernels (:class:`~edgespec.kernels.opencl_graph.ClProgram`).
        spec: the graph's shapes.
        named: ``{weight name: float32 array}`` (:func:`~edgespec.runtimes.tvm_backend.
            graph_weights`): matrices ``[K, N]``, norms, biases, uploaded.
        embed: the embedding table, kept on the host (its rows gathered and uploaded).
        quant: the matrices that run on the file's blocks (``spec.quant``): ``{name:
            matrix with .fmt and .operands()}`` (kernels/qlinear.py's layout, as
            ``packed_matrices`` gives it; float16 scales widened to float32 here, K-quants'
            integer sub-scales as they are).
        inv_freq: rope inverse frequencies ``float64[hd/2]``.
        info: architecture facts.
        n_ctx: cache capacity in tokens.
    """

    def __init__(
        self,
        program: Any,
        spec: Any,
        named: dict[str, np.ndarray],
        embed: EmbeddingRows,
        inv_freq: np.ndarray,
        info: ModelInfo,
        n_ctx: int,
        quant: dict[str, Any] | None = None,
    ) -> None:
        self._init_positions(info, n_ctx, inv_freq)
        self.program = program
        self.spec = spec
        self._shapes = spec.weight_shapes()
        self.embed = embed
        self._w = {n: program.buffer(a) for n, a in named.items()}
        from edgespec.kernels.opencl_graph import cl_operands

        for name, q in (quant or {}).items():  # name.c, name.d, ...: the kernel's operands
            for part, a in cl_operands(q.fmt, q.operands()).items():
                self._w[f"{name}.{part}"] = program.buffer(a)
        self.weights = list(self._w.values())
        self._cache_bytes = spec.n_layers * self.n_ctx * spec.n_head_kv * spec.head_dim * _F32
        self.k_cache = program.buffer(nbytes=self._cache_bytes)
        self.v_cache = program.buffer(nbytes=self._cache_bytes)

    def weight_bytes(self) -> int:
        """Bytes of the weights held on the device (matrices, their scales, norms, biases;
        the embedding table stays on the host)."""
        return sum(int(b.size) for b in self._w.values())

    def fork(self) -> ClModel:
        """A new model sharing the kernels and weights, with a copy of the cache."""
        other = copy.copy(self)
        other.k_cache = self.program.buffer(nbytes=self._cache_bytes)
        other.v_cache = self.program.buffer(nbytes=self._cache_bytes)
        self.program.copy(other.k_cache, self.k_cache, self._cache_bytes)
        self.program.copy(other.v_cache, self.v_cache, self._cache_bytes)
        return other

    def _linear(self, x: Any, name: str, n: int) -> Any:
        """``x [n, K] @ W[name]`` (+ its bias) into a new ``[n, N]`` buffer, on the file's
        blocks where ``spec.quant`` names the matrix."""
        from edgespec.kernels.opencl_graph import linear_name, qlinear_name
        from edgespec.kernels.qlinear import get_layout

        K, N = self._shapes[name]
        bias = self._w.get(name.replace("wqkv", "bqkv")) if name.endswith("wqkv") else None
        y = self.program.buffer(nbytes=n * N * _F32)
        args = {"x": x, "y": y, "n": n} | ({} if bias is None else {"b": bias})
        fmt = self.spec.quant_format(name)
        if fmt is None:
            self.program.launch(linear_name(K, N, bias is not None), N, w=self._w[name], **args)
        else:
            ops = {p: self._w[f"{name}.{p}"] for p in get_layout(fmt).parts()}
            self.program.launch(qlinear_name(fmt, K, N, bias is not None), N, **ops, **args)
        return y

    def _run(self, fn: str, ids: np.ndarray, pos: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """One forward of ``ids`` at cache slots ``n_past ..``; ``fn`` is ``forward`` (every
        row's logits) or ``forward_last`` (the last row's)."""
        prog, spec = self.program, self.spec
        n, P = int(ids.size), self._n_past
        D, H, hd, F = spec.n_embd, spec.n_head, spec.head_dim, spec.n_ff
        heads = H + 2 * spec.n_head_kv
        x = prog.buffer(self.embed.rows(ids))
        cos, sin, msk = prog.buffer(self._cos[pos]), prog.buffer(self._sin[pos]), prog.buffer(mask)
        h = prog.buffer(nbytes=n * D * _F32)
        q = prog.buffer(nbytes=n * H * hd * _F32)
        o = prog.buffer(nbytes=n * H * hd * _F32)
        a = prog.buffer(nbytes=n * F * _F32)
        cache = {"kc": self.k_cache, "vc": self.v_cache, "P": P, "C": self.n_ctx, "n": n}
        for i in range(spec.n_layers):
            prog.launch("rms_norm", n, x=x, w=self._w[f"l{i}.attn_norm"], y=h, r0=0, m=n)
            qkv = self._linear(h, f"l{i}.wqkv", n)
            prog.launch(
                "rope_qkv", n * heads * (hd // 2), qkv=qkv, cos=cos, sin=sin, q=q, layer=i, **cache
            )
            prog.launch("attention", n * H, q=q, mask=msk, o=o, layer=i, **cache)
            prog.launch("add", n * D, x=x, y=self._linear(o, f"l{i}.wo", n), n=n)
            prog.launch("rms_norm", n, x=x, w=self._w[f"l{i}.ffn_norm"], y=h, r0=0, m=n)
            gu = self._linear(h, f"l{i}.w_gate_up", n)
            prog.launch("silu_mul", n * F, gu=gu, a=a, n=n)
            prog.launch("add", n * D, x=x, y=self._linear(a, f"l{i}.w_down", n), n=n)
        m = 1 if fn == "forward_last" else n
        prog.launch("rms_norm", m, x=x, w=self._w["out_norm"], y=h, r0=n - m, m=m)
        logits = prog.read(self._linear(h, "lm_head", m), (m, self.n_vocab))
        self._n_past += n
        return logits

    def commit_tree_path(self, base: int, path: Sequence[int]) -> None:
        """Keep the tree nodes ``path`` (batch indices, root to leaf) after ``base``: each
        kept slot's rows copied down in order (an in-order queue; no copy overlaps)."""
        idx = tree_path_rows(base, path, self._n_past)
        row = self.spec.n_head_kv * self.spec.head_dim * _F32
        layer = self.n_ctx * row
        for i, src in enumerate(int(s) for s in idx):
            if src == base + i:
                continue
            for cache in (self.k_cache, self.v_cache):
                for lay in range(self.spec.n_layers):
                    off = lay * layer
                    self.program.copy(cache, cache, row, off + (base + i) * row, off + src * row)
        self._n_past = base + int(idx.size)

    def set_threads(self, n: int) -> bool:
        """False: the OpenCL driver schedules its own work items."""
        return False

    def close(self) -> None:
        """Drop the device buffers."""
        self.weights, self._w = [], {}


#: the ``--weights`` builds that run on OpenCL (gguf-q8act's kernels are CPU int8 dot products)
OPENCL_WEIGHTS = ("fp32", "gguf-exact")


def load_opencl(source: ModelSource, options: LoadOptions, choice: str) -> ClModel:
    """Build ``choice`` of ``source`` on the first OpenCL device: ``fp32``, or ``gguf-exact``
    (what ``auto`` is for a GGUF): the matrices of :data:`~edgespec.kernels.opencl_graph.
    CL_QUANT` types (every type the CPU build packs) on the file's own blocks, as the CPU
    build packs them (its on-disk cache too), the others (float16 matrices) in float32.

    Raises:
        EdgespecError: a choice that does not run on OpenCL, no OpenCL driver or no pyopencl.
        ModelLoadError: unreadable files, an unsupported architecture.
    """
    from dataclasses import replace

    from edgespec.kernels.opencl import cl_device
    from edgespec.kernels.opencl_graph import CL_QUANT, ClProgram, graph_kernels
    from edgespec.runtimes.tvm_backend import (
        fp32_model,
        gguf_embedding,
        gguf_float_weights,
        gguf_model,
        packed_matrices,
    )

    if choice not in OPENCL_WEIGHTS:
        raise EdgespecError(
            f"--device opencl runs --weights {' or '.join(OPENCL_WEIGHTS)}, not {choice}; "
            "use one of those (or --device cpu)"
        )
    device = cl_device()  # one line when no driver is installed, before the weights load
    path = Path(source.path).expanduser()
    quant: dict[str, Any] = {}
    if choice == "fp32":
        hp, info, spec, named, freq_factors = fp32_model(source.kind, path, options.progress)
        embed = EmbeddingRows(named.pop("embed"))
    else:
        hp, info, spec, freq_factors = gguf_model(path)
        llama = hp.arch == "llama"
        packed, fallback = packed_matrices(path, spec, choice, llama, options.progress)
        quant = {name: q for name, q in packed.items() if q.fmt in CL_QUANT}
        spec = replace(spec, quant=tuple((name, q.fmt) for name, q in quant.items()))
        floats = [n for n in spec.weight_names() if n not in quant]
        named = gguf_float_weights(path, spec, floats, llama, options.progress)
        embed = gguf_embedding(path, spec)
    program = ClProgram(graph_kernels(spec), device)
    extra = {**info.extra, "device": "opencl", "target": "opencl", "weights": choice}
    extra["opencl_device"] = str(device.name).strip()
    if choice != "fp32":
        extra["quantized_matrices"] = f"{len(quant)}/{len(packed) + len(fallback)}"
        extra["variant"] = f"{choice}-opencl"
    info = replace(info, source=source.name or str(path), extra=extra)
    inv_freq = hp.inv_freq(False, freq_factors)
    return ClModel(program, spec, named, embed, inv_freq, info, options.n_ctx, quant)
