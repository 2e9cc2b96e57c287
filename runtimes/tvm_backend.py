"""The ``tvm`` backend: llama / qwen2 compiled through TVM Relax, fp32 or the GGUF's own blocks.

Three builds, chosen by ``LoadOptions.weights`` (``--weights``, the names the onnx backend
uses; :data:`WEIGHTS`):

- ``fp32``: the NumPy reference's weights (:mod:`edgespec.runtimes.numpy_ref`: a GGUF file
  dequantized to float32 bit for bit, or an HF folder), so this backend computes with exactly
  the reference's values; only the order of float32 operations differs.
- ``gguf-exact`` (what ``auto`` picks for a GGUF file on a CPU without VNNI, and on a GPU
  ``--device``): every matrix whose GGUF type has a
  kernel (Q4_0, Q4_1, Q8_0) is multiplied on the file's own blocks
  (:mod:`edgespec.kernels.qlinear`: the same dequantized values, never materialized, 4-bit
  codes widened to one byte); other types (K-quants, Q5_x, F16) fall back per matrix to
  float32, said once at load. Norms and biases are float32 as in fp32; the embedding table
  stays as the file stores it, its rows dequantized when a forward needs them
  (:class:`~edgespec.runtimes.embed_rows.EmbeddingRows`).
- ``gguf-q8act``: as gguf-exact, but the matrices multiply int8-quantized activations with
  integer dot products (:mod:`edgespec.kernels.qlinear_q8`, AVX512-VNNI, AVX-VNNI or AVX2;
  llama.cpp's arithmetic: Q8_0/Q8_1-style activation blocks for Q4_0 .. Q8_0, Q8_K for the
  K-quants); what ``auto`` picks for a GGUF file where the CPU has one of those
  (:data:`AUTO_Q8`). :data:`QUANTIZED` maps each build to how it multiplies the file's
  matrices.

The graph
(:mod:`edgespec.runtimes.tvm_graph`) has a symbolic token count T, takes rope angles and the
mask among new tokens as inputs (chains and token trees share it), and writes the new keys
and values into a preallocated device cache in place.

The compiled library depends only on the architecture's shapes and the target, not on the
weights. It is compiled once and cached as
``$EDGESPEC_HOME/tvm/<device fingerprint>/model-<arch>-<key>/lib.so`` (written atomically),
where the key hashes the graph's shapes, the graph code, the TVM version and the target.

Loading a quantized build reads the GGUF lazily (memory-mapped): the matrices with a kernel
are unpacked from the file's blocks (:func:`gguf_matrices`, never dequantized) and cached on
disk as the graph's operands (:func:`packed_matrices`, memory-mapped on the next load); only
what runs in float32 is dequantized (:func:`gguf_float_weights`: norms, biases, matrices
without a kernel); the embedding table stays in the file's map (:func:`gguf_embedding`). The
fp32 build dequantizes everything, as the NumPy reference does; in every build the table
stays on the host, and the graph takes the rows of a forward's tokens.

Devices (``LoadOptions.device``, ``--device``) come from :data:`DEVICES`: ``cpu`` is the
llvm target for this CPU. ``opencl`` runs the fp32 and gguf-exact builds as TVM-generated
OpenCL kernels launched by pyopencl (:mod:`edgespec.runtimes.tvm_opencl`; the ``apache-tvm`` wheel's
runtime has no OpenCL); ``vulkan`` needs a TVM runtime built with it, and loading says so
in one line.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgespec.errors import EdgespecError, ModelLoadError, missing_extra
from edgespec.model import (
    ModelInfo,
    SlotCacheModel,
    tree_ancestors,
    tree_path_rows,
)
from edgespec.runtimes.base import Backend, LoadOptions, ModelSource
from edgespec.runtimes.embed_rows import EmbeddingRows

#: GGUF architectures the graph implements (no sliding window, no q/k norm, SiLU MLP)
SUPPORTED_ARCHS = ("llama", "qwen2")

#: ``LoadOptions.weights`` choices (the onnx backend's names) -> the source kinds they serve
WEIGHTS: dict[str, tuple[str, ...]] = {
    "fp32": ("gguf", "hf"),
    "gguf-exact": ("gguf",),
    "gguf-q8act": ("gguf",),
}
#: ``--kv-cache`` types -> the caches' element type (f16: keys and values rounded to float16
#: when written, as llama.cpp's default cache holds them; half the bytes the attention reads)
KV_DTYPES = {"f32": "float32", "f16": "float16"}
#: the cache type without ``--kv-cache``, per build: float16 (llama.cpp's default) for the
#: int8-activation build, which is not the reference's arithmetic anyway (its near-tie bound
#: and cost curve are measured with it, variant ``gguf-q8act+kv-f16``); float32 for the
#: builds held to the NumPy reference's float32 logits (fp32, gguf-exact) and on GPU devices
DEFAULT_KV = {"gguf-q8act": "f16"}
#: what "auto" means per source kind: a GGUF keeps its own quantized blocks (as on onnx),
#: times int8 activations where the CPU has an int8 dot-product instruction (:data:`AUTO_Q8`)
AUTO_WEIGHTS = {"gguf": "gguf-exact", "hf": "fp32"}
#: the int8 dot products (kernels/qlinear_q8.py ``ISAS``) on which "auto" picks gguf-q8act for
#: a GGUF: every one the kernels build with, AVX512-VNNI, AVX-VNNI and AVX2, each faster than
#: gguf-exact where measured (docs/tvm.md, "What --weights auto builds")
AUTO_Q8 = ("vnni", "avxvnni", "avx2")
#: graph matrix (per layer) -> the GGUF tensors stacked along its output features
GGUF_PARTS = {
    "wqkv": ("attn_q", "attn_k", "attn_v"),
    "wo": ("attn_output",),
    "w_gate_up": ("ffn_gate", "ffn_up"),
    "w_down": ("ffn_down",),
}


def _q8act(w: Any) -> Any:
    """A matrix of the gguf-q8act build: on int8 activations where kernels/qlinear_q8.py has
    its type, else as gguf-exact."""
    from edgespec.kernels import qlinear_q8

    return qlinear_q8.prefer(w)


def _int8_isa() -> str | None:
    """This CPU's int8 dot product (:func:`edgespec.kernels.qlinear_q8.int8_isa`)."""
    from edgespec.kernels import qlinear_q8

    return qlinear_q8.int8_isa()


def _require_int8_dot() -> None:
    """One line where the CPU has no int8 dot product the kernels are built with."""
    if _int8_isa() is None:
        raise EdgespecError(
            "--weights gguf-q8act needs a CPU with AVX512-VNNI, AVX-VNNI or AVX2 (avx512_vnni, "
            "avx_vnni or avx2 in /proc/cpuinfo); use --weights gguf-exact"
        )


#: prompt slots of a draft head come in whole output tiles of the widest kernel tile, so
#: that repacking them rewrites a slice of the head's operands (``TvmModel.fit_head``)
SLOT_TILE = 64
#: the quantized builds: ``--weights`` choice -> how each of the file's packed matrices
#: (kernels/qlinear.py's layout) is multiplied: as it is (float32 activations) or on int8
#: activations (kernels/qlinear_q8.py)
QUANTIZED: dict[str, Callable[[Any], Any]] = {"gguf-exact": lambda w: w, "gguf-q8act": _q8act}
#: what a choice needs of this machine, checked when it is resolved (before any unpacking)
REQUIRES: dict[str, Callable[[], None]] = {"gguf-q8act": _require_int8_dot}


def _bundled(source: ModelSource) -> bool:
    """Whether ``source`` is the model of an ``export --format tvm`` bundle."""
    from edgespec.runtimes.tvm_bundle import META

    return (Path(source.path).expanduser().parent / META).is_file()


