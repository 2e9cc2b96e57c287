"""HF folder -> ONNX artifacts: fp32 (with past KV), dynamic int8 and int4 weight-only.

The fp32 graph is :data:`edgespec.export.hf_onnx.DEFAULT_GRAPH` (onnxruntime-genai's builder:
GroupQueryAttention, shared KV buffer); int8 and int4 quantize that graph's MatMuls.

Every artifact folder holds ``model.onnx`` (+ its external weights when large), the model's
``config.json``, ``genai_config.json`` when the graph shares its KV buffer,
``edgespec-onnx.json`` (graph style and quantization, read by the runtime) and its
tokenizer (``tokenizer.json`` & co., or ``tokenizer.gguf``: the source GGUF's metadata
without tensors, read by llama.cpp's vocab-only loader). The graph's inputs and outputs are
those of :mod:`edgespec.export.hf_onnx`, so the ``onnx`` backend runs every variant the same
way.

- ``int8``: ``onnxruntime.quantization.quantize_dynamic`` (QInt8 weights, activations
  quantized per call: logits depend slightly on the batch, see stack.md).
- ``int4``: ``MatMulNBitsQuantizer`` (symmetric 4-bit blocks of ``block_size`` weights,
  ``accuracy_level=4``: int8 activations inside MatMulNBits on CPU).
- ``gguf-exact`` (GGUF sources): the source file's own quantized blocks in MatMulNBits,
  not re-quantized (:mod:`edgespec.export.gguf_exact`).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from edgespec.export.base import Artifact, ArtifactOptions, Exporter, Prepared
from edgespec.export.prepare import TOKENIZER_FILES

#: total graph size above which weights go to model.onnx_data
_LARGE = 1 << 31


def write_vocab_gguf(src: Path, out: Path) -> Path:
    """A GGUF with ``src``'s metadata and no tensors: a tokenizer for llama.cpp's vocab-only
    loader (a few MB instead of the whole model)."""
    import gguf

    from edgespec.gguf_file import open_gguf

    g = open_gguf(src)
    w = gguf.GGUFWriter(out, g.arch)
    for field in g.reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return out


def copy_model_files(src: Prepared, out_dir: Path) -> None:
    """config.json and the tokenizer beside the graph."""
    shutil.copy2(src.hf_dir / "config.json", out_dir / "config.json")
    if src.tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (src.tokenizer_dir / name).exists():
                shutil.copy2(src.tokenizer_dir / name, out_dir / name)
    elif src.tokenizer_gguf is not None:
        write_vocab_gguf(src.tokenizer_gguf, out_dir / "tokenizer.gguf")


def _copy_fp32(
    fp32: Path, out_dir: Path, options: ArtifactOptions, src: Prepared
) -> dict[str, object]:
    for f in fp32.parent.glob("model.onnx*"):
        shutil.copy2(f, out_dir / f.name)
    return {}


def _int8(fp32: Path, out_dir: Path, options: ArtifactOptions, src: Prepared) -> dict[str, object]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
    quantize_dynamic(
        str(fp32),
        str(out_dir / "model.onnx"),
        weight_type=QuantType.QInt8,
        use_external_data_format=_needs_external(fp32),
    )
    return {"weight_type": "QInt8"}


def quantize_int4(fp32: Path, out_dir: Path, block_size: int) -> dict[str, object]:
    """``fp32`` (a ``model.onnx``) -> ``out_dir/model.onnx`` with MatMulNBits weights
    (symmetric int4 blocks of ``block_size``, accuracy_level 4). Returns manifest details."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    q = MatMulNBitsQuantizer(
        onnx.load(str(fp32)),
        bits=4,
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=4,
    )
    q.process()
    q.model.save_model_to_file(
        str(out_dir / "model.onnx"), use_external_data_format=_needs_external(fp32)
    )
    return {"block_size": block_size, "op": "MatMulNBits", "accuracy_level": 4}


def _int4(fp32: Path, out_dir: Path, options: ArtifactOptions, src: Prepared) -> dict[str, object]:
    return quantize_int4(fp32, out_dir, options.block_size)


def _gguf_exact(
    fp32: Path, out_dir: Path, options: ArtifactOptions, src: Prepared
) -> dict[str, object]:
    from edgespec.errors import EdgespecError
    from edgespec.export.gguf_exact import build_exact_onnx

    if src.gguf_path is None:
        raise EdgespecError(
            f"--quant gguf-exact keeps a GGUF file's own quantized blocks, but '{src.name}' "
            "is not a GGUF; use int4 or int8"
        )
    build_exact_onnx(src.gguf_path, fp32.parent, out_dir, progress=options.progress)
    return {"op": "MatMulNBits", "weights": "the GGUF's own blocks", "accuracy_level": 4}


#: quantization -> (fp32 model.onnx, artifact folder, options, source) -> manifest details
QUANTIZERS = {"fp32": _copy_fp32, "int8": _int8, "int4": _int4, "gguf-exact": _gguf_exact}


class OnnxExporter(Exporter):
    """ONNX graphs for the ``onnx`` backend; the fp32 export is made once per source."""

    name = "onnx"
    quants = tuple(QUANTIZERS)
    backend = "onnx"
    source_kind = "onnx"

    def __init__(self) -> None:
        self._fp32: dict[Path, Path] = {}

    def _fp32_graph(self, src: Prepared, options: ArtifactOptions) -> Path:
        if src.hf_dir not in self._fp32:
            from edgespec.export.hf_onnx import hf_to_onnx

            work = Path(options.workdir or src.hf_dir.parent) / f"onnx-fp32-{len(self._fp32)}"
            self._fp32[src.hf_dir] = hf_to_onnx(src.hf_dir, work, progress=options.progress)
        return self._fp32[src.hf_dir]

    def export(
        self, src: Prepared, out_dir: Path, quant: str, options: ArtifactOptions
    ) -> Artifact:
        from edgespec.export.hf_onnx import DEFAULT_GRAPH, MANIFEST

        out_dir.mkdir(parents=True, exist_ok=True)
        fp32 = self._fp32_graph(src, options)
        details = QUANTIZERS[quant](fp32, out_dir, options, src)
        if (fp32.parent / "genai_config.json").exists():  # marks the shared-KV graph style
            shutil.copy2(fp32.parent / "genai_config.json", out_dir / "genai_config.json")
        copy_model_files(src, out_dir)
        meta = {"format_version": 1, "graph": DEFAULT_GRAPH, "dtype": quant, "model": "model.onnx"}
        (out_dir / MANIFEST).write_text(json.dumps(meta, indent=2) + "\n")
        details["graph"] = DEFAULT_GRAPH
        return Artifact("onnx", quant, out_dir, details)


def _needs_external(model: Path) -> bool:
    return sum(f.stat().st_size for f in model.parent.glob("model.onnx*")) >= _LARGE
