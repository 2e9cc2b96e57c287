"""A GGUF model requantized to another block type by llama.cpp's own quantizer, cached.

What it is for: a draft model's weights (``draft_quant``, docs/speculative.md). A draft
only proposes tokens, and the target verifies every one, so a draft in fewer bits changes
how many tokens are accepted but never the output. On small CPUs the draft's forward is a
large share of a speculative step, and its cost is the bytes it streams: the Qwen2.5-Coder
0.5B's Q4_K_M file keeps most matrices in Q5_0 and Q6_K (its rows of 896 are no multiple
of 256, so llama.cpp's Q4_K mix falls back to Q5_0), and the same model in Q4_0 drafts one
token in 0.58x the time with its top-1 agreement with the 1.5B target about the same
(0.841 -> 0.839; docs/benchmarks.md section 30).

The copy is written by ``llama_model_quantize`` (llama-cpp-python) with requantizing
allowed: every quantized tensor is dequantized and quantized again, the rest copied; the
file's types where a row does not fit the new block (llama.cpp's fallbacks) are its call.
It lives under ``$EDGESPEC_HOME/converted/requant``, named by the source's content digest
and the type, written to a temporary name and renamed, so an interrupted run leaves
nothing behind and a second run reuses it.
"""

from __future__ import annotations

from pathlib import Path

from edgespec.errors import EdgespecError
from edgespec.home import converted_dir
from edgespec.runtimes.base import ModelSource

#: ``draft_quant`` names -> llama.cpp's ``LLAMA_FTYPE_MOSTLY_*`` suffix
QUANTS: dict[str, str] = {
    "q4_0": "Q4_0",
    "q4_1": "Q4_1",
    "q5_0": "Q5_0",
    "q8_0": "Q8_0",
    "q4_k_m": "Q4_K_M",
}


def check_quant(quant: str) -> str:
    """``quant`` if it is a known name, else a one-line error listing them."""
    if quant not in QUANTS:
        raise EdgespecError(f"unknown quantization '{quant}'; known: {', '.join(QUANTS)}")
    return quant


def requantized_path(source: ModelSource, quant: str) -> Path:
    """Where :func:`requantize` keeps ``source`` in ``quant``: keyed by its content digest,
    so an edited file of the same name gets a new copy."""
    stem = source.path.stem.replace(" ", "_")
    return converted_dir() / "requant" / f"{stem}-{source.digest()[:16]}-{quant}.gguf"


def requantize(source: ModelSource, quant: str, *, progress: bool = True) -> ModelSource:
    """``source`` (a GGUF file) requantized to ``quant``, written once and cached.

    Raises:
        EdgespecError: an unknown ``quant``, a source that is not one GGUF file (naming the
            export that makes one), llama-cpp-python missing, or the quantizer failing.
    """
    check_quant(quant)
    if source.kind != "gguf":
        raise EdgespecError(
            f"draft_quant needs a GGUF model, and '{source.name}' is {source.kind}; export "
            f"one with `edgespec export --format gguf --quant {quant}` and pass that file"
        )
    out = requantized_path(source, quant)
    if not out.exists():
        import sys

        from edgespec.export.gguf_export import llamacpp_quantize

        if progress:
            print(
                f"requantizing {source.path.name} to {QUANTS[quant]} (once; cached in "
                f"{out.parent})",
                file=sys.stderr,
            )
        llamacpp_quantize(source.path, out, QUANTS[quant], requantize=True)
    return ModelSource("gguf", out, f"{source.name}@{quant}")
