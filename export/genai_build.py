"""Run onnxruntime-genai's model builder on an HF folder, in a child process.

``python -m edgespec.export.genai_build HF_DIR OUT_DIR PRECISION [KEY=VALUE ...]`` writes
``OUT_DIR/model.onnx`` (+ ``model.onnx.data``) and ``genai_config.json``: a decoder graph with
``GroupQueryAttention`` whose past and present KV can share one preallocated buffer
(``past_present_share_buffer``), which :mod:`edgespec.runtimes.ort` drives through IOBinding.

Why a child process: the builder puts its own folder on ``sys.path`` and imports torch,
transformers and onnxruntime-genai's native library; none of that belongs in the caller.
Why a wrapper at all: the builder also saves the HF tokenizer beside the graph, which fails
for folders without one (GGUF dequantizations, tiny test models). edgespec takes its
tokenizer from elsewhere, so a missing tokenizer is skipped here.
"""

from __future__ import annotations

import runpy
import sys
from typing import Any


def _tolerant_save_processing(original: Any) -> Any:
    def save_processing(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            original(self, *args, **kwargs)
        except Exception as exc:  # no tokenizer files: edgespec tokenizes elsewhere
            print(f"note: tokenizer not saved ({type(exc).__name__})", file=sys.stderr)

    return save_processing


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(
            "usage: python -m edgespec.export.genai_build HF_DIR OUT_DIR PRECISION [K=V ...]",
            file=sys.stderr,
        )
        return 2
    hf_dir, out_dir, precision, *extra = argv
    import onnxruntime_genai.models  # noqa: F401  (puts the builder's folder on sys.path)
    from builders import base  # type: ignore[import-not-found]

    base.Model.save_processing = _tolerant_save_processing(base.Model.save_processing)
    args = ["builder", "-i", hf_dir, "-o", out_dir, "-p", precision, "-e", "cpu"]
    args += ["-c", f"{out_dir}/.cache"]
    if extra:
        args += ["--extra_options", *extra]
    sys.argv = args
    runpy.run_module("builder", run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
