"""Each bench row's speed-up over plain decoding as the stored cost curve predicts it, free of
the host's drift: a check on noisy wall-clock ratios.

For every edgespec configuration (``strategy@backend``) run of ``edgespec bench``'s
``results.json`` with a draft-length trace (``k_trace``,
one entry per target forward: k = 0 a plain step), the modeled time is ``sum c(k + 1)`` over
its steps, with ``c`` the curve given (milliseconds per forward of n tokens, as ``edgespec
calibrate`` prints it), and the modeled speed-up ``new_tokens * c(1) / that``. Drafting is
free in this model (n-gram lookups nearly are; a draft model is not, so its rows read high).
Prints per configuration the median and mean over runs and prompts, and with ``--per-prompt``
each prompt's runs.

    .venv/bin/python benchmarks/modeled_speedup.py docs/results/tvm-probe-qwen-code/results.json \\
        --curve 59.71,70.75,74.18,86.76,100.19,110.87,136.23,139.08,145.51,163.19
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="an edgespec bench results.json")
    ap.add_argument("--curve", required=True,
                    help="ms per forward of 1, 2, 3, ... tokens, comma-separated")  # fmt: skip
    ap.add_argument("--per-prompt", action="store_true", help="each prompt's runs too")
    args = ap.parse_args()
    curve = [float(x) for x in args.curve.split(",")]
    runs = json.loads(args.results.read_text())["runs"]
    by_label: dict[str, list[float]] = defaultdict(list)
    by_prompt: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in runs:
        if r.get("k_trace") is None or "@" not in r["label"] or not r["new_tokens"]:
            continue
        trace = r["k_trace"] or [0] * r["target_forwards"]
        modeled = sum(curve[min(k, len(curve) - 1)] for k in trace)
        speedup = r["new_tokens"] * curve[0] / modeled
        by_label[r["label"]].append(speedup)
        by_prompt[(r["prompt"], r["label"])].append(speedup)
    print("| config | modeled speed-up over plain, median | mean | runs |\n|---|---|---|---|")
    for label, xs in by_label.items():
        print(f"| {label} | {statistics.median(xs):.3f} | {statistics.mean(xs):.3f} | {len(xs)} |")
    if args.per_prompt:
        for (prompt, label), xs in sorted(by_prompt.items()):
            print(f"{prompt} {label}: " + ", ".join(f"{x:.2f}" for x in xs))


if __name__ == "__main__":
    main()
