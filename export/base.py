"""The exporter extension point: one registry, one small interface.

An exporter turns a prepared source (an fp32 HF folder, see :mod:`edgespec.export.prepare`)
into one artifact folder and returns what the manifest records about it. Formats register
lazily, so ``import edgespec.export.base`` pulls no torch or onnx::

    EXPORTERS.get("onnx").export(prepared, out_dir, "int4", options)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from edgespec.registry import Registry


@dataclass(frozen=True)
class Prepared:
    """A source made ready for every exporter.

    Attributes:
        name: what the user called it (path, hub id, zoo name), for messages.
        kind: the original kind, "hf" or "gguf".
        hf_dir: an HF folder with config.json and float32 safetensors.
        config: the parsed config.json (the text config for multimodal ones).
        tokenizer_dir: a folder with tokenizer.json (+ tokenizer_config.json), or None.
        tokenizer_gguf: a GGUF file whose metadata holds the vocabulary, or None.
        source_entry: the manifest's ``source`` record (hub id + revision, or file + sha256).
        gguf_path: the original GGUF file, for GGUF sources.
    """

    name: str
    kind: str
    hf_dir: Path
    config: dict[str, Any]
    tokenizer_dir: Path | None
    tokenizer_gguf: Path | None
    source_entry: dict[str, Any]
    gguf_path: Path | None = None

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", ""))


@dataclass(frozen=True)
class ArtifactOptions:
    """Knobs that some exporters read.

    Attributes:
        block_size: int4 block size (MatMulNBits), in weights per scale; a power of two >= 16.
        progress: show progress bars.
        workdir: a scratch folder for intermediate files (removed after the export).
    """

    block_size: int = 32
    progress: bool = True
    workdir: Path | None = None


@dataclass
class Artifact:
    """What an exporter produced (the manifest adds sha256 and size).

    Attributes:
        format: "onnx" or "gguf".
        quantization: the quantization name ("fp32", "int4", "q8_0", ...).
        path: the artifact inside the role folder: a folder for ONNX, a file for GGUF.
        details: format-specific facts (block size, tensor types, ...).
        extra: other files the artifact consists of, pinned in the manifest with it (tvm:
            the compiled library and its description beside the weights file ``path``).
    """

    format: str
    quantization: str
    path: Path
    details: dict[str, Any] = field(default_factory=dict)
    extra: list[Path] = field(default_factory=list)


class Exporter(ABC):
    """Writes one artifact of one format.

    Class attributes:
        name: the registry name, also the ``--format`` value.
        quants: the quantizations it supports; the first is its default.
        backend: the backend that runs its artifacts (for verification and loading).
        source_kind: the :class:`~edgespec.runtimes.base.ModelSource` kind of its artifacts.
    """

    name: ClassVar[str]
    quants: ClassVar[tuple[str, ...]]
    backend: ClassVar[str]
    source_kind: ClassVar[str]

    @abstractmethod
    def export(
        self, src: Prepared, out_dir: Path, quant: str, options: ArtifactOptions
    ) -> Artifact:
        """Write the artifact under ``out_dir`` (a fresh folder) and describe it."""


#: ``--format`` name -> exporter class.
EXPORTERS: Registry[type[Exporter]] = Registry("export format")
EXPORTERS.add_lazy("onnx", "edgespec.export.onnx_export:OnnxExporter")
EXPORTERS.add_lazy("gguf", "edgespec.export.gguf_export:GgufExporter")
EXPORTERS.add_lazy("tvm", "edgespec.export.tvm_export:TvmExporter")

#: Model families the exporters can write (HF ``model_type``).
SUPPORTED_ARCHS = ("llama", "qwen2")

#: The one ``--quant`` vocabulary: name -> {format: that format's own name for it}. A name
#: applies to every ``--format`` that has it (``--format onnx,gguf --quant fp32`` writes ONNX
#: fp32 and GGUF f32); a format missing from a row does not offer that quantization.
QUANTS: dict[str, dict[str, str]] = {
    "fp32": {"onnx": "fp32", "gguf": "f32", "tvm": "fp32"},
    "fp16": {"gguf": "f16", "tvm": "fp16"},
    "int8": {"onnx": "int8", "gguf": "q8_0", "tvm": "int8"},
    "int4": {"onnx": "int4", "gguf": "q4_0", "tvm": "int4"},
    "q4_k_m": {"gguf": "q4_k_m"},
    "gguf-exact": {"onnx": "gguf-exact"},
}
#: other spellings users bring (GGUF's own names, numpy dtype names) -> the vocabulary's name
QUANT_ALIASES = {
    "f32": "fp32",
    "float32": "fp32",
    "f16": "fp16",
    "float16": "fp16",
    "q8_0": "int8",
    "q4_0": "int4",
}
#: what each (format, name) is, for ``--help`` and the docs
QUANT_NOTES = {
    ("onnx", "int8"): "dynamic int8 (weights and activations)",
    ("onnx", "int4"): "MatMulNBits, symmetric, --block-size",
    ("onnx", "gguf-exact"): "the GGUF source's own blocks (GGUF sources only)",
    ("gguf", "q8_0"): "8-bit blocks of 32",
    ("gguf", "q4_0"): "4-bit blocks of 32",
    ("gguf", "q4_k_m"): "llama.cpp's Q4_K_M mix (Q4_K, Q6_K), by llama.cpp's quantizer",
    ("tvm", "int8"): "weights file in q8_0; the library computes in fp32",
    ("tvm", "int4"): "weights file in q4_0; the library computes in fp32",
}


def quant_name(text: str) -> str:
    """The vocabulary's name for ``text`` (a name or an alias, any case).

    Raises:
        EdgespecError: ``text`` is neither, with the vocabulary in one line.
    """
    from edgespec.errors import EdgespecError

    key = text.strip().lower()
    name = QUANT_ALIASES.get(key, key)
    if name not in QUANTS:
        aliases = ", ".join(f"{a}={n}" for a, n in QUANT_ALIASES.items())
        raise EdgespecError(
            f"unknown --quant '{text}'; known: {', '.join(QUANTS)} (also {aliases}; "
            "FORMAT:NAME applies a name to one format only)"
        )
    return name


def format_quant(fmt: str, name: str, offered: tuple[str, ...]) -> str | None:
    """Format ``fmt``'s own spelling of vocabulary name ``name``, or None when it has none.

    Formats missing from :data:`QUANTS` spell the vocabulary as it is, when ``offered``
    (the exporter's ``quants``) has the name.
    """
    own = QUANTS[name].get(fmt) if any(fmt in row for row in QUANTS.values()) else name
    return own if own in offered else None


def quant_table() -> str:
    """The vocabulary as a plain-text table (``edgespec export --help``, docs/export.md)."""
    formats = list(dict.fromkeys(f for row in QUANTS.values() for f in row))
    rows = [("--quant", *formats, "also")]
    for name, row in QUANTS.items():
        also = ", ".join(a for a, n in QUANT_ALIASES.items() if n == name)
        rows.append((name, *(row.get(f, "-") for f in formats), also or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    notes = [f"{f} {q}: {text}" for (f, q), text in QUANT_NOTES.items()]
    return "\n".join(lines + notes)