def default_kv(choice: str, cpu: bool) -> str:
    """The ``--kv-cache`` type a ``choice`` build gets without the flag (:data:`DEFAULT_KV`;
    ``cpu``: False on devices whose loader runs another graph, which has float32 caches
    only)."""
    return DEFAULT_KV.get(choice, "f32") if cpu else "f32"


def weights_choice(kind: str, weights: str, bundled: bool = False, device: str = "cpu") -> str:
    """``weights`` ("auto" or a :data:`WEIGHTS` name) resolved for a ``kind`` source on
    ``device``. "auto": fp32 in a bundle (``bundled``: ``export --format tvm``, whose library
    is the fp32 build) and for an HF folder; for a GGUF its own blocks, times int8
    activations (gguf-q8act) on a CPU whose int8 dot product is in :data:`AUTO_Q8`, else
    times float activations (gguf-exact; also on every GPU ``--device``).

    Raises:
        EdgespecError: an unknown choice, a quantized build for a source that is not GGUF,
            or gguf-q8act on a CPU with none of AVX512-VNNI, AVX-VNNI, AVX2.
    """
    auto = "fp32" if bundled else AUTO_WEIGHTS.get(kind, "fp32")
    if auto == "gguf-exact" and device == "cpu" and _int8_isa() in AUTO_Q8:
        auto = "gguf-q8act"
    choice = auto if weights == "auto" else weights
    if choice not in WEIGHTS:
        known = ", ".join(["auto", *WEIGHTS])
        raise EdgespecError(f"unknown --weights '{weights}' (known: {known})")
    if kind not in WEIGHTS[choice]:
        raise EdgespecError(
            f"--weights {choice} needs a {' or '.join(WEIGHTS[choice])} source, not '{kind}'; "
            "use --weights fp32"
        )
    REQUIRES.get(choice, lambda: None)()
    return choice


@dataclass(frozen=True)
class Device:
    """One ``--device`` choice of the tvm backend.

    Attributes:
        name: the flag's value.
        runtime: the name ``tvm.runtime.enabled`` knows it by.
        dev_type: the name ``tvm.device`` knows it by.
        target: the TVM target (a JSON-style dict; ``mcpu`` is filled in for the host CPU).
        missing: what to do when this TVM build has no runtime for it.
        loader: ``(source, options, weights choice) -> Model`` when the model runs outside
            TVM's own runtime (``opencl``: TVM's OpenCL C launched by pyopencl,
            :mod:`edgespec.runtimes.tvm_opencl`), or None (the Relax VM on ``dev_type``).
    """

    name: str
    runtime: str
    dev_type: str
    target: dict[str, Any]
    missing: str
    loader: Callable[[ModelSource, LoadOptions, str], Any] | None = None

    def check(self) -> None:
        """Raise one line when this TVM build cannot run on the device (a device with its
        own ``loader`` checks its driver when it loads)."""
        from edgespec.kernels.compiled import tvm_module

        tvm = tvm_module()

        if self.loader is None and not tvm.runtime.enabled(self.runtime):
            raise EdgespecError(
                f"--device {self.name}: this TVM build ({tvm.__version__}) has no "
                f"{self.runtime} runtime (tvm.runtime.enabled('{self.runtime}') is False); "
                f"{self.missing}"
            )

    def tvm_target(self, n_threads: int | None) -> Any:
        """The ``tvm.target.Target`` to compile for."""
        from tvm.target import Target

        spec = dict(self.target)
        if self.runtime == "llvm":
            from edgespec.kernels.tuning import host_cpu

            spec["mcpu"] = host_cpu()
        return Target(spec)

    def tvm_device(self) -> Any:
        """The ``tvm.runtime.Device`` to run on."""
        import tvm

        return tvm.device(self.dev_type, 0)


_BUILD_TVM = "build TVM from source with USE_{}=ON, or use --device cpu"


def _load_opencl(source: ModelSource, options: LoadOptions, choice: str) -> Any:
    from edgespec.runtimes.tvm_opencl import load_opencl

    return load_opencl(source, options, choice)


#: the devices the tvm backend knows, by ``--device`` name
DEVICES: dict[str, Device] = {
    "cpu": Device("cpu", "llvm", "cpu", {"kind": "llvm"}, "reinstall apache-tvm"),
    "opencl": Device(
        "opencl",
        "opencl",
        "opencl",
        {"kind": "opencl", "host": {"kind": "llvm"}},
        "install an OpenCL driver",
        _load_opencl,
    ),
    "vulkan": Device(
        "vulkan",
        "vulkan",
        "vulkan",
        {"kind": "vulkan", "host": {"kind": "llvm"}},
        _BUILD_TVM.format("VULKAN"),
    ),
}


def get_device(name: str) -> Device:
    """The :class:`Device` called ``name``; an unknown name is one line listing the known."""
    dev = DEVICES.get(name)
    if dev is None:
        raise EdgespecError(f"unknown --device '{name}'; known: {', '.join(DEVICES)}")
    return dev


# --------------------------------------------------------------------------- compiling


def _graph_source_digest() -> str:
    """sha256 of the graph code, so that editing it recompiles cached libraries."""
    from edgespec.runtimes.tvm_bundle import graph_code_digest

    return graph_code_digest()


def library_dir(spec: Any, arch: str, target: Any) -> Path:
    """Where the compiled library of ``spec`` for ``target`` is cached."""
    import tvm

    from edgespec.kernels import expf
    from edgespec.kernels.qlinear_q8 import building_isa
    from edgespec.kernels.tuning import records_dir
    from edgespec.runtimes.tvm_graph import ATTENTION_PLAN

    # instructions the target string does not name
    choices = [building_isa(), expf.lookup(), ATTENTION_PLAN.current()]
    key = "\n".join([repr(spec), _graph_source_digest(), tvm.__version__, str(target), *choices])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return records_dir() / f"model-{arch}-{digest}"


def compile_library(spec: Any, target: Any) -> Any:
    """Build the Relax module of ``spec`` for ``target``; returns the VM executable."""
    import tvm

    from edgespec.runtimes.tvm_graph import build_module

    return tvm.compile(build_module(spec), target=target)


