"""The ``gqa`` ONNX graph with the GGUF file's own quantized weights ("gguf-exact").

:func:`build_exact_onnx` takes the fp32 ``gqa`` conversion of a GGUF file
(:func:`edgespec.export.hf_onnx.ensure_onnx`) and replaces each projection ``MatMul`` whose
GGUF tensors have an exact MatMulNBits form (:data:`edgespec.export.gguf_nbits.LAYOUTS`) by
``com.microsoft.MatMulNBits`` nodes holding the file's codes and scales, so the dequantized
weights equal llama.cpp's (up to float32 rounding) instead of being re-quantized. For a
``MatMul(A float[B, T, K], W float[K, N])``::

    Y = MatMulNBits(A, codes, scales[, zero_points])                      symmetric types
      + ReduceSum(Reshape(A, [B, T, K/block, block]), -1) @ R^T           affine types

``R float[N, K/block]`` is the per-block residual of :mod:`edgespec.export.gguf_nbits`; one
block sum serves every consumer of the same activation (gate and up). Fused projections
(``qkv_proj``) concatenate their GGUF tensors along N (llama Q/K rows un-permuted, as
llama.cpp's converter permuted them); parts with different bits or blocks become separate
MatMulNBits nodes joined by a ``Concat``.

Every replacement is checked first: the graph's fp32 weight must equal the GGUF
dequantization (``gguf.quants.dequantize``) and so must the MatMulNBits form, within
:data:`TOLERANCE` relative to the weight's largest magnitude; otherwise the build stops
with one line. MatMuls whose GGUF types have no exact form stay fp32 and are listed in the
manifest.

With ``accuracy_level`` 4 (the default) ORT quantizes the activations per block to int8 inside
MatMulNBits, much like llama.cpp's own dot products; the weights are exact either way.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from edgespec.errors import EdgespecError
from edgespec.runtimes.base import ModelSource

#: Bump when the build changes in a way that invalidates cached graphs.
EXACT_VERSION = 1
#: The folder name under ``converted_dir() / key``, beside the fp32 ``onnx-gqa-fp32``.
VARIANT = "onnx-gqa-gguf-exact"
MANIFEST = "edgespec-onnx.json"
DTYPE = "gguf-exact"
#: max |graph weight - GGUF dequantization| / max(1, max |weight|) accepted
TOLERANCE = 1e-6
#: GGUF architectures whose Q/K rows llama.cpp's converter permuted for its rope
PERMUTED_ARCHS = ("llama",)

_LAYER = re.compile(r"model\.layers\.(\d+)\.(attn|mlp)\.(\w+)\.MatMul\.weight")
_PROJ = {
    "qkv_proj": ("attn_q", "attn_k", "attn_v"),
    "q_proj": ("attn_q",),
    "k_proj": ("attn_k",),
    "v_proj": ("attn_v",),
    "o_proj": ("attn_output",),
    "gate_up_proj": ("ffn_gate", "ffn_up"),
    "gate_proj": ("ffn_gate",),
    "up_proj": ("ffn_up",),
    "down_proj": ("ffn_down",),
}


class NoQuantizedWeights(EdgespecError):
    """The GGUF holds no quantized MatMul weight (an f16/f32 file): fp32 is already exact."""


@dataclass(frozen=True)
class Part:
    """One GGUF tensor feeding a graph MatMul.

    Attributes:
        name: the GGUF tensor name (``blk.3.attn_q.weight``).
        heads: un-permute its rows for this many rope heads (llama Q/K), or 0.
    """

    name: str
    heads: int = 0


def gguf_parts(
    weight: str, tensors: dict[str, Any], arch: str, heads: tuple[int, int]
) -> list[Part]:
    """The GGUF tensors, in N order, behind a ``gqa`` graph MatMul weight.

    Args:
        weight: the graph initializer name (``model.layers.3.attn.qkv_proj.MatMul.weight``,
            ``lm_head.MatMul.weight``).
        tensors: the GGUF file's tensors by name.
        arch: ``general.architecture``.
        heads: ``(n_head, n_head_kv)``.

    Returns:
        the parts, or ``[]`` when the name is not a projection this module knows.
    """
    permuted = arch in PERMUTED_ARCHS
    if weight == "lm_head.MatMul.weight":
        return [Part("output.weight" if "output.weight" in tensors else "token_embd.weight")]
    m = _LAYER.fullmatch(weight)
    if m is None or m.group(3) not in _PROJ:
        return []
    parts = []
    for short in _PROJ[m.group(3)]:
        n = {"attn_q": heads[0], "attn_k": heads[1]}.get(short, 0) if permuted else 0
        parts.append(Part(f"blk.{m.group(1)}.{short}.weight", n))
    return parts


def _close(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(1, max |b|)."""
    return float(np.abs(a - b).max() / max(1.0, float(np.abs(b).max())))


