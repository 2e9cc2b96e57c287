"""Two configurations of one `edgespec bench` run compared prompt by prompt and round by
round: the ratios behind the "X / Y per prompt and round" tables of docs/benchmarks.md.

Both configurations ran beside each other in the same rounds (bench interleaves them), so
the ratio of their tokens/s for one prompt in one round is a side-by-side measurement; this
prints, per workload and over all, the median of those ratios, their range, how many were
above 1, and each configuration's tokens per target forward.

    .venv/bin/python benchmarks/pair_runs.py docs/results/draft-head-slots-qwen/results.json \
        "speculative:proposers=draft:k=4:draft_head=32768:draft_head_prompt=0@tvm" \
        "speculative:proposers=draft:k=4:draft_head=32768@tvm"
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any


def pairs(runs: list[dict[str, Any]], a: str, b: str) -> dict[str, list[tuple[float, Any, Any]]]:
    """``{workload: [(tok/s of b over a, run a, run b)]}`` for every prompt and round that
    both labels ran."""
    by = {(r["label"], r["prompt"], r["run"]): r for r in runs}
    out: dict[str, list[tuple[float, Any, Any]]] = {}
    for (label, prompt, run), ra in sorted(by.items()):
        rb = by.get((b, prompt, run))
        if label != a or rb is None:
            continue
        out.setdefault(ra["kind"], []).append((rb["tok_s"] / ra["tok_s"], ra, rb))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="results.json of an edgespec bench run")
    ap.add_argument("a", help="the reference configuration's label (as in the report)")
    ap.add_argument("b", help="the configuration compared with it")
    args = ap.parse_args()
    data = json.loads(args.results.read_text())
    labels = sorted({r["label"] for r in data["runs"]})
    for want in (args.a, args.b):
        if want not in labels:
            sys.exit(f"pair_runs: no runs labelled '{want}'; labels: {', '.join(labels)}")
    table = pairs(data["runs"], args.a, args.b)
    table["all"] = [p for rows in table.values() for p in rows]
    print(f"{args.b} / {args.a}, tokens/s per prompt and round")
    print("| workload | median | min-max | faster | tokens per forward, a -> b |")
    print("|---|---|---|---|---|")
    for kind, rows in table.items():
        ratios = [r for r, _, _ in rows]
        fa = statistics.mean(ra["mean_accepted"] for _, ra, _ in rows)
        fb = statistics.mean(rb["mean_accepted"] for _, _, rb in rows)
        print(
            f"| {kind} | {statistics.median(ratios):.3f}x | {min(ratios):.2f}-{max(ratios):.2f}"
            f" | {sum(r > 1 for r in ratios)} of {len(ratios)} | {fa:.2f} -> {fb:.2f} |"
        )


if __name__ == "__main__":
    main()