def load_library(spec: Any, arch: str, target: Any, progress: bool) -> Any:
    """The runtime module of ``spec`` for ``target``, from the cache or compiled into it.

    The folder holds ``lib.so`` and ``meta.json`` (its sha256, the TVM version, the
    target); the checksum is verified before the library is opened.

    Raises:
        ModelLoadError: a cached library whose checksum differs or that TVM cannot load
            (the message says which folder to delete to recompile).
    """
    import tvm

    from edgespec.fileutil import atomic_dir, sha256_file

    folder = library_dir(spec, arch, target)
    lib, meta_path = folder / "lib.so", folder / "meta.json"
    if not meta_path.exists():
        if progress:
            print(
                f"edgespec: compiling the {arch} graph for {target.kind.name} with TVM "
                f"(once; cached in {folder})",
                file=sys.stderr,
            )
        t0 = time.perf_counter()
        ex = compile_library(spec, target)
        if folder.exists():  # a folder without meta.json is an interrupted old layout
            shutil.rmtree(folder)
        with atomic_dir(folder) as tmp:
            ex.export_library(str(tmp / "lib.so"))
            meta = {
                "sha256": sha256_file(tmp / "lib.so"),
                "tvm": tvm.__version__,
                "target": str(target),
                "graph": repr(spec),
                "compile_s": round(time.perf_counter() - t0, 1),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if progress:
            print(f"edgespec: compiled in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    fix = f"delete {folder} to recompile"
    try:
        meta = json.loads(meta_path.read_text())
        ok = lib.is_file() and meta.get("sha256") == sha256_file(lib)
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise ModelLoadError(f"the compiled TVM library in {folder} is corrupt; {fix}")
    try:
        return tvm.runtime.load_module(str(lib))
    except Exception as exc:  # TVM raises its own error types
        raise ModelLoadError(f"TVM cannot load '{lib}' ({type(exc).__name__}); {fix}") from None


# --------------------------------------------------------------------------- the model


def set_tvm_threads(tvm: Any, n: int) -> None:
    """Size TVM's thread pool to ``n`` threads, keeping the calling thread's CPU affinity.

    TVM pins the thread that configures its pool to one core (measured: {0, 1} -> {0} on this
    2-core machine). Every thread started from it afterwards inherits that mask, so llama.cpp's
    or ONNX Runtime's threads in the same process would share one core: llama.cpp at 2
    threads fell to 0.4 tok/s (from 54 at 1) in benchmarks/tvm_backend.py on a quiet machine.

    Also sets ``TVM_NUM_THREADS`` as :func:`~edgespec.kernels.compiled.use_every_core`
    does, for callers that imported tvm themselves: unset, every parallel loop reads
    ``/sys/devices/system/cpu/online`` (a 576 x 576 matrix's 9-row call took 23 us instead of
    12 in ``benchmarks/tvm_q8_stream.py``).
    """
    from edgespec.kernels.compiled import use_every_core

    use_every_core()
    keep = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    tvm.get_global_func("runtime.config_threadpool")(0, n)
    if keep is not None and os.sched_getaffinity(0) != keep:
        os.sched_setaffinity(0, keep)


def graph_spec(hp: Any, weights: Any) -> Any:
    """The :class:`~edgespec.runtimes.tvm_graph.GraphSpec` of a reference model's
    hyperparameters and weights."""
    return spec_of(hp, qkv_bias=weights.layers[0].bqkv is not None)


def spec_of(hp: Any, *, qkv_bias: bool) -> Any:
    """The :class:`~edgespec.runtimes.tvm_graph.GraphSpec` of hyperparameters ``hp`` (the
    reference's ``HParams``), with or without biases on the fused QKV projection."""
    from edgespec.runtimes.tvm_graph import GraphSpec

    return GraphSpec(
        n_layers=hp.n_layers,
        n_embd=hp.n_embd,
        n_head=hp.n_head,
        n_head_kv=hp.n_head_kv,
        head_dim=hp.head_dim,
        n_ff=hp.n_ff,
        n_vocab=hp.n_vocab,
        rms_eps=float(hp.rms_eps),
        attn_scale=float(hp.attn_scale),
        qkv_bias=qkv_bias,
    )


def graph_weights(weights: Any) -> dict[str, np.ndarray]:
    """The reference's weights as the graph's ``{name: float32 array}`` (matrices in the
    reference's own ``x @ W`` layout, ``[in, out]``; the embedding ``[V, D]``)."""
    w: dict[str, np.ndarray] = {
        "embed": weights.tok_embd if weights.tok_embd is not None else weights.output.T,
        "out_norm": weights.out_norm,
        "lm_head": weights.output,
    }
    for i, layer in enumerate(weights.layers):
        w[f"l{i}.attn_norm"] = layer.attn_norm
        w[f"l{i}.wqkv"] = layer.wqkv
        if layer.bqkv is not None:
            w[f"l{i}.bqkv"] = layer.bqkv
        w[f"l{i}.wo"] = layer.wo
        w[f"l{i}.ffn_norm"] = layer.ffn_norm
        w[f"l{i}.w_gate_up"] = layer.w_gate_up
        w[f"l{i}.w_down"] = layer.w_down
    return w


#: weights per call of ``QBlocks.from_gguf`` at load (bounds its float32 temporaries)
ROWS_WEIGHTS = 1 << 22


def _matrix_parts(name: str, tensors: dict[str, Any]) -> list[str] | None:
    """The GGUF tensors stacked along the output features of graph matrix ``name`` (in
    order), or None when ``name`` is not a matrix."""
    layer, _, role = name.rpartition(".")
    if role == "lm_head":
        return ["output.weight" if "output.weight" in tensors else "token_embd.weight"]
    if role in GGUF_PARTS:
        i = layer.removeprefix("l")
        return [f"blk.{i}.{p}.weight" for p in GGUF_PARTS[role]]
    return None


def _rope_heads(tensor: str, spec: Any, permuted_qk: bool) -> int | None:
    """Heads whose rows llama.cpp permuted in GGUF tensor ``tensor`` (llama Q/K), else None."""
    if not permuted_qk:
        return None
    role = tensor.split(".")[-2]
    return {"attn_q": spec.n_head, "attn_k": spec.n_head_kv}.get(role)


def _checked(t: Any, shape: tuple[int, ...], where: Path) -> Any:
    """GGUF tensor ``t`` when its NumPy shape is ``shape``; else one line naming both."""
    from edgespec.runtimes.numpy_weights import gguf_shape

    if gguf_shape(t) != shape:
        raise ModelLoadError(
            f"'{where}': tensor {t.name} has shape {gguf_shape(t)}, expected {shape}; "
            "the file does not match its own metadata"
        )
    return t


def _part_shapes(spec: Any, name: str, parts: list[str]) -> list[tuple[int, int]]:
    """``[(out, in)]`` of the GGUF tensors ``parts`` of graph matrix ``name`` ``[in, out]``."""
    K, N = spec.weight_shapes()[name]
    N = spec.n_vocab if name == "lm_head" else N  # the file's rows, before a head's gather
    nq, nkv = spec.n_head * spec.head_dim, spec.n_head_kv * spec.head_dim
    outs = {"attn_q": nq, "attn_k": nkv, "attn_v": nkv, "ffn_gate": N // 2, "ffn_up": N // 2}
    return [(outs.get(p.split(".")[-2], N), K) for p in parts]


def gguf_matrices(
    path: Path,
    spec: Any,
    permuted_qk: bool,
    progress: bool = False,
    head_rows: np.ndarray | None = None,
    only: Sequence[str] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The graph matrices of ``spec`` that the GGUF file ``path`` holds in a type with a
    kernel, as :class:`~edgespec.kernels.qlinear.PackedQWeight` (the file's blocks, read from
    the memory-mapped file, never dequantized; llama's Q/K rows un-permuted as the reference
    does), and the types of the others. ``head_rows`` (a draft's frequent-token head,
    ascending ids): the output matrix keeps only those rows, i.e. ``lm_head``'s outputs.
    ``only``: these graph matrices alone (None: all).

    A fused matrix (QKV, gate/up) is quantized only when its parts share one such type (or
    :func:`~edgespec.kernels.qlinear.common_format` has a layout for the mix).

    Returns:
        ``({graph matrix name: PackedQWeight}, [GGUF type of each float32 fallback])``.

    Raises:
        ModelLoadError: a tensor is missing or has another shape than the metadata implies.
    """
    from tqdm.auto import tqdm

    from edgespec.gguf_file import open_gguf
    from edgespec.kernels import qlinear
    from edgespec.runtimes.numpy_weights import unpermute_rope_rows

    tensors = {str(t.name): t for t in open_gguf(path).reader.tensors}
    packed: dict[str, Any] = {}
    fallback: list[str] = []
    wanted = spec.weight_names() if only is None else list(only)
    matrices = [(n, p) for n in wanted if (p := _matrix_parts(n, tensors))]
    for name, names in tqdm(
        matrices, desc="packing quantized matrices", unit="matrix", disable=not progress
    ):
        _require(tensors, names, path)
        shapes = _part_shapes(spec, name, names)
        parts = [_checked(tensors[n], sh, path) for n, sh in zip(names, shapes, strict=True)]
        types = {t.tensor_type.name for t in parts}
        qtype = qlinear.common_format(types)
        if qtype is None:
            fallback.append("/".join(sorted(types)))
            continue
        blocks = []
        # rows a few MB of weights at a time: the codes' float temporaries stay small
        step = max(1, ROWS_WEIGHTS // shapes[0][1])
        for t in parts:
            raw = np.asarray(t.data)
            n_head = _rope_heads(str(t.name), spec, permuted_qk)
            raw = unpermute_rope_rows(raw, n_head) if n_head else raw
            raw = raw[head_rows] if name == "lm_head" and head_rows is not None else raw
            blocks += [
                qlinear.QBlocks.from_gguf(raw[s : s + step], t.tensor_type.name).to(qtype)
                for s in range(0, raw.shape[0], step)
            ]
        packed[name] = qlinear.pack(qlinear.concat(blocks))
    return packed, fallback


@dataclass(frozen=True)
class CachedMatrix:
    """A quantized matrix read back from the packed-weights cache (:func:`packed_matrices`).

    Attributes:
        fmt: its graph format (``GraphSpec.quant``).
        ops: its operands as uploaded, memory-mapped ``.npy`` files.
    """

    fmt: str
    ops: list[np.ndarray]

    def operands(self) -> list[np.ndarray]:
        """The kernel operands after ``x``."""
        return self.ops


#: bump when the cache's files change meaning (2: Q5_x/Q6_K codes on int8 activations in 6
#: bits, kernels/qlinear_q8.py, where 1 had a byte each)
PACKED_CACHE_VERSION = 2


def packed_cache_dir(path: Path, choice: str) -> Path:
    """``$EDGESPEC_HOME/tvm/<device fingerprint>/weights/<key>``: the packed matrices of GGUF
    ``path`` for build ``choice`` on this device (gguf-q8act's exist only where its CPU
    instructions do), keyed by the file (resolved path, size, mtime), the build, gguf-py's
    version and the code that packs them (this module, kernels/qlinear.py,
    kernels/qlinear_q8.py, kernels/qlinear_q8k.py, gguf_file.py): other code or another file
    is another folder."""
    from importlib.metadata import version

    from edgespec import gguf_file
    from edgespec.kernels import qlinear, qlinear_q8, qlinear_q8k
    from edgespec.kernels.tuning import records_dir

    real = path.resolve()
    st = real.stat()
    h = hashlib.sha256(
        f"{PACKED_CACHE_VERSION}\n{real}\n{st.st_size}\n{st.st_mtime_ns}\n{choice}\n"
        f"{version('gguf')}\n".encode()
    )
    for mod in (sys.modules[__name__], qlinear, qlinear_q8, qlinear_q8k, gguf_file):
        h.update(Path(str(mod.__file__)).read_bytes())
    return records_dir() / "weights" / f"{real.stem}-{choice}-{h.hexdigest()[:16]}"


def _read_packed(folder: Path) -> tuple[dict[str, Any], list[str]] | None:
    """The cached ``(packed, fallback)`` of :func:`packed_matrices`, or None when absent or
    unreadable (then it is rebuilt and rewritten)."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        packed: dict[str, Any] = {
            name: CachedMatrix(
                m["fmt"], [np.load(folder / f, mmap_mode="r", allow_pickle=False) for f in m["ops"]]
            )
            for name, m in meta["matrices"].items()
        }
        return packed, [str(f) for f in meta["fallback"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_packed(folder: Path, packed: dict[str, Any], fallback: list[str], source: Path) -> None:
    """Write the packed matrices of GGUF ``source`` into ``folder`` atomically (an error:
    nothing written), and delete the folders of files that are gone and the older ones of
    ``source`` (another mtime or code) for the same build."""
    from edgespec.fileutil import atomic_dir

    real = str(source.resolve())
    for old in folder.parent.glob("*/meta.json") if folder.parent.is_dir() else []:
        try:
            was = json.loads(old.read_text()).get("source", "")
        except (OSError, ValueError, AttributeError):
            continue
        same = was == real and old.parent.name.rsplit("-", 1)[0] == folder.name.rsplit("-", 1)[0]
        if not Path(was).exists() or same:
            shutil.rmtree(old.parent, ignore_errors=True)
    if folder.exists():  # unreadable (see _read_packed): replaced
        shutil.rmtree(folder, ignore_errors=True)
    matrices: dict[str, dict[str, Any]] = {}
    with atomic_dir(folder) as tmp:
        for i, (name, q) in enumerate(packed.items()):
            files = []
            for j, arr in enumerate(q.operands()):
                files.append(f"{i}.{j}.npy")
                np.save(tmp / files[-1], np.ascontiguousarray(arr), allow_pickle=False)
            matrices[name] = {"fmt": q.fmt, "ops": files}
        meta = {
            "version": PACKED_CACHE_VERSION,
            "source": real,
            "matrices": matrices,
            "fallback": fallback,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))


def packed_matrices(
    path: Path, spec: Any, choice: str, permuted_qk: bool, progress: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """:func:`gguf_matrices` for build ``choice`` (:data:`QUANTIZED` applied), cached on disk
    (:func:`packed_cache_dir`; about the file's size): a later load memory-maps the operands
    instead of unpacking the file's blocks again.

    Returns:
        ``({graph matrix name: matrix with .fmt and .operands()}, [fallback types])``.
    """
    folder = packed_cache_dir(path, choice)
    cached = _read_packed(folder)
    if cached is not None:
        return cached
    packed, fallback = gguf_matrices(path, spec, permuted_qk, progress)
    packed = {name: QUANTIZED[choice](q) for name, q in packed.items()}
    try:
        _write_packed(folder, packed, fallback, path)
    except OSError as exc:  # a read-only or full disk: this load still works
        print(f"edgespec: warning: not caching the packed weights ({exc})", file=sys.stderr)
    return packed, fallback


def _require(tensors: dict[str, Any], names: Sequence[str], path: Path) -> None:
    """One line when the GGUF file lacks any of ``names``."""
    for n in names:
        if n not in tensors:
            raise ModelLoadError(f"'{path}' has no tensor {n}; the file is incomplete")


def gguf_float_weights(
    path: Path,
    spec: Any,
    names: Sequence[str],
    permuted_qk: bool,
    progress: bool = False,
    head_rows: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The graph weights ``names`` of ``spec`` as float32, read from the GGUF file ``path``:
    what the quantized build runs in float32 (norms, biases, and the matrices without a
    kernel, ``[in, out]``; the embedding table is :func:`gguf_embedding`'s). The values are
    the NumPy reference's (:func:`graph_weights` of its loader) bit for bit: each tensor
    dequantized by :func:`~edgespec.runtimes.numpy_weights.dequantize_tensor`, llama's Q/K rows
    un-permuted, fused parts concatenated, matrices transposed; a missing Q/K/V bias of a
    layer with the others is zeros, as there. Only these tensors are dequantized.
    ``head_rows``: ``lm_head`` keeps only those outputs (a draft's frequent-token head).

    Raises:
        ModelLoadError: a tensor is missing or has another shape than the metadata implies.
    """
    from tqdm.auto import tqdm

    from edgespec.gguf_file import open_gguf
    from edgespec.runtimes.numpy_weights import dequantize_tensor, unpermute_rope_rows

    tensors = {str(t.name): t for t in open_gguf(path).reader.tensors}
    shapes = spec.weight_shapes()

    def read(tensor: str, shape: tuple[int, ...]) -> np.ndarray:
        arr = dequantize_tensor(_checked(tensors[tensor], shape, path))
        n_head = _rope_heads(tensor, spec, permuted_qk)
        return unpermute_rope_rows(arr, n_head) if n_head else arr

    def vector(name: str) -> list[str]:
        layer, _, role = name.rpartition(".")
        blk = f"blk.{layer.removeprefix('l')}."
        if role == "bqkv":
            return [blk + p + ".bias" for p in GGUF_PARTS["wqkv"]]
        return [{"out_norm": "output_norm.weight"}.get(name, blk + role + ".weight")]

    out: dict[str, np.ndarray] = {}
    for name in tqdm(
        names, desc="dequantizing float32 weights", unit="tensor", disable=not progress
    ):
        parts = _matrix_parts(name, tensors)
        if parts is not None:
            _require(tensors, parts, path)
            sh = _part_shapes(spec, name, parts)
            mats = [read(p, s) for p, s in zip(parts, sh, strict=True)]
            both = np.concatenate(mats, axis=0)
            both = both[head_rows] if name == "lm_head" and head_rows is not None else both
            out[name] = np.ascontiguousarray(both.T)
        else:
            if name.endswith(".bqkv"):
                (nqkv,) = shapes[name]
                nq = spec.n_head * spec.head_dim
                sizes = [nq, (nqkv - nq) // 2, (nqkv - nq) // 2]
                out[name] = np.concatenate(
                    [
                        read(p, (n,)) if p in tensors else np.zeros(n, np.float32)
                        for p, n in zip(vector(name), sizes, strict=True)
                    ]
                )
            else:
                (tensor,) = vector(name)
                _require(tensors, [tensor], path)
                out[name] = read(tensor, shapes[name])
    return out


def gguf_embedding(path: Path, spec: Any) -> EmbeddingRows:
    """The GGUF file's embedding table ``token_embd.weight`` ``[V, D]`` as the file stores it
    (:class:`~edgespec.runtimes.embed_rows.EmbeddingRows`: rows dequantized when a forward
    needs them, the NumPy reference's values bit for bit).

    Raises:
        ModelLoadError: the file has no such tensor, or not of ``spec``'s shape.
    """
    from edgespec.gguf_file import open_gguf

    tensors = {str(t.name): t for t in open_gguf(path).reader.tensors}
    _require(tensors, ["token_embd.weight"], path)
    shape = (spec.n_vocab, spec.n_embd)
    return EmbeddingRows.from_gguf(_checked(tensors["token_embd.weight"], shape, path))


def gguf_model(path: Path) -> tuple[Any, Any, Any, np.ndarray | None]:
    """The hyperparameters, info, :class:`~edgespec.runtimes.tvm_graph.GraphSpec` and rope
    frequency factors of GGUF file ``path``, from its metadata (no matrix is read).

    Raises:
        ModelLoadError: an architecture the NumPy reference (or this backend) cannot run, or
            unreadable metadata.
    """
    from edgespec.gguf_file import open_gguf
    from edgespec.runtimes import numpy_ref
    from edgespec.runtimes.numpy_weights import dequantize_tensor

    gf = open_gguf(path)
    try:
        hp = numpy_ref._hparams_from_gguf(gf)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"'{path}': unreadable model metadata ({exc})") from None
    _check_arch(hp, path)
    info = numpy_ref._info(hp, {**gf.info.extra, "format": "gguf", "dtype": "float32"})
    tensors = {str(t.name): t for t in gf.reader.tensors}
    bias = any(f"blk.0.{p}.bias" in tensors for p in GGUF_PARTS["wqkv"])
    spec = spec_of(hp, qkv_bias=bias)
    ff = tensors.get("rope_freqs.weight")
    freq = None if ff is None else dequantize_tensor(_checked(ff, (hp.head_dim // 2,), path))
    return hp, info, spec, freq


def fp32_model(
    kind: str, path: Path, progress: bool
) -> tuple[Any, ModelInfo, Any, dict[str, np.ndarray], np.ndarray | None]:
    """The fp32 build's inputs, from a GGUF (dequantized) or HF folder through the NumPy
    reference's loader: ``(hparams, info, GraphSpec, {weight name: float32 array}, rope
    frequency factors or None)``.

    Raises:
        ModelLoadError: unreadable files, an unsupported architecture.
    """
    from edgespec.runtimes import numpy_ref

    if kind == "gguf":
        hp, weights, info = numpy_ref._load_gguf(path, np.float32, progress)
    else:
        hp, weights, info = numpy_ref._load_hf(path, np.float32)
    _check_arch(hp, path)
    return hp, info, graph_spec(hp, weights), graph_weights(weights), weights.freq_factors


def _with_head(spec: Any, head: np.ndarray, path: Path, slots: int = 0) -> Any:
    """``spec`` with ``lm_head`` narrowed to a draft head's ``head`` ids (the last ``slots``
    of them prompt slots).

    Raises:
        EdgespecError: ids not distinct or outside the model's vocabulary, a size the kernels'
            tiles do not divide, or slots the head cannot hold.
    """
    if head.size == 0 or head.min() < 0 or head.max() >= spec.n_vocab:
        raise EdgespecError(
            f"the draft head's token ids must be in [0, {spec.n_vocab}) for '{path}'"
        )
    if np.unique(head).size != head.size:
        raise EdgespecError(f"the draft head's token ids must be distinct for '{path}'")
    if head.size % 16:  # the kernels' output tiles (tile 1 is slow and fails to schedule)
        raise EdgespecError(f"a draft head needs a multiple of 16 tokens, not {head.size}")
    if slots and (slots % SLOT_TILE or head.size % SLOT_TILE or not 0 < slots < head.size):
        raise EdgespecError(
            f"a draft head's prompt slots must be a multiple of {SLOT_TILE} below its size "
            f"(itself a multiple of {SLOT_TILE}), not {slots} of {head.size}"
        )
    return replace(spec, n_out=int(head.size))


def _check_arch(hp: Any, path: Path) -> None:
    """One line when the graph does not implement ``hp``'s architecture."""
    if hp.arch not in SUPPORTED_ARCHS or hp.swa_window or hp.qk_norm:
        raise ModelLoadError(
            f"'{path}': architecture '{hp.arch}' is not supported by the tvm backend; "
            f"supported: {', '.join(SUPPORTED_ARCHS)} (use --backend numpy or llamacpp)"
        )


@dataclass(frozen=True)
class Built:
    """What a :class:`TvmModel` was built from, so that :meth:`TvmModel.with_head` can
    rebuild its output layer.

    Attributes:
        path: the GGUF file or HF folder.
        spec: the library's graph.
        choice: the weights build (:func:`weights_choice`).
        arch: the architecture (library cache key).
        target: the ``tvm.target.Target`` compiled for.
        progress: say so on stderr when a head's library is compiled (the load's option).
    """

    path: Path
    spec: Any
    choice: str
    arch: str
    target: Any
    progress: bool = False


@dataclass
class HeadSlots:
    """A draft head's prompt slots (:meth:`TvmModel.fit_head`).

    Attributes:
        source: the full model whose output rows are gathered.
        core: ``bool[V]``, the ids in the head's fixed rows.
        fillers: ``int64[size]``, the slots' ids when a prompt needs none.
        size: slot rows, the last of the head.
        host: the head's ``lm_head`` operands on the host ``[N/tile, X, tile]``, whose last
            ``size/tile`` tiles are rewritten and uploaded when the slots change.
    """

    source: TvmModel
    core: np.ndarray
    fillers: np.ndarray
    size: int
    host: list[np.ndarray]

    @classmethod
    def of(cls, source: TvmModel, ids: np.ndarray, slots: int, ops: list[np.ndarray]) -> HeadSlots:
        """The slots of a head of rows ``ids`` (the last ``slots`` of them) and operands
        ``ops``, gathered from ``source``."""
        core = np.zeros(source.n_vocab, dtype=bool)
        core[ids[:-slots]] = True
        return cls(source, core, ids[-slots:].copy(), int(slots), ops)


@functools.lru_cache(maxsize=32)
def causal_mask(n: int) -> np.ndarray:
    """``float32[n, n]``: 0 on and below the diagonal, -inf above (read-only, shared)."""
    m = np.triu(np.full((n, n), -np.inf, np.float32), 1)
    m.flags.writeable = False
    return m


class TvmModel(SlotCacheModel):
    """A compiled llama / qwen2 with its KV cache on the device.

    The cache is ``k_cache: float32[L, KV, C / 16, hd, 16]`` and ``v_cache: float32[L, C, KV,
    hd]`` (device tensors; the graph's layouts, runtimes/tvm_graph.py ``KEY_BLOCK``; C is
    ``n_ctx`` rounded up to a multiple of 16; float16 with ``--kv-cache f16``); slots ``0 ..
    n_past-1`` are valid, ``truncate`` only moves ``n_past``, and a forward writes its T new
    slots in place.

    Args:
        vm: the ``relax.VirtualMachine`` of the compiled library.
        device: the ``tvm.runtime.Device`` the tensors live on.
        weights: the graph's weight tensors, in ``GraphSpec.weight_names`` order.
        inv_freq: rope inverse frequencies ``float64[hd/2]``.
        info: architecture facts.
        n_ctx: cache capacity in tokens.
        cache_shape: ``(L, KV, hd)``.
        kv_dtype: the caches' element type (the graph's ``GraphSpec.kv_dtype``).
    """

    backend = "tvm"
    supports_tree = True
    #: longest run of tokens pushed through at once (attention scores are [T, H, n_past+T])
    max_chunk: int = 256
    #: what the model was built from (set by the backend's ``load``); None: unknown
    built: Built | None = None
    #: a draft head's prompt slots (:meth:`with_head`); None: none
    _head: HeadSlots | None = None

    def __init__(
        self,
        vm: Any,
        device: Any,
        weights: list[Any],
        embed: EmbeddingRows,
        inv_freq: np.ndarray,
        info: ModelInfo,
        n_ctx: int,
        cache_shape: tuple[int, int, int],
        kv_dtype: str = "float32",
    ) -> None:
        import tvm

        self._init_positions(info, n_ctx, inv_freq)
        self._tvm = tvm
        self.vm = vm
        self.device = device
        self.weights = weights
        self.embed = embed
        from edgespec.runtimes.tvm_graph import KEY_BLOCK

        L, KV, hd = cache_shape
        C = -(-self.n_ctx // KEY_BLOCK) * KEY_BLOCK
        self.k_cache = self._cache((L, KV, C // KEY_BLOCK, hd, KEY_BLOCK), kv_dtype)
        self.v_cache = self._cache((L, C, KV, hd), kv_dtype)

    def _placed(self, arrays: list[np.ndarray]) -> list[Any]:
        """``arrays`` as tensors of this model's device: on the CPU copied into one
        huge-page-advised map and used in place (as ``load`` places the weights)."""
        if self.device.dlpack_device_type() != 1:  # 1: kDLCPU
            return [self._tvm.runtime.tensor(a, self.device) for a in arrays]
        from edgespec.kernels.compiled import HugeArena

        arena = HugeArena(sum(HugeArena.footprint(a) for a in arrays))
        return [self._tvm.runtime.from_dlpack(arena.place(a)) for a in arrays]

    def _cache(self, shape: tuple[int, ...], dtype: str) -> Any:
        """A cache tensor: on the CPU in its own huge-page-advised map (a token's attention
        streams the whole cache at long contexts, as a forward streams the weights), else
        the device's allocation."""
        if self.device.dlpack_device_type() != 1:  # 1: kDLCPU
            return self._tvm.runtime.empty(shape, dtype, self.device)
        from edgespec.kernels.compiled import HugeArena

        arena = HugeArena(int(np.prod(shape)) * np.dtype(dtype).itemsize)
        return self._tvm.runtime.from_dlpack(arena.zeros(shape, dtype))

    def _init_positions(self, info: ModelInfo, n_ctx: int, inv_freq: np.ndarray) -> None:
        """The host-side state every device shares: ``info``, the capacity, an empty cache
        count, and the rope tables ``cos, sin: float32[n_ctx, hd/2]`` the forwards gather.

        Raises:
            EdgespecError: ``n_ctx`` below 1.
        """
        if n_ctx < 1:
            raise EdgespecError(f"n_ctx must be at least 1, got {n_ctx}")
        self.info = info
        self.n_ctx = int(n_ctx)
        self.n_vocab = int(info.vocab_size)
        ang = np.arange(self.n_ctx, dtype=np.float64)[:, None] * inv_freq[None, :]
        self._cos = np.cos(ang).astype(np.float32)
        self._sin = np.sin(ang).astype(np.float32)
        self._n_past = 0

    def fork(self) -> TvmModel:
        """A new model sharing the compiled library and weights, with a copy of the cache."""
        import copy

        other = copy.copy(self)
        other.__dict__.pop("_staged", None)  # its own input arrays
        other.k_cache = self._cache(tuple(self.k_cache.shape), str(self.k_cache.dtype))
        other.v_cache = self._cache(tuple(self.v_cache.shape), str(self.v_cache.dtype))
        self.k_cache.copyto(other.k_cache)
        self.v_cache.copyto(other.v_cache)
        return other

    def _check(self, ids: np.ndarray, what: str) -> None:
        if ids.size == 0:
            raise ValueError("forward needs at least one token")
        bad = ids[(ids < 0) | (ids >= self.n_vocab)]
        if bad.size:
            raise ValueError(f"token id {int(bad[0])} is outside [0, {self.n_vocab})")
        if self._n_past + ids.size > self.n_ctx:
            raise EdgespecError(
                f"context overflow: {self._n_past} cached + {ids.size} new {what} > n_ctx "
                f"{self.n_ctx}; load the model with a larger n_ctx or shorten the prompt"
            )

    #: the most new tokens (steps, verify chunks, trees) whose input tensors a model keeps
    #: between forwards on the CPU; longer forwards (prompts) allocate theirs
    STAGED_ROWS = 16

    def _inputs(self, ids: np.ndarray, pos: Any, mask: np.ndarray) -> list[Any]:
        """The graph's first four arguments (the embedding rows of ``ids``, rope cos and sin
        at ``pos``, mask).

        On the CPU, forwards of up to :data:`STAGED_ROWS` tokens write them into host arrays
        kept per size whose memory the device tensors are (64-byte aligned, as TVM asks),
        instead of four new tensors and copies a forward: about 40 us of a SmolLM2 step.
        """
        tvm, n = self._tvm, int(ids.size)
        if n > self.STAGED_ROWS or self.device.dlpack_device_type() != 1:  # 1: kDLCPU
            return [
                tvm.runtime.tensor(a, self.device)
                for a in (self.embed.rows(ids), self._cos[pos], self._sin[pos], mask)
            ]
        staged = self.__dict__.setdefault("_staged", {})
        if n not in staged:
            from edgespec.kernels.compiled import aligned_zeros

            half = self._cos.shape[1]
            hosts = [
                aligned_zeros((n, self.embed.dim), np.float32),
                aligned_zeros((n, half), np.float32),
                aligned_zeros((n, half), np.float32),
                aligned_zeros((n, n), np.float32),
            ]
            staged[n] = hosts, [tvm.runtime.from_dlpack(h) for h in hosts]
        hosts, tensors = staged[n]
        self.embed.rows(ids, out=hosts[0])
        hosts[1][...] = self._cos[pos]
        hosts[2][...] = self._sin[pos]
        hosts[3][...] = mask
        return tensors

    def _run(self, fn: str, ids: np.ndarray, pos: Any, mask: np.ndarray) -> np.ndarray:
        """One call of the compiled ``fn`` on new tokens at cache slots ``n_past ..``
        (``pos``: their rope positions, an index array or a slice). The logits are the
        output tensor's memory (zero-copy), which no later call reuses while they live."""
        args = [
            *self._inputs(ids, pos, mask),
            self._tvm.runtime.ShapeTuple([self._n_past]),
            self.k_cache,
            self.v_cache,
            *self.weights,
        ]
        out = np.from_dlpack(self.vm[fn](*args))
        self._n_past += int(ids.size)
        if self.head_ids is None:
            return out
        full = np.full((out.shape[0], self.n_vocab), -np.inf, dtype=np.float32)
        full[:, self.head_ids] = out
        return full

    def forward(self, tokens: Sequence[int], *, all_logits: bool = True) -> np.ndarray:
        """Append ``tokens`` at positions ``n_past .. n_past+T-1`` and score them.

        Returns:
            ``float32[T, V]``, or ``float32[1, V]`` when ``all_logits`` is False.

        Raises:
            EdgespecError: the tokens do not fit in the cache.
            ValueError: no tokens, or an id outside the vocabulary.
        """
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        self._check(ids, "tokens")
        rows = []
        for s in range(0, ids.size, self.max_chunk):
            chunk = ids[s : s + self.max_chunk]
            last = s + self.max_chunk >= ids.size
            n = chunk.size
            mask = causal_mask(n)
            pos = slice(self._n_past, self._n_past + n)
            if all_logits:
                rows.append(self._run("forward", chunk, pos, mask))
            else:
                out = self._run("forward_last", chunk, pos, mask)
                rows += [out] if last else []
        return rows[0] if len(rows) == 1 else np.concatenate(rows, axis=0)

    def _lm_head_operands(self, spec: Any, ids: np.ndarray) -> tuple[list[np.ndarray], Any]:
        """This (full) model's ``lm_head`` operands for the output rows ``ids``, in the
        graph's tiled layout, and ``spec`` with ``lm_head``'s format set to theirs.

        The quantized builds gather the file's blocks (int8-activation layout for
        gguf-q8act), a float32 fallback reads the file's rows, and the fp32 build reads its
        own matrix back from the device.
        """
        from edgespec.kernels.qlinear import untile
        from edgespec.runtimes.tvm_graph import pack_weight

        b = self.built
        assert b is not None
        llama = b.arch == "llama"
        if spec.quant_format("lm_head") is not None:  # the file's blocks, rows gathered
            packed, _ = gguf_matrices(b.path, spec, llama, head_rows=ids, only=["lm_head"])
            q = QUANTIZED[b.choice](packed["lm_head"])
            quant = tuple((n, q.fmt if n == "lm_head" else f) for n, f in spec.quant)
            return [np.ascontiguousarray(a) for a in q.operands()], replace(spec, quant=quant)
        if b.choice in QUANTIZED:  # a float32 fallback, from the file
            w = gguf_float_weights(b.path, spec, ["lm_head"], llama, head_rows=ids)
            return [pack_weight(w["lm_head"])], spec
        rows = untile(self.weights[-1].numpy(), ids)  # the fp32 build: [N, K]
        return [pack_weight(np.ascontiguousarray(rows.T))], spec

    @property
    def takes_head(self) -> bool:
        """A model this backend built (not a bundle's library or OpenCL) and not narrowed."""
        return self.built is not None and self.head_ids is None

    def with_head(self, ids: np.ndarray, slots: int = 0) -> TvmModel:
        """A frequent-token draft head: this model's library recompiled (once, cached) with an
        ``lm_head`` of only the rows ``ids``, sharing every other weight on the device, with
        its own empty cache. Its logits at ``ids`` are this model's bit for bit (each output
        row is computed alone); the others are ``-inf``.

        Args:
            ids: distinct token ids ``int64[N]``, ``N < V``, in output-row order.
            slots: the last ``slots`` rows are prompt slots (:meth:`fit_head`); a multiple
                of :data:`SLOT_TILE`, as ``N`` then must be.
        Raises:
            EdgespecError: bad ids or slots, or a model whose build is unknown or already
                narrowed.
        """
        import copy

        from tvm import relax

        b = self.built
        if b is None or self.head_ids is not None:
            raise EdgespecError("this tvm model cannot take a draft head (already narrowed?)")
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        ops, spec = self._lm_head_operands(_with_head(b.spec, ids, b.path, slots), ids)
        n_old = sum(p.partition(".")[0] == "lm_head" for p in b.spec.param_names())
        lib = load_library(spec, b.arch, b.target, b.progress)
        other = copy.copy(self)
        other.__dict__.pop("_staged", None)  # its own input arrays
        other.vm = relax.VirtualMachine(lib, self.device)
        other.weights = [*self.weights[:-n_old], *self._placed(ops)]
        other.k_cache = self._cache(tuple(self.k_cache.shape), str(self.k_cache.dtype))
        other.v_cache = self._cache(tuple(self.v_cache.shape), str(self.v_cache.dtype))
        other._n_past = 0
        other.head_ids = ids
        other.built = replace(b, spec=spec)
        other._head = HeadSlots.of(self, ids, slots, ops) if slots else None
        extra = {**self.info.extra, "head_tokens": int(ids.size)}
        extra["variant"] = f"{extra.get('variant', '')}+head{ids.size}".lstrip("+")
        other.info = replace(self.info, extra=extra)  # its own cost curve
        return other

    def fit_head(self, prompt: Sequence[int]) -> int:
        """Fill this head's prompt slots for ``prompt``; see :meth:`Model.fit_head`. Only
        the slots' output tiles are repacked (about 15 ms for 1024 rows of the Qwen2.5
        0.5B's Q8_0 head) and only when the slot set changes."""
        slots = self._head
        if slots is None or self.built is None or self.head_ids is None:
            return 0
        from edgespec.draft_head import prompt_slot_ids

        n = slots.size
        ids, placed = prompt_slot_ids(prompt, slots.core, slots.fillers, n)
        if np.array_equal(np.sort(ids), np.sort(self.head_ids[-n:])):
            return placed
        new, _ = slots.source._lm_head_operands(self.built.spec, ids)
        tensor = self._tvm.runtime.tensor
        first = len(self.weights) - len(slots.host)
        for i, (host, part) in enumerate(zip(slots.host, new, strict=True)):
            tiles = host.shape[0] * n // len(self.head_ids)
            if part.shape != (tiles, *host.shape[1:]):
                raise EdgespecError(
                    f"the prompt slots were packed as {part.shape}, not in {tiles} of the "
                    f"head's tiles {host.shape[1:]}"
                )
            host[-tiles:] = part
            self.weights[first + i] = tensor(host, self.device)
        self.head_ids = np.concatenate([self.head_ids[:-n], ids])
        return placed

    def forward_tree(self, tokens: Sequence[int], parents: Sequence[int]) -> np.ndarray:
        """Score a token tree in one forward; see :meth:`Model.forward_tree`.

        Node i sits in cache slot ``n_past + i``, rotated for position
        ``n_past + depth(i) - 1``, and attends to the cache and its ancestors only.

        Returns:
            ``float32[T, V]``.
        """
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if len(parents) != ids.size:
            raise ValueError("parents must list, for each node, an earlier node or -1")
        anc, depth = tree_ancestors(parents)
        self._check(ids, "tree nodes")
        mask = np.where(anc, 0.0, -np.inf).astype(np.float32)
        return self._run("forward", ids, self._n_past + depth - 1, mask)

    def commit_tree_path(self, base: int, path: Sequence[int]) -> None:
        """Keep the tree nodes ``path`` (batch indices, root to leaf) after ``base``."""
        idx = tree_path_rows(base, path, self._n_past)
        n = int(idx.size)
        if n and not np.array_equal(idx, np.arange(base, base + n)):
            rows = self._tvm.runtime.tensor(idx.astype(np.int32), self.device)
            base_shape = self._tvm.runtime.ShapeTuple([base])
            self.vm["kv_keep"](self.k_cache, self.v_cache, rows, base_shape)
        self._n_past = base + n

    def set_threads(self, n: int) -> bool:
        """Use ``n`` threads in TVM's thread pool for later forwards."""
        if n < 1:
            raise EdgespecError(f"n_threads must be at least 1, not {n}")
        set_tvm_threads(self._tvm, int(n))
        self.info.extra["n_threads"] = int(n)
        return True

    def close(self) -> None:
        """Drop the device tensors (the library stays cached on disk)."""
        self.weights = []


# --------------------------------------------------------------------------- the backend


class TvmBackend(Backend):
    """Compiles llama / qwen2 GGUF files and HF folders with TVM Relax (fp32 weights, or a
    GGUF's own blocks: ``--weights``)."""

    name: ClassVar[str] = "tvm"
    accepts: ClassVar[tuple[str, ...]] = ("gguf", "hf")
    requires: ClassVar[tuple[str, ...]] = ("tvm", "gguf")
    extra: ClassVar[str] = "tvm"
    devices: ClassVar[tuple[str, ...]] = tuple(DEVICES)
    #: always exact: every row is computed the same way whatever the number of tokens (the
    #: matmul kernels' loop order, fp32 and quantized; tested bit for bit), so ``--exact``
    #: changes nothing
    supports_exact: ClassVar[bool] = True
    streams_blocks: ClassVar[bool] = True
    takes_weights: ClassVar[bool] = True  # fp32, the GGUF's blocks, int8 activations
    kv_cache_types: ClassVar[tuple[str, ...]] = tuple(KV_DTYPES)

    @classmethod
    def stored_weights(cls, source: ModelSource, options: LoadOptions) -> str:
        """The build "auto" resolves to for ``source`` on this machine and ``--device``
        (``options.weights`` itself when it names a build, or nothing this backend knows)."""
        if options.weights != "auto":
            return options.weights
        try:
            return weights_choice(source.kind, "auto", _bundled(source), options.device)
        except EdgespecError:
            return options.weights

    @classmethod
    def cheap_to_load(cls, source: ModelSource, options: LoadOptions) -> bool:
        """False: the first load compiles and unpacks (or dequantizes) every matrix; a later
        one still reads the GGUF's metadata and places the packed weights."""
        return False

    @classmethod
    def load(cls, source: ModelSource, options: LoadOptions) -> TvmModel:
        """Compile (or load the cached library) and upload the weights.

        Raises:
            EdgespecError: TVM missing, an unknown or absent device, an unsupported source.
            ModelLoadError: unreadable files, an unsupported architecture.
        """
        if not cls.available():
            raise missing_extra("apache-tvm", cls.extra)
        device = get_device(getattr(options, "device", "cpu"))
        device.check()
        if source.kind not in cls.accepts:
            raise EdgespecError(
                f"the tvm backend loads {' or '.join(cls.accepts)} models, not '{source.kind}'"
            )
        choice = weights_choice(source.kind, options.weights, _bundled(source), device.name)
        path = Path(source.path).expanduser()
        default = default_kv(choice, device.loader is None)
        kv = options.kv_cache or default
        if kv not in cls.kv_cache_types or (kv != "f32" and device.loader is not None):
            raise EdgespecError(
                f"the tvm backend has no {kv} KV cache on --device {device.name}; it takes "
                f"--kv-cache {' or '.join(cls.kv_cache_types)} on --device cpu"
            )
        if device.loader is not None:
            return device.loader(source, options, choice)
        from edgespec.kernels.compiled import use_every_core

        use_every_core()  # before TVM sizes its thread pool
        import tvm
        from tvm import relax

        from edgespec.kernels.qlinear import operand_names
        from edgespec.runtimes.tvm_graph import is_packed, pack_weight

        packed: dict[str, Any] = {}
        fallback: list[str] = []
        if choice in QUANTIZED:  # the file's blocks; only what runs in float32 dequantized
            hp, info, spec, freq_factors = gguf_model(path)
            llama = hp.arch == "llama"
            packed, fallback = packed_matrices(path, spec, choice, llama, options.progress)
            quant = tuple((name, q.fmt) for name, q in packed.items())
            spec = replace(spec, quant=quant)
            if fallback and options.progress:
                print(
                    f"edgespec: {len(fallback)} of {len(fallback) + len(packed)} matrices "
                    f"({', '.join(sorted(set(fallback)))}) have no quantized kernel; they "
                    "run in float32",
                    file=sys.stderr,
                )
            floats = [n for n in spec.weight_names() if n not in packed]
            named = gguf_float_weights(path, spec, floats, llama, options.progress)
            embed = gguf_embedding(path, spec)
        else:
            hp, info, spec, named, freq_factors = fp32_model(source.kind, path, options.progress)
            embed = EmbeddingRows(named.pop("embed"))
        spec = replace(spec, kv_dtype=KV_DTYPES[kv])
        target = device.tvm_target(options.n_threads)
        from edgespec.runtimes.tvm_bundle import bundled_library

        lib = bundled_library(path, spec, hp.arch, target)  # export --format tvm's library
        lib = lib if lib is not None else load_library(spec, hp.arch, target, options.progress)
        dev = device.tvm_device()
        vm = relax.VirtualMachine(lib, dev)
        n_quant = len(packed)
        for name, q in packed.items():
            named |= {name + p: a for p, a in zip(operand_names(q.fmt), q.operands(), strict=True)}
        del packed  # each array is freed once uploaded
        tensors = []
        from tqdm.auto import tqdm

        from edgespec.kernels.compiled import HugeArena

        # the weights in one map on huge pages (fewer page walks as they stream), each used
        # in place by its tensor (packing keeps an array's size)
        arena = HugeArena(sum(HugeArena.footprint(named[n]) for n in spec.param_names()))
        for name in tqdm(
            spec.param_names(),
            desc="uploading weights",
            unit="tensor",
            disable=not options.progress,
        ):
            arr = np.ascontiguousarray(named.pop(name))
            arr = pack_weight(arr) if is_packed(name, arr.shape) else arr
            tensors.append(tvm.runtime.from_dlpack(arena.place(arr)))
            del arr
        del named
        extra = {**info.extra, "device": device.name, "target": str(target.kind.name)}
        extra["weights"] = choice
        if choice in QUANTIZED:  # e.g. "121/121": matrices on the file's own blocks
            extra["quantized_matrices"] = f"{n_quant}/{n_quant + len(fallback)}"
            # its own cost curve and near-tie bound (the fp32 build keeps the plain key)
            extra["variant"] = choice
        if kv != "f32":  # its own cost curve and near-tie bound
            extra["variant"] = "+".join(v for v in (extra.get("variant", ""), f"kv-{kv}") if v)
        from edgespec.kvcache import size_fields

        values = 2 * hp.n_layers * hp.n_head_kv * options.n_ctx * hp.head_dim
        held = np.dtype(KV_DTYPES[kv]).itemsize
        size = np.dtype(KV_DTYPES[default]).itemsize
        extra.update(size_fields(kv, values, values * held, size, default_name=default))
        info = replace(info, source=source.name or str(path), extra=extra)
        model = TvmModel(
            vm,
            dev,
            tensors,
            embed,
            hp.inv_freq(False, freq_factors),
            info,
            options.n_ctx,
            (hp.n_layers, hp.n_head_kv, hp.head_dim),
            KV_DTYPES[kv],
        )
        model.built = Built(path, spec, choice, hp.arch, target, options.progress)
        if options.n_threads:
            model.set_threads(options.n_threads)
        return model
