"""What `auto`'s plain step costs over the autoregressive strategy's, on one backend: the
same model in one process, 128-token generations of one prompt alternating between
``autoregressive`` and ``auto:probe_every=0`` (which, where speculation cannot pay, never
drafts: checked), milliseconds per token, medians and minima over ``--reps`` rounds after
one warm-up round. Where `auto` decodes plainly, the difference is its step's own cost:
the controller's choice, the proposers' bookkeeping, the speculative step's plumbing.

    .venv/bin/python benchmarks/auto_plain_step.py --model smollm2-135m --backend llamacpp
"""

from __future__ import annotations

import argparse
import statistics
import time

import edgespec
from edgespec.speculative.config import SpecConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--backend", default="llamacpp")
    ap.add_argument("--reps", type=int, default=6, help="timed rounds (after one warm-up)")
    ap.add_argument("-n", type=int, default=128, help="new tokens per generation")
    ap.add_argument("--prompt", default="def quicksort(xs):\n    ")
    ap.add_argument(
        "--proposers", nargs="+", default=None, help="auto's proposers (default: its own)"
    )
    a = ap.parse_args()
    rt = edgespec.load(a.model, backend=a.backend, progress=False)
    proposers = tuple(a.proposers) if a.proposers else None
    auto = SpecConfig(probe_every=0, proposers=proposers)
    configs = {"autoregressive": {}, "auto": {"config": auto}}
    times: dict[str, list[float]] = {name: [] for name in configs}
    for rep in range(a.reps + 1):
        order = list(configs) if rep % 2 == 0 else list(reversed(configs))
        for name in order:
            t = time.perf_counter()
            res = rt.generate(
                a.prompt, max_new_tokens=a.n, strategy=name, ignore_eos=True, **configs[name]
            )
            per_token = (time.perf_counter() - t) / len(res.token_ids)
            if any(res.stats.k_trace):
                raise SystemExit(f"{name} drafted on {a.backend}: not a plain-step comparison")
            if rep:
                times[name].append(per_token)
    named = f", auto's proposers {'+'.join(proposers)}" if proposers else ""
    print(f"{a.model} on {a.backend}, {a.n} tokens, {a.reps} rounds{named}, ms per token:")
    print("| strategy | median | min |")
    print("|---|---|---|")
    for name, v in times.items():
        print(f"| {name} | {statistics.median(v) * 1e3:.2f} | {min(v) * 1e3:.2f} |")
    med = {n: statistics.median(v) for n, v in times.items()}
    low = {n: min(v) for n, v in times.items()}
    print(
        f"auto / autoregressive: median {med['auto'] / med['autoregressive']:.3f}, "
        f"min {low['auto'] / low['autoregressive']:.3f}"
    )


if __name__ == "__main__":
    main()
