"""Full context vs prompt compression vs Dolphin memory, side by side in one run.

    python benchmarks/memory_compression.py --projector OUT/projector.npz \
        [-m smollm2-135m] [--workloads long/needle long/multifact] [--per-workload 2] \
        [--max-tokens 1200] [--ratio 0.5] [-n 8] [-t 1] [--json FILE]

One target (the NumPy reference, the only backend with ``inputs_embeds`` so far) is loaded
once and answers every prompt three ways, greedily, one after the other:

- ``full``: the whole prompt;
- ``prompt R``: ``--compress R`` (self-information, the target as its own compressor);
- ``memory``: ``--compress memory`` (the compressor reads the context, the projector's N
  vectors replace it).

Per row: tokens the target received, whether the answer is in the output (the workloads'
``answer``), time to first token (compressor and memory prefill included) and the text.
Prompts longer than ``--max-tokens`` target tokens are skipped (the 2k-8k needles take
minutes per configuration on the NumPy reference). Times on a shared machine are
directional; the counts are what the comparison rests on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Any

import edgespec
from edgespec.bench.workloads import is_correct, load_workloads
from edgespec.compress.dolphin.memory import MemoryOptions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default="smollm2-135m")
    ap.add_argument("--projector", required=True, help="from edgespec train-compressor")
    ap.add_argument("--compressor", default=None, help="the projector's compressor")
    ap.add_argument("--workloads", nargs="+", default=["long/needle", "long/multifact"])
    ap.add_argument("--per-workload", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=1200)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("-n", "--max-new-tokens", type=int, default=8)
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the rows here")
    a = ap.parse_args()

    configs: list[tuple[str, Any]] = [
        ("full", None),
        (f"prompt {a.ratio:g}", a.ratio),
        ("memory", MemoryOptions(projector=a.projector)),
    ]
    rows = []
    with edgespec.load(
        a.model,
        backend="numpy",
        n_ctx=a.max_tokens + 64,
        n_threads=a.threads,
        compressor=a.compressor,
        progress=False,
    ) as rt:
        for p in load_workloads(a.workloads, a.per_workload):
            n = len(rt.tokenizer.encode(p.prompt))
            if n > a.max_tokens:
                print(f"skip {p.id}: {n} tokens > --max-tokens {a.max_tokens}")
                continue
            for name, compress in configs:
                r = rt.generate(p.prompt, compress=compress, max_new_tokens=a.max_new_tokens)
                s = r.stats
                row = {
                    "prompt": p.id,
                    "config": name,
                    "tokens_in": s.compressed_to or s.prompt_tokens,
                    "prompt_tokens": n,
                    "correct": is_correct(r.text, p.answer),
                    "ttft_s": s.ttft_s,
                    "compress_s": s.compress_s,
                    "lossy": s.lossy,
                    "text": r.text,
                }
                rows.append(row)
                print(
                    f"{p.id:18s} {name:10s} in={row['tokens_in']:5d} "
                    f"correct={row['correct']!s:5s} ttft={s.ttft_s:7.2f}s {r.text!r}",
                    flush=True,
                )
    print(f"\n{'config':10s} {'correct':>8s} {'median tokens in':>17s} {'median ttft s':>14s}")
    for name, _ in configs:
        mine = [r for r in rows if r["config"] == name]
        if not mine:
            continue
        ok = sum(r["correct"] for r in mine)
        tin = statistics.median(r["tokens_in"] for r in mine)
        ttft = statistics.median(r["ttft_s"] for r in mine)
        print(f"{name:10s} {ok:>4d}/{len(mine):<3d} {tin:17.0f} {ttft:14.2f}")
    print(
        f"load average at the end: {os.getloadavg()[0]:.1f} (a shared machine: times are "
        "directional)"
    )
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
