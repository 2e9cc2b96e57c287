"""How often a frequent-token draft head lacks the token the target generates: the numbers in
edgespec/draft_head.py's docstring and docs/speculative.md ("Frequent-token draft head").

The target decodes every prompt of the four workloads greedily (llama.cpp, ``-n`` tokens
each); for each head size, the share of those tokens outside the head, for the three ways to
choose it: the default (the Python standard library's token counts interleaved with the id
order), the counts alone, and the id order alone; and the default head whose last
``--slots`` rows are prompt slots, refilled per prompt with the prompt's tokens the rest
lacks (``--draft-head-prompt``). A token outside the head can never be drafted, so this
share bounds the acceptance a head can cost.

    .venv/bin/python benchmarks/draft_head_coverage.py --model qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ("code", "chat", "json", "summarize")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("-n", type=int, default=96, help="new tokens per prompt")
    ap.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384, 32768])
    ap.add_argument("--slots", type=int, default=1024, help="prompt slots of the last row")
    args = ap.parse_args()

    import edgespec
    from edgespec import draft_head

    rt = edgespec.load(args.model, backend="llamacpp", progress=False)
    generated: dict[str, list[int]] = {}
    runs: dict[str, list[tuple[list[int], list[int]]]] = {}  # (prompt ids, generated ids)
    for wl in WORKLOADS:
        lines = (ROOT / "benchmarks" / "workloads" / f"{wl}.jsonl").read_text().splitlines()
        generated[wl], runs[wl] = [], []
        for line in lines:
            p = json.loads(line)
            res = rt.generate(p["prompt"], max_new_tokens=args.n, chat=p.get("chat", False))
            generated[wl] += res.token_ids
            runs[wl].append((rt.tokenizer.encode(p["prompt"]), res.token_ids))
    tok, V = rt.tokenizer, rt.target.info.vocab_size
    texts = draft_head._read_corpus(draft_head.default_corpus(), draft_head.CORPUS_CHARS)
    counts = draft_head.token_counts(tok, texts, V)
    always = draft_head._always(tok, V)
    print(f"{args.model}: {sum(map(len, generated.values()))} generated tokens, "
          f"corpus {sum(map(len, texts)) / 1e6:.1f} M characters")  # fmt: skip
    print("share of generated tokens outside the head, per workload:")
    print("| head | choice | " + " | ".join(WORKLOADS) + " |")
    print("|---|---|" + "---|" * len(WORKLOADS))
    for size in args.sizes:
        heads = {
            "default (counts + id order)": draft_head.select(counts, size, always, True),
            "counts alone": draft_head.select(counts, size, always),
            "id order alone": draft_head.select(np.zeros_like(counts), size, always),
        }
        for name, ids in heads.items():
            kept = np.zeros(V, dtype=bool)
            kept[ids] = True
            shares = [100 * float(np.mean(~kept[np.asarray(generated[w])])) for w in WORKLOADS]
            print(f"| {size} | {name} | " + " | ".join(f"{s:.1f} %" for s in shares) + " |")
        slots = draft_head.slot_count(args.slots, size)
        core_ids = draft_head.select(counts, size - slots, always, True)
        fillers = np.setdiff1d(draft_head.select(counts, size, always, True), core_ids)
        core = np.zeros(V, dtype=bool)
        core[core_ids] = True
        shares = []
        for w in WORKLOADS:
            missed = 0
            for prompt, gen in runs[w]:
                kept = core.copy()
                kept[draft_head.prompt_slot_ids(prompt, core, fillers, slots)[0]] = True
                missed += int(np.sum(~kept[np.asarray(gen)]))
            shares.append(100 * missed / len(generated[w]))
        name = f"default, {slots} of it prompt slots"
        print(f"| {size} | {name} | " + " | ".join(f"{s:.1f} %" for s in shares) + " |")
    rt.close()


if __name__ == "__main__":
    main()
