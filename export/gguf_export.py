"""HF llama / qwen2 weights -> GGUF (f32, f16, q8_0, q4_0) with the ``gguf`` package's writer,
and q4_k_m by llama.cpp's own quantizer.

The layout follows llama.cpp's ``convert_hf_to_gguf.py``:

- tensor names come from ``gguf.TensorNameMap``;
- for the llama family, ``q_proj`` and ``k_proj`` rows are permuted from HF's rotate-half
  order to GGUF's interleaved RoPE order (qwen2 uses NEOX RoPE and needs no permutation);
- 1-D tensors (norms, biases) stay float32; 2-D weights take the requested type when their
  row length is a multiple of the block size, float16 otherwise.

``q4_k_m`` (llama.cpp's Q4_K_M mix: Q4_K, with Q6_K for the output and some of the attention
values and FFN down projections, and a 32-block type where a row is not a multiple of 256)
is not written by gguf-py, which reads K-quants but cannot make them: the f16 file is
written first, then ``llama_model_quantize`` (the function behind ``llama-quantize``, from
llama-cpp-python) turns it into the artifact.

The tokenizer goes into the metadata: copied from the source GGUF, or built from
``tokenizer.json`` (BPE -> ``gpt2`` model, merges, special ids and the chat template via
``gguf.SpecialVocab``). Without either, the file says ``tokenizer.ggml.model = none``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from edgespec.errors import EdgespecError
from edgespec.export.base import Artifact, ArtifactOptions, Exporter, Prepared

#: quantization name -> GGML type name
GGUF_TYPES = {"f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0", "f32": "F32"}
#: GGUF ``general.file_type`` (llama_ftype) per quantization
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 7}
#: quantizations made by llama.cpp's quantizer from the f16 file: name -> its
#: ``LLAMA_FTYPE_MOSTLY_*`` suffix
LLAMACPP_MIXES = {"q4_k_m": "Q4_K_M"}
ARCHS = {"llama": "LLAMA", "mistral": "LLAMA", "qwen2": "QWEN2"}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half row order -> GGUF interleaved order (llama.cpp's ``permute``)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _load_weights(hf_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    tensors: dict[str, np.ndarray] = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def _add_hparams(w: Any, cfg: dict[str, Any], name: str, quant: str) -> None:
    n_head = int(cfg["num_attention_heads"])
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // n_head)
    w.add_name(name)
    w.add_block_count(int(cfg["num_hidden_layers"]))
    w.add_context_length(int(cfg.get("max_position_embeddings") or 2048))
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(int(cfg["intermediate_size"]))
    w.add_head_count(n_head)
    w.add_head_count_kv(int(cfg.get("num_key_value_heads") or n_head))
    w.add_rope_dimension_count(head_dim)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps", 1e-6)))
    w.add_rope_freq_base(float(cfg.get("rope_theta", 10000.0)))
    w.add_vocab_size(int(cfg["vocab_size"]))
    w.add_file_type(FILE_TYPES[quant])


def _copy_tokenizer_from_gguf(w: Any, path: Path) -> None:
    import gguf

    from edgespec.gguf_file import open_gguf

    reader = open_gguf(path).reader
    for field in reader.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(field.name, field.contents(), vtype, sub_type=sub)


def _tokenizer_from_json(w: Any, folder: Path, n_vocab: int) -> None:
    import gguf

    tj = json.loads((folder / "tokenizer.json").read_text())
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise EdgespecError(
            f"GGUF export handles BPE tokenizers only, not {model.get('type')!r} "
            f"({folder / 'tokenizer.json'})"
        )
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    for tok, i in model.get("vocab", {}).items():
        if i < n_vocab:
            tokens[i], types[i] = tok, gguf.TokenType.NORMAL
    for added in tj.get("added_tokens", []):
        i = int(added["id"])
        if i < n_vocab:
            tokens[i] = added["content"]
            special = added.get("special")
            types[i] = gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=n_vocab)
    if not special.merges:
        raise EdgespecError(
            f"{folder / 'tokenizer.json'} has no BPE merges, which llama.cpp requires"
        )
    special.add_to_gguf(w, quiet=True)


def write_gguf(src: Prepared, out: Path, quant: str, *, progress: bool = True) -> dict[str, Any]:
    """Write ``src`` to the GGUF file ``out`` in ``quant``; returns tensor-type counts."""
    import gguf

    cfg = src.config
    arch = ARCHS[src.model_type]
    arch_enum = getattr(gguf.MODEL_ARCH, arch)
    n_layers = int(cfg["num_hidden_layers"])
    n_head = int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads") or n_head)
    name_map = gguf.get_tensor_name_map(arch_enum, n_layers)
    qtype = getattr(gguf.GGMLQuantizationType, GGUF_TYPES[quant])
    block = gguf.GGML_QUANT_SIZES[qtype][0]

    w = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[arch_enum])
    _add_hparams(w, cfg, Path(src.name).name or "model", quant)
    if src.tokenizer_gguf is not None:
        _copy_tokenizer_from_gguf(w, src.tokenizer_gguf)
    elif src.tokenizer_dir is not None:
        _tokenizer_from_json(w, src.tokenizer_dir, int(cfg["vocab_size"]))
    else:
        w.add_tokenizer_model("none")

    counts: dict[str, int] = {}
    weights = _load_weights(src.hf_dir)
    if cfg.get("tie_word_embeddings"):
        weights.pop("lm_head.weight", None)
    for hf_name in tqdm(sorted(weights), desc="GGUF tensors", disable=not progress, leave=False):
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        new = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise EdgespecError(f"GGUF export: no GGUF name for tensor '{hf_name}'")
        data = np.asarray(weights[hf_name], dtype=np.float32)
        if arch == "LLAMA" and hf_name.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif arch == "LLAMA" and hf_name.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        if data.ndim == 1 or quant == "f32":
            kind = gguf.GGMLQuantizationType.F32
        elif data.shape[-1] % block == 0:
            kind = qtype
        else:
            kind = gguf.GGMLQuantizationType.F16
        raw = gguf.quants.quantize(data, kind) if kind != gguf.GGMLQuantizationType.F32 else data
        w.add_tensor(new, raw, raw_dtype=kind)
        counts[kind.name] = counts.get(kind.name, 0) + 1
    del weights
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=False)
    w.close()
    return counts


def llamacpp_quantize(
    src: Path, out: Path, mix: str = "Q4_K_M", *, requantize: bool = False
) -> Path:
    """Quantize GGUF ``src`` into ``out`` with llama.cpp's own quantizer
    (``llama_model_quantize``); ``mix`` names a ``LLAMA_FTYPE_MOSTLY_*`` type such as
    ``Q4_K_M``. ``src`` holds f32 / f16 matrices, or with ``requantize`` quantized ones too
    (each dequantized and quantized again: :mod:`edgespec.requant`). Written to a temporary
    name and renamed when complete.

    Raises:
        EdgespecError: llama-cpp-python missing, an unknown ``mix``, or the quantizer failed.
    """
    import ctypes
    import logging

    from edgespec.fileutil import atomic_path

    verb = "requantize" if requantize else "quantize"
    try:
        import llama_cpp
    except ImportError:
        raise EdgespecError(
            f"{mix} needs llama.cpp's quantizer: pip install llama-cpp-python (./install.sh)"
        ) from None
    code = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{mix}", None)
    if code is None:
        raise EdgespecError(f"unknown llama.cpp quantization '{mix}' (e.g. Q4_K_M, Q8_0)")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = code
    params.allow_requantize = requantize
    # llama-cpp-python prints llama.cpp's log to stderr below its logger's level: a line per
    # tensor that falls back to a 32-block type; the caller gets the types, and a failure
    # as one line of ours
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        with atomic_path(out) as tmp:
            if llama_cpp.llama_model_quantize(
                str(src).encode(), str(tmp).encode(), ctypes.byref(params)
            ):
                raise EdgespecError(
                    f"llama.cpp could not {verb} {src} to {mix}; is the file a complete GGUF "
                    "model? (`edgespec models verify` checks a zoo model)"
                )
    finally:
        log.setLevel(level)
    return out


def tensor_types(path: Path) -> dict[str, int]:
    """``{GGUF type name: how many tensors}`` of the file ``path``."""
    from edgespec.gguf_file import open_gguf

    counts: dict[str, int] = {}
    for t in open_gguf(path).reader.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts


class GgufExporter(Exporter):
    """One ``model.gguf`` per artifact folder, for the llama.cpp backend."""

    name = "gguf"
    quants = ("f16", "q8_0", "q4_0", "q4_k_m", "f32")
    backend = "llamacpp"
    source_kind = "gguf"

    def export(
        self, src: Prepared, out_dir: Path, quant: str, options: ArtifactOptions
    ) -> Artifact:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "model.gguf"
        if quant in LLAMACPP_MIXES:
            f16 = out_dir / ".model-f16.gguf"
            try:
                write_gguf(src, f16, "f16", progress=options.progress)
                llamacpp_quantize(f16, path, LLAMACPP_MIXES[quant])
            finally:
                f16.unlink(missing_ok=True)
            return Artifact("gguf", quant, path, {"tensor_types": tensor_types(path)})
        counts = write_gguf(src, path, quant, progress=options.progress)
        return Artifact("gguf", quant, path, {"tensor_types": counts})
