"""KV-cache types on llama.cpp: memory for the context and greedy agreement with f16.

    python benchmarks/kv_cache.py [-m smollm2-135m] [-c 4096] [-n 64] [-t N]
        [--workloads code summarize] [--per-workload N]

Loads the model once per ``--kv-cache`` type (f32, f16, q8, q4), decodes every prompt of the
workloads greedily for ``-n`` tokens, and prints the KV cache's size and the share of tokens
equal to the f16 (llama.cpp default) run, position by position, up to the first difference
counted as a miss for the rest (docs/compression.md reports the numbers).
"""

from __future__ import annotations

import argparse

import edgespec
from edgespec.bench.workloads import load_workloads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default="smollm2-135m")
    ap.add_argument("-c", "--ctx-size", type=int, default=4096)
    ap.add_argument("-n", "--max-new-tokens", type=int, default=64)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--workloads", nargs="+", default=["code", "summarize"])
    ap.add_argument("--per-workload", type=int, default=None, help="first N prompts of each")
    a = ap.parse_args()
    prompts = load_workloads(a.workloads, a.per_workload)
    outputs: dict[str, list[list[int]]] = {}
    sizes: dict[str, float] = {}
    for kv in ("f16", "f32", "q8", "q4"):
        rt = edgespec.load(
            a.model,
            backend="llamacpp",
            n_ctx=a.ctx_size,
            n_threads=a.threads,
            kv_cache=kv,
            progress=False,
        )
        with rt:
            outs = []
            for p in prompts:
                r = rt.generate(
                    p.prompt, chat=p.chat, max_new_tokens=a.max_new_tokens, ignore_eos=True
                )
                outs.append(r.token_ids)
            outputs[kv] = outs
            sizes[kv] = r.stats.kv_cache_mb
    ref = outputs["f16"]
    print(f"{a.model}, n_ctx {a.ctx_size}, {len(prompts)} prompts x {a.max_new_tokens} tokens")
    print(f"{'kv':>4} {'MB':>8} {'x f16':>6} {'agree f16':>10} {'prefix f16':>11}")
    for kv, outs in outputs.items():
        same = sum(
            x == y for o, r in zip(outs, ref, strict=True) for x, y in zip(o, r, strict=True)
        )
        total = sum(len(r) for r in ref)
        prefix = 0
        for o, r in zip(outs, ref, strict=True):
            k = next((i for i, (x, y) in enumerate(zip(o, r, strict=True)) if x != y), len(r))
            prefix += k
        print(
            f"{kv:>4} {sizes[kv]:>8.1f} {sizes[kv] / sizes['f16']:>6.2f} "
            f"{same / total:>10.3f} {prefix / total:>11.3f}"
        )


if __name__ == "__main__":
    main()
