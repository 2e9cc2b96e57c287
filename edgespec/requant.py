"""A GGUF model requantized to another block type by llama.cpp's own quantizer, cached.

What it is for: a draft model's weights (``draft_quant``, docs/speculative.md; by default
:func:`auto_quant` chooses when ``edgespec.load`` loads a draft). A draft
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
from edgespec.runtimes.base import Backend, ModelSource

#: ``draft_quant`` names -> llama.cpp's ``LLAMA_FTYPE_MOSTLY_*`` suffix
QUANTS: dict[str, str] = {
    "q4_0": "Q4_0",
    "q4_1": "Q4_1",
    "q5_0": "Q5_0",
    "q8_0": "Q8_0",
    "q4_k_m": "Q4_K_M",
}


#: what ``edgespec.load``'s ``draft_quant`` takes besides the names of :data:`QUANTS`:
#: "auto" (:func:`auto_quant` chooses) and "file" (the file's own types; "none" says the same)
DRAFT_CHOICES = ("auto", "file")
#: the type "auto" requantizes a draft to
AUTO_QUANT = "q4_0"
#: "auto" requantizes a draft whose layers' matrices average more bits a weight than this.
#: Q4_1 stores 5.0, Q4_0 and Q4_K 4.5: at or below 5.0 the Q4_0 copy would stream at most
#: 10 % fewer bytes (SmolLM2's Q4_1 file, the Qwen 1.5B's Q4_K_M at 4.81). The Qwen2.5-Coder
#: 0.5B's Q4_K_M file averages 5.52 (its rows of 896 fall back to Q5_0), and its Q4_0 copy
#: drafted one token in 0.58x the time at the same top-1 agreement with the 1.5B target,
#: `auto` 1.03-1.07x faster over 24 prompt-rounds in each of five bench runs
#: (docs/benchmarks.md sections 30 and 31)
AUTO_ABOVE_BITS = 5.0
#: the last-level cache assumed where the CPU does not say (bytes)
DEFAULT_CACHE_BYTES = 32 << 20


def draft_choice(value: str | None) -> str:
    """``value`` as ``edgespec.load``'s ``draft_quant`` takes it: "auto" (also None), "file"
    (also "none") or a name of :data:`QUANTS`; anything else is a one-line error."""
    if value is None:
        return "auto"
    if value == "none":
        return "file"
    if value not in (*DRAFT_CHOICES, *QUANTS):
        raise EdgespecError(
            f"unknown draft quantization '{value}'; known: {', '.join((*DRAFT_CHOICES, *QUANTS))}"
        )
    return value


def layer_bits(source: ModelSource) -> float:
    """Bits a weight, on average, of the GGUF file's layer matrices (the 2-D tensors named
    ``blk.*``: what every drafted token streams, whatever its output head)."""
    from edgespec.gguf_file import open_gguf

    nbytes = elements = 0
    for t in open_gguf(source.path).reader.tensors:
        if t.name.startswith("blk.") and len(t.shape) >= 2:
            nbytes += int(t.n_bytes)
            elements += int(t.n_elements)
    return 8.0 * nbytes / elements if elements else 0.0


def cache_bytes() -> int:
    """This CPU's largest cache (Linux ``sysfs``), or :data:`DEFAULT_CACHE_BYTES`."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        if text[:-1].isdigit() and text[-1] in units:
            sizes.append(int(text[:-1]) * units[text[-1]])
        elif text.isdigit():
            sizes.append(int(text))
    return max(sizes, default=DEFAULT_CACHE_BYTES)


def auto_quant(
    source: ModelSource, backend: type[Backend] | None = None, weights: str = "auto"
) -> str | None:
    """What ``draft_quant="auto"`` does with the draft ``source`` loaded on ``backend`` (a
    backend class) with ``weights`` (``LoadOptions.weights``): :data:`AUTO_QUANT` where it
    is a GGUF file that does not fit in this CPU's last-level cache (each drafted token
    streams it from memory), whose layers average more than :data:`AUTO_ABOVE_BITS` bits a
    weight, on a backend that runs the file's own blocks (``streams_blocks``, and not
    ``weights="fp32"``, which dequantizes them); else None, the file as it is."""
    if source.kind != "gguf" or weights == "fp32":
        return None
    if backend is not None and not backend.streams_blocks:
        return None
    if source.path.stat().st_size <= cache_bytes():
        return None
    return AUTO_QUANT if layer_bits(source) > AUTO_ABOVE_BITS else None


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
