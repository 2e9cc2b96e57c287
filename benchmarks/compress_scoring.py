"""What the compressor's scoring pass costs on each backend, and the log-softmax inside it.

    python benchmarks/compress_scoring.py [-m smollm2-135m] [--backends onnx llamacpp] \
        [--tokens 2048] [--chunk 512] [--repeats 3] [-t 2]

1. ``self_information`` (one scoring pass: batched forwards that return every row's
   logits) over ``--tokens`` random ids, on each backend with the load options
   ``edgespec.compress.prompt.SCORING_BACKENDS`` gives it (onnx: fp32 weights), medians
   of ``--repeats`` interleaved rounds. This is the measurement behind that table's order.
2. The log-softmax of one ``[chunk, vocab]`` block of float32 logits: the float64 copy
   the scorer used before against ``token_information`` (float32, 64-row blocks), medians,
   and their max |difference| in nats (the tolerance of
   ``tests/compress/test_compress_scoring.py``).

On a shared machine the seconds are directional; the ratios are what the order rests on.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np

from edgespec.bench.timing import median_ms
from edgespec.compress.core import self_information, token_information
from edgespec.compress.prompt import scoring_backend
from edgespec.runtimes.base import LoadOptions
from edgespec.sources import resolve
from edgespec.threads import load_tuned


def float64_information(rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The scorer's former log-softmax: a float64 copy of every row."""
    r = np.asarray(rows, np.float64)
    peak = r.max(axis=-1)
    lse = peak + np.log(np.exp(r - peak[:, None]).sum(axis=-1))
    return lse - r[np.arange(len(ids)), ids]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default="smollm2-135m")
    ap.add_argument("--backends", nargs="*", default=["onnx", "llamacpp"])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("-t", "--threads", type=int, default=2)
    a = ap.parse_args()

    src = resolve(a.model, progress=False)
    models = {}
    for name in a.backends:
        opts = LoadOptions(n_ctx=a.tokens + a.chunk, n_threads=a.threads, progress=False)
        backend, opts = scoring_backend(src, name, opts)
        models[f"{backend} (weights {opts.weights})"] = load_tuned(src, backend, opts)[0]
    vocab = next(iter(models.values())).info.vocab_size if models else 49152
    rng = np.random.default_rng(0)
    ids = [int(x) for x in rng.integers(100, min(vocab, 40000), a.tokens)]
    if models:

        def scorer(model: Any) -> Callable[[], object]:
            return lambda: self_information(model, ids, chunk=a.chunk)

        ms = median_ms({k: scorer(m) for k, m in models.items()}, a.repeats)
        print(f"self_information, {a.tokens} tokens in chunks of {a.chunk}, {a.threads} threads")
        for k, v in ms.items():
            print(f"  {k}: {v / 1e3:.2f} s ({a.tokens / v * 1e3:.0f} tokens/s)")
        for m in models.values():
            m.close()
    rows = (rng.standard_normal((a.chunk, vocab)) * 3).astype(np.float32)
    nxt = rng.integers(0, vocab, a.chunk)
    ms = median_ms(
        {
            "float64 copy": lambda: float64_information(rows, nxt),
            "token_information (float32 blocks)": lambda: token_information(rows, nxt),
        },
        a.repeats,
    )
    diff = np.abs(float64_information(rows, nxt) - token_information(rows, nxt)).max()
    print(f"log-softmax of [{a.chunk}, {vocab}] float32 logits:")
    for k, v in ms.items():
        print(f"  {k}: {v:.1f} ms")
    print(f"  max |difference|: {diff:.2g} nats")


if __name__ == "__main__":
    main()
