"""--exact on one backend: the measured near-tie bound and plain-decoding speed, with and
without, in one process (docs/speculative.md, "What lossless means on each backend").

    python benchmarks/exact_mode.py onnx gguf-exact
    python benchmarks/exact_mode.py llamacpp

Loads smollm2-135m twice (exact off and on, 2 threads), measures each near-tie bound on 128
calibration positions (chains and trees), then times 7 alternating rounds of 64 plain
one-token steps and prints the medians.
"""

from __future__ import annotations

import statistics
import sys
import time

from edgespec import losslessness as ll
from edgespec import zoo
from edgespec.runtimes import BACKENDS, LoadOptions, ModelSource
from edgespec.tokenizer import load_tokenizer


def main() -> None:
    backend = sys.argv[1]
    weights = sys.argv[2] if len(sys.argv) > 2 else "auto"
    path = zoo.pull("smollm2-135m", progress=False)
    src = ModelSource("gguf", path, "smollm2-135m")
    tok = load_tokenizer(src)
    load = BACKENDS.get(backend).load
    models = {
        e: load(src, LoadOptions(n_ctx=512, n_threads=2, progress=False, weights=weights, exact=e))
        for e in (False, True)
    }
    for e, m in models.items():
        b = ll.calibrate_near_tie_bound(m, tok, positions=128)
        print(f"{backend} {weights} exact={e}: near-tie bound {b:.4g} (128 positions)")
    prompt = tok.encode("The Amazon rainforest covers much of the Amazon basin of South America.")

    def plain(m, n: int = 64) -> float:
        m.reset()
        m.forward(prompt, all_logits=False)
        t = time.perf_counter()
        for i in range(n):
            m.forward([(i * 31 + 7) % 1000], all_logits=False)
        return n / (time.perf_counter() - t)

    res: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(7):
        for e, m in models.items():
            res[e].append(plain(m))
    for e, runs in res.items():
        print(f"exact={e}: plain tok/s median {statistics.median(runs):.1f}")
    ratio = statistics.median(res[True]) / statistics.median(res[False])
    print(f"exact / plain speed: {ratio:.3f}")


if __name__ == "__main__":
    main()
