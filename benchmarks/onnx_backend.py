"""ONNX backend: plain decode tok/s and k-token forward cost, per graph style and quantization.

Rows: llama.cpp on the same GGUF (the reference), then each ONNX graph style of
:data:`edgespec.export.hf_onnx.ONNX_GRAPHS` (``gqa``: shared KV buffer via IOBinding;
``optimum``: KV copied in and out) in fp32 and int4 (MatMulNBits), and for GGUF sources the
``gqa`` graph with the file's own quantized weights (``gguf-exact``). Everything is measured
side by side in one process (repetitions interleaved), on the same model, threads and
context. Writes a Markdown table (``--out``) with the command behind it.

    python benchmarks/onnx_backend.py --model smollm2-135m --threads 2 \
        --out docs/benchmarks-onnx.md
"""

from __future__ import annotations

import argparse
import platform
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def int4_dir(fp32: Path, block_size: int) -> Path:
    """The int4 (MatMulNBits) variant of a cached fp32 export, made once beside it."""
    from edgespec.export.onnx_export import quantize_int4
    from edgespec.fileutil import atomic_dir

    out = fp32.parent / f"{fp32.name}-int4-b{block_size}"
    stamp = (fp32 / "edgespec-onnx.json").read_text()  # names the fp32 conversion's version
    made_from = out / "source-manifest.json"
    if made_from.exists() and made_from.read_text() == stamp:
        return out
    shutil.rmtree(out, ignore_errors=True)  # made from an older fp32 conversion
    with atomic_dir(out) as tmp:
        quantize_int4(fp32 / "model.onnx", tmp, block_size)  # as `edgespec export --quant int4`
        for name in ("config.json", "genai_config.json"):
            if (fp32 / name).exists():
                (tmp / name).write_bytes((fp32 / name).read_bytes())
        (tmp / "edgespec-onnx.json").write_text('{"dtype": "int4"}\n')
        (tmp / "source-manifest.json").write_text(stamp)
    return out


REFERENCE = "llama.cpp (GGUF)"
FP32 = "onnx gqa fp32"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--context", type=int, default=128, help="cached tokens before each forward")
    p.add_argument("--decode", type=int, default=64, help="tokens per decode run")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--out", default=None)
    a = p.parse_args()

    from edgespec.export.gguf_exact import ensure_exact_onnx
    from edgespec.export.hf_onnx import ONNX_GRAPHS, ensure_onnx
    from edgespec.quality import exact_prefix
    from edgespec.runtimes import BACKENDS
    from edgespec.runtimes.base import LoadOptions
    from edgespec.runtimes.ort import load_onnx_dir
    from edgespec.sources import resolve

    source = resolve(a.model, progress=False)
    dirs: dict[str, Path] = {}
    for graph in sorted(ONNX_GRAPHS):
        fp32 = ensure_onnx(source, progress=False, graph=graph)
        dirs[f"onnx {graph} fp32"] = fp32
        dirs[f"onnx {graph} int4 (b{a.block_size})"] = int4_dir(fp32, a.block_size)
    if source.kind == "gguf":  # the GGUF's own quantized weights in MatMulNBits, not re-quantized
        dirs["onnx gqa gguf-exact"] = ensure_exact_onnx(source, progress=False)
    opts = LoadOptions(n_ctx=a.context + a.decode + 16, n_threads=a.threads, progress=False)
    # the reference a user would otherwise run: llama.cpp on the same GGUF, its default threads
    ref_opts = LoadOptions(n_ctx=opts.n_ctx, progress=False)
    models = {REFERENCE: BACKENDS.get("llamacpp").load(source, ref_opts)}
    models.update({k: load_onnx_dir(d, opts) for k, d in dirs.items()})
    if "onnx gqa gguf-exact" in dirs:  # the energy setting: idle ORT threads sleep
        quiet = LoadOptions(n_ctx=opts.n_ctx, n_threads=a.threads, progress=False, spin=False)
        models["onnx gqa gguf-exact, --no-spin"] = load_onnx_dir(dirs["onnx gqa gguf-exact"], quiet)
    vocab = next(iter(models.values())).info.vocab_size
    prompt = [int(x) for x in np.random.default_rng(0).integers(100, min(vocab, 20000), a.context)]
    ks = (1, 2, 4, 8)
    decode: dict[str, list[float]] = {k: [] for k in models}
    cpu: dict[str, list[float]] = {k: [] for k in models}  # CPU seconds per decoded token
    tokens: dict[str, list[int]] = {}
    fwd: dict[str, dict[int, list[float]]] = {k: {n: [] for n in ks} for k in models}
    for m in models.values():  # warm-up
        m.truncate(0)
        m.forward(prompt)
        m.forward([5])
    for _ in range(a.reps):
        for name, m in models.items():
            m.truncate(0)
            logits = m.forward(prompt, all_logits=False)
            out: list[int] = []
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(a.decode):
                out.append(int(np.argmax(logits[-1])))
                logits = m.forward([out[-1]], all_logits=False)
            decode[name].append(a.decode / (time.perf_counter() - t0))
            cpu[name].append((time.process_time() - c0) / a.decode)
            tokens[name] = out
            for n in ks:
                m.truncate(a.context)
                t0 = time.perf_counter()
                m.forward(prompt[:n])
                fwd[name][n].append(time.perf_counter() - t0)
    med = statistics.median
    cmd = "python " + " ".join(shlex.quote(x) for x in sys.argv)
    lines = [
        f"# ONNX backend: {a.model}, graph styles and quantizations, against llama.cpp",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {a.threads} threads; "
        f"context {a.context} cached tokens; medians of {a.reps} interleaved repetitions.",
        "",
        f"Command: `{cmd}`",
        "",
        "| graph | decode tok/s | x llama.cpp | CPU ms/token | "
        + " | ".join(f"k={n} ms (x k=1)" for n in ks)
        + f" | greedy = {FP32} |",
        "|---|---|---|---|" + "---|" * len(ks) + "---|",
    ]
    ref = med(decode[REFERENCE])
    for name in models:
        one = med(fwd[name][1])
        cells = [f"{med(fwd[name][n]) * 1e3:.1f} ({med(fwd[name][n]) / one:.2f}x)" for n in ks]
        speed = med(decode[name])
        same = exact_prefix(tokens[name], tokens[FP32]) if FP32 in tokens else 0
        lines.append(
            f"| {name} | {speed:.1f} | {speed / ref:.2f} | {med(cpu[name]) * 1e3:.1f} | "
            + " | ".join(cells)
            + f" | {same}/{a.decode} |"
        )
    lines += [
        "",
        "All rows are measured in one process, repetitions interleaved. `gqa`:",
        "onnxruntime-genai's model builder (GroupQueryAttention, one preallocated KV buffer",
        "per layer bound as past and present through IOBinding); `optimum`: optimum-onnx's",
        "export (past KV copied in and out of every call). int4 is MatMulNBits on that",
        "graph, symmetric, accuracy_level 4. `gguf-exact`: the gqa graph with the GGUF",
        "file's own codes and scales in MatMulNBits (accuracy_level 4; affine blocks add a",
        "block-sum residual MatMul), see edgespec/export/gguf_exact.py. The build machine",
        "is shared, so absolute numbers vary between runs; compare rows. `--no-spin`: the",
        "same graph with ORT's idle worker threads sleeping instead of spinning (the CPU",
        "column is this process's CPU time per decoded token). The last column",
        f"counts the decoded tokens equal to the `{FP32}` row's before the first",
        "difference (the same dequantized weights in float32).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
