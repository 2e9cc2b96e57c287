"""What the ``inputs_embeds`` / ``hidden_states`` edits (edgespec/export/embeds_inputs.py)
cost the ids path on the onnx backend: the same converted smollm2-135m graph with and
without the edits, in one process (docs/compression.md, Dolphin memory).

    python benchmarks/onnx_embeds_overhead.py [fp32|gguf-exact]

Converts (or reuses) smollm2-135m, builds two folders in a temporary directory beside the
conversion (hard links to the weights: ORT refuses symlinked external data; one
``model.onnx`` with the edits, one without), loads each with 2 threads, checks their logits
are bit-identical, then times 7 alternating rounds of a 64-token prefill and 64 one-token
steps and prints the medians and their ratios.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgespec import zoo
from edgespec.export.embeds_inputs import (
    EMBEDS_INPUT,
    HIDDEN_OUTPUT,
    add_embeds_inputs,
    add_hidden_output,
    remove_embeds_inputs,
)
from edgespec.export.hf_onnx import graph_io
from edgespec.runtimes import LoadOptions, ModelSource
from edgespec.runtimes.ort import OnnxModel, converted_folder, load_onnx_dir


def _variant(src: Path, out: Path, edited: bool) -> Path:
    out.mkdir()
    for f in src.iterdir():
        if f.name == "model.onnx":
            shutil.copy2(f, out / f.name)
        else:
            os.link(f, out / f.name)
    if edited:
        add_embeds_inputs(out / "model.onnx")
        add_hidden_output(out / "model.onnx")
    else:
        remove_embeds_inputs(out / "model.onnx")
    inputs, outputs = graph_io(out / "model.onnx")
    has = (EMBEDS_INPUT in inputs, HIDDEN_OUTPUT in outputs)
    if has != (edited, edited):
        sys.exit(f"{out.name}: the graph has (inputs_embeds, hidden_states) = {has}")
    return out


def main() -> None:
    weights = sys.argv[1] if len(sys.argv) > 1 else "fp32"
    path = zoo.pull("smollm2-135m", progress=False)
    options = LoadOptions(n_ctx=512, n_threads=2, progress=False, weights=weights)
    folder = converted_folder(ModelSource("gguf", path, "smollm2-135m"), options)
    prompt = [(i * 37 + 11) % 1000 for i in range(64)]
    with tempfile.TemporaryDirectory(prefix=".embeds-bench-", dir=folder.parent) as tmp:
        models: dict[str, OnnxModel] = {
            name: load_onnx_dir(_variant(folder, Path(tmp) / name, name == "edited"), options)
            for name in ("plain", "edited")
        }
        a, b = (m.forward(prompt) for m in models.values())
        print(f"{weights}: max |logits(edited) - logits(plain)| = {np.abs(a - b).max()}")

        def run(m: OnnxModel, n: int = 64) -> tuple[float, float]:
            m.reset()
            t = time.perf_counter()
            m.forward(prompt, all_logits=False)
            prefill = time.perf_counter() - t
            t = time.perf_counter()
            for i in range(n):
                m.forward([(i * 31 + 7) % 1000], all_logits=False)
            return prefill * 1e3, (time.perf_counter() - t) / n * 1e3

        res: dict[str, list[tuple[float, float]]] = {k: [] for k in models}
        for _ in range(7):
            for name, m in models.items():
                res[name].append(run(m))
    med = {k: [statistics.median(r[j] for r in v) for j in range(2)] for k, v in res.items()}
    for k, (pre, step) in med.items():
        print(f"{k}: prefill 64 tokens {pre:.1f} ms, one-token step {step:.2f} ms (medians)")
    print(
        f"edited / plain: prefill {med['edited'][0] / med['plain'][0]:.3f}, "
        f"step {med['edited'][1] / med['plain'][1]:.3f}"
    )


if __name__ == "__main__":
    main()