class _Builder:
    """Replaces MatMul nodes of one onnx_ir graph by exact MatMulNBits subgraphs."""

    def __init__(self, graph: Any, accuracy_level: int) -> None:
        self.graph = graph
        self.accuracy_level = accuracy_level
        self._sums: dict[tuple[int, int], Any] = {}  # (id(A), block) -> blocksum value

    def const(self, name: str, array: np.ndarray) -> Any:
        import onnx_ir as ir

        tensor = ir.tensor(array, name=name)
        value = ir.Value(name=name, const_value=tensor)
        value.shape = ir.Shape(array.shape)
        value.type = ir.TensorType(tensor.dtype)
        self.graph.register_initializer(value)
        return value

    def blocksum(self, a: Any, k: int, block: int, nodes: list[Any]) -> Any:
        """``float[B, T, K/block]``: A summed over each block along K (created once per A)."""
        import onnx_ir as ir

        key = (id(a), block)
        if key not in self._sums:
            tag = f"{a.name}/blocksum{block}"
            shape = self.const(f"{tag}.shape", np.array([0, 0, k // block, block], np.int64))
            axes = self.const(f"{tag}.axes", np.array([-1], np.int64))
            rs = ir.node("Reshape", [a, shape], name=f"{tag}/Reshape")
            red = ir.node("ReduceSum", [rs.outputs[0], axes], {"keepdims": 0}, name=f"{tag}/Sum")
            nodes += [rs, red]
            self._sums[key] = red.outputs[0]
        return self._sums[key]

    def nbits(self, a: Any, w: Any, base: str, nodes: list[Any]) -> Any:
        """Append the nodes computing ``A @ w.T`` (w: :class:`NBitsWeight`); returns Y."""
        import onnx_ir as ir

        n, k = w.shape
        inputs = [a, self.const(f"{base}.qweight", w.packed())]
        inputs.append(self.const(f"{base}.scales", np.ascontiguousarray(w.scales.reshape(-1))))
        zp = w.packed_zero_points()
        if zp is not None:
            inputs.append(self.const(f"{base}.qzeros", zp))
        attrs = {
            "K": k,
            "N": n,
            "bits": w.bits,
            "block_size": w.block,
            "accuracy_level": self.accuracy_level,
        }
        mm = ir.node(
            "MatMulNBits", inputs, attrs, domain="com.microsoft", name=f"{base}/MatMulNBits"
        )
        nodes.append(mm)
        y = mm.outputs[0]
        if w.residual is not None:
            sums = self.blocksum(a, k, w.block, nodes)
            rt = self.const(f"{base}.residual", np.ascontiguousarray(w.residual.T))
            rmm = ir.node("MatMul", [sums, rt], name=f"{base}/ResidualMatMul")
            add = ir.node("Add", [y, rmm.outputs[0]], name=f"{base}/ResidualAdd")
            nodes += [rmm, add]
            y = add.outputs[0]
        return y

    def replace(self, node: Any, groups: Sequence[Any]) -> None:
        """Replace ``node`` (a MatMul) by MatMulNBits over ``groups`` (concatenated along N)."""
        import onnx_ir as ir
        from onnx_ir.convenience import replace_nodes_and_values

        a = node.inputs[0]
        base = (node.name or node.outputs[0].name).removesuffix("/MatMul")
        nodes: list[Any] = []
        ys = [
            self.nbits(a, g, base if len(groups) == 1 else f"{base}/part{i}", nodes)
            for i, g in enumerate(groups)
        ]
        if len(ys) > 1:
            cat = ir.node("Concat", ys, {"axis": -1}, name=f"{base}/Concat")
            nodes.append(cat)
            ys = [cat.outputs[0]]
        old = node.outputs[0]
        replace_nodes_and_values(self.graph, node, [node], nodes, [old], ys)


def _group(weights: Sequence[Any]) -> list[Any]:
    """Fuse consecutive weights with the same (bits, block) into one (a MatMulNBits each)."""
    from edgespec.export.gguf_nbits import concat_rows

    runs: list[list[Any]] = []
    for w in weights:
        if runs and (runs[-1][0].bits, runs[-1][0].block) == (w.bits, w.block):
            runs[-1].append(w)
        else:
            runs.append([w])
    return [concat_rows(r) for r in runs]


def _exact_weights(
    name: str, graph_w: np.ndarray, parts: Sequence[Part], tensors: dict[str, Any]
) -> tuple[list[Any], str]:
    """The MatMulNBits weights replacing graph weight ``name`` (``float32[K, N]``).

    Returns:
        ``(groups, "")``, one :class:`NBitsWeight` per MatMulNBits node in N order, or
        ``([], why)`` when the GGUF tensors are missing or have no exact form.

    Raises:
        EdgespecError: when the graph weight or the MatMulNBits form differs from the GGUF
            dequantization by more than :data:`TOLERANCE`.
    """
    from gguf import quants

    from edgespec.export.gguf_nbits import LAYOUTS, from_gguf
    from edgespec.runtimes.numpy_weights import unpermute_rope_rows

    label = "+".join(p.name for p in parts)
    missing = [p.name for p in parts if p.name not in tensors]
    if missing:
        return [], f"no GGUF tensor {missing[0]}"
    types = [tensors[p.name].tensor_type for p in parts]
    if any(t not in LAYOUTS for t in types):
        return [], "+".join(t.name for t in types)
    raws = [np.asarray(tensors[p.name].data) for p in parts]
    raws = [
        unpermute_rope_rows(r, p.heads) if p.heads else r for r, p in zip(raws, parts, strict=True)
    ]
    ref = np.concatenate([quants.dequantize(r, t) for r, t in zip(raws, types, strict=True)])
    if graph_w.shape != ref.T.shape:
        raise EdgespecError(
            f"{name} has shape {list(graph_w.shape)} but GGUF {label} gives {list(ref.T.shape)}"
        )
    err = _close(graph_w.T, ref)
    if err > TOLERANCE:
        raise EdgespecError(
            f"{name} differs from GGUF {label} by {err:.1e} (relative); "
            "the graph/GGUF mapping is wrong, not building gguf-exact"
        )
    groups = _group([from_gguf(r, t) for r, t in zip(raws, types, strict=True)])
    err = _close(np.concatenate([g.dequantize() for g in groups]), ref)
    if err > TOLERANCE:
        raise EdgespecError(
            f"the MatMulNBits form of {label} differs from its dequantization by {err:.1e} "
            "(relative); not building gguf-exact"
        )
    return groups, ""


def build_exact_onnx(
    gguf_path: str | Path,
    fp32_gqa_dir: str | Path,
    out_dir: str | Path,
    *,
    progress: bool = False,
    accuracy_level: int = 4,
) -> Path:
    """Write the gguf-exact variant of an fp32 ``gqa`` graph.

    Args:
        gguf_path: the GGUF file the fp32 graph was converted from.
        fp32_gqa_dir: its ``gqa`` conversion (``model.onnx`` + external data,
            ``config.json``, ``genai_config.json``).
        out_dir: created if missing; receives ``model.onnx`` (+ ``model.onnx.data``), the
            two configs and ``edgespec-onnx.json``.
        progress: show a progress bar over the MatMuls.
        accuracy_level: MatMulNBits ``accuracy_level`` (4: int8 activations, fast; 0: fp32).

    Returns:
        the path of the new ``model.onnx``.

    Raises:
        EdgespecError: one line, when a graph weight does not match its GGUF tensors or the
            folders are incomplete.
    """
    import onnx_ir as ir

    from edgespec.gguf_file import open_gguf

    t0 = time.perf_counter()
    src, out = Path(fp32_gqa_dir), Path(out_dir)
    if not (src / "model.onnx").is_file():
        raise EdgespecError(f"'{src}' has no model.onnx; convert the GGUF with graph 'gqa' first")
    gf = open_gguf(gguf_path)
    tensors = {t.name: t for t in gf.reader.tensors}
    heads = (
        int(gf.arch_get("attention.head_count", 0)),
        int(gf.arch_get("attention.head_count_kv", 0)),
    )
    heads = (heads[0], heads[1] or heads[0])
    model = ir.load(src / "model.onnx")
    graph = model.graph
    if "com.microsoft" not in graph.opset_imports:
        graph.opset_imports["com.microsoft"] = 1
    builder = _Builder(graph, accuracy_level)
    counts: Counter[str] = Counter()
    kept: dict[str, str] = {}
    matmuls = [n for n in graph if n.op_type == "MatMul" and n.domain == ""]
    for node in tqdm(
        matmuls, desc="gguf-exact", unit="MatMul", disable=not progress, file=sys.stderr
    ):
        wv = node.inputs[1]
        if wv is None or not wv.is_initializer() or wv.const_value is None:
            continue
        parts = gguf_parts(wv.name, tensors, gf.arch, heads)
        if not parts:
            continue
        groups, why = _exact_weights(wv.name, wv.const_value.numpy(), parts, tensors)
        if not groups:
            kept[node.name] = why
            continue
        builder.replace(node, groups)
        counts.update(tensors[p.name].tensor_type.name for p in parts)
        if not wv.uses():
            del graph.initializers[wv.name]
    if not counts:
        raise NoQuantizedWeights(f"no MatMul of '{src}' maps onto a quantized GGUF tensor")
    out.mkdir(parents=True, exist_ok=True)
    ir.save(model, out / "model.onnx", external_data="model.onnx.data")
    for name in ("config.json", "genai_config.json"):
        if (src / name).exists():
            shutil.copy2(src / name, out / name)
    manifest = {
        "format_version": 1,
        "converter_version": EXACT_VERSION,
        "graph": "gqa",
        "dtype": DTYPE,
        "model": "model.onnx",
        "accuracy_level": accuracy_level,
        "tensor_types": dict(sorted(counts.items())),
        "fp32_matmuls": kept,
        "source": {"gguf": str(gf.path), "fp32_graph": str(src)},
        "fp32_converter_version": _read_json(src / MANIFEST).get("converter_version"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out / "model.onnx"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_complete(folder: Path, fp32_version: int) -> bool:
    """True when ``folder`` holds a build of this version from the current fp32 conversion."""
    meta = _read_json(folder / MANIFEST)
    return (
        meta.get("converter_version") == EXACT_VERSION
        and meta.get("fp32_converter_version") == fp32_version
        and meta.get("dtype") == DTYPE
        and (folder / str(meta.get("model", "model.onnx"))).exists()
    )


def ensure_exact_onnx(source: ModelSource, progress: bool = True) -> Path:
    """The folder of the gguf-exact graph of a GGUF source, building it on first use.

    Converts the fp32 ``gqa`` graph first when needed (cached as usual), then writes
    ``converted_dir()/<key>/onnx-gqa-gguf-exact`` through a temporary folder. A build from
    an older fp32 conversion (``hf_onnx.CONVERTER_VERSION`` changed) is rebuilt.

    Raises:
        EdgespecError: one line, for a non-GGUF source or a failed build.
    """
    from edgespec.export.hf_onnx import CONVERTER_VERSION, cached_onnx_dir, ensure_onnx
    from edgespec.fileutil import atomic_dir

    if source.kind != "gguf":
        raise EdgespecError(f"the gguf-exact ONNX graph needs a GGUF source, not '{source.kind}'")
    final = cached_onnx_dir(source, progress=progress, graph="gqa").parent / VARIANT
    if _is_complete(final, CONVERTER_VERSION):
        return final
    fp32 = ensure_onnx(source, progress=progress, graph="gqa")
    label = source.name or Path(source.path).name
    if progress:
        tqdm.write(f"building the gguf-exact ONNX graph of {label} (once)", file=sys.stderr)
    with atomic_dir(final) as tmp:
        build_exact_onnx(Path(source.path).expanduser().resolve(), fp32, tmp, progress=progress)
    return final
