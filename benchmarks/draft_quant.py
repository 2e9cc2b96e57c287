"""A draft model in its file's types against the same draft requantized (``draft_quant``):
its one-token forward, in one process with alternating rounds (so host drift moves both
alike), and how often its top-1 token is the target's, teacher-forced on the target's own
greedy answers to the shipped workload prompts (what speculation accepts). The numbers in
docs/benchmarks.md section 30.

    .venv/bin/python benchmarks/draft_quant.py --target qwen2.5-coder-1.5b \\
        --draft qwen2.5-coder-0.5b --quants q4_0 q8_0

Both drafts carry the frequent-token head that speculation gives them by default
(``draft_head.default_size``), so the forward timed is the one a speculative step runs.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b")
    ap.add_argument("--quants", nargs="+", default=["q4_0"], help="edgespec.requant.QUANTS")
    ap.add_argument("--backend", default="tvm")
    ap.add_argument("--weights", default="gguf-q8act")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20, help="one-token forwards per round")
    ap.add_argument("--workloads", nargs="+", default=["code", "json", "chat", "summarize"])
    ap.add_argument("--per-workload", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=96, help="target tokens per prompt")
    args = ap.parse_args()

    import edgespec
    from edgespec.bench.timing import decode_ms
    from edgespec.bench.workloads import load_workloads
    from edgespec.losslessness import plain_reference
    from edgespec.requant import check_quant
    from edgespec.speculative.config import SpecConfig
    from edgespec.speculative.proposers.draft_model import draft_of

    quants = [check_quant(q) for q in args.quants]
    rt = edgespec.load(
        args.target,
        draft=args.draft,
        backend=args.backend,
        weights=args.weights,
        n_threads=args.threads,
        n_ctx=1024,
        progress=False,
        draft_quant="file",  # the file's types as the baseline, each copy beside it
    )
    tok, target = rt.tokenizer, rt.target
    # what the draft proposer runs: speculation's default head and prompt slots on each
    drafts = {"file": draft_of(rt, SpecConfig())}
    drafts.update((q, draft_of(rt, SpecConfig(draft_quant=q))) for q in quants)
    size = drafts["file"].info.extra.get("head_tokens", "none")
    print(
        f"`benchmarks/draft_quant.py --target {args.target} --draft {args.draft} --quants "
        f"{' '.join(quants)} --threads {args.threads}` ({args.backend} --weights "
        f"{args.weights}; draft head {size}, {SpecConfig().draft_head_prompt} prompt slots)\n"
    )

    # one-token forwards, the drafts in turn within each round
    prompt = tok.encode('def quicksort(xs):\n    """Sort a list."""\n')
    for m in drafts.values():
        m.forward(prompt)
    names = list(drafts)
    print(
        "| round | "
        + " | ".join(f"{n} ms" for n in names)
        + " | "
        + " | ".join(f"{q} / file" for q in quants)
        + " |"
    )
    print("|---" * (len(names) + len(quants) + 1) + "|")
    ratios = []
    for r in range(args.rounds):
        med = {}
        for n in names:
            med[n] = decode_ms(drafts[n], len(prompt), args.reps)
        ratios.append([med[q] / med["file"] for q in quants])
        print(
            f"| {r + 1} | "
            + " | ".join(f"{med[n]:.1f}" for n in names)
            + " | "
            + " | ".join(f"{x:.3f}" for x in ratios[-1])
            + " |"
        )
    med_r = np.median(np.array(ratios), axis=0)
    print(
        "\nmedian over rounds: "
        + ", ".join(f"{q} / file {x:.3f}" for q, x in zip(quants, med_r, strict=True))
    )

    # teacher-forced top-1 agreement with the target's greedy answers
    hits = {n: 0 for n in names}
    per_kind: dict[str, dict[str, list[int]]] = {}
    total = 0
    for p in load_workloads(args.workloads, per_workload=args.per_workload):
        ids = rt.encode_prompt(p.prompt, chat=p.chat)
        gen = plain_reference(target, ids, args.new_tokens).tokens
        seq = ids + gen
        kind = per_kind.setdefault(p.kind, {n: [0, 0] for n in names})
        for n, m in drafts.items():
            m.reset()
            m.fit_head(ids)
            pred = np.argmax(m.forward(seq[:-1])[len(ids) - 1 :], axis=1)
            same = int(np.sum(pred == np.array(gen)))
            hits[n] += same
            kind[n][0] += same
            kind[n][1] += len(gen)
        total += len(gen)
    print(
        f"\nteacher-forced top-1 agreement with {args.target}'s greedy tokens "
        f"({args.per_workload} prompts a workload, {args.new_tokens} tokens each):\n"
    )
    print("| workload | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for kind_name, row in per_kind.items():
        print(
            f"| {kind_name} | " + " | ".join(f"{row[n][0] / row[n][1]:.3f}" for n in names) + " |"
        )
    print("| all | " + " | ".join(f"{hits[n] / total:.3f}" for n in names) + " |")


if __name__ == "__main__":
    main()
