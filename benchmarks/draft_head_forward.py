"""A draft model's one-token forward with and without a frequent-token head, in one process,
alternating rounds (so host drift moves both alike): the numbers in docs/benchmarks.md
section 10. Also checks that the kept logits equal the full head's bit for bit.

    .venv/bin/python benchmarks/draft_head_forward.py --model qwen2.5-coder-0.5b --head 32768
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--head", type=int, default=32768, help="tokens the head keeps")
    ap.add_argument("--weights", default="gguf-q8act")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20, help="one-token forwards per round")
    args = ap.parse_args()

    from edgespec.bench.timing import decode_ms
    from edgespec.draft_head import frequent_tokens
    from edgespec.runtime import load_tokenizer
    from edgespec.runtimes import BACKENDS, LoadOptions
    from edgespec.sources import resolve

    src = resolve(args.model, progress=False)
    tok = load_tokenizer(src)
    opts = LoadOptions(n_ctx=512, n_threads=args.threads, weights=args.weights, progress=False)
    full = BACKENDS.get("tvm").load(src, opts)
    head = full.with_head(frequent_tokens(tok, full.info.vocab_size, args.head))
    prompt = tok.encode('def quicksort(xs):\n    """Sort a list."""\n')
    a, b = full.forward(prompt), head.forward(prompt)
    ids = head.head_ids
    assert ids is not None
    print(f"kept logits equal bit for bit: {bool(np.array_equal(a[:, ids], b[:, ids]))}")
    print("| round | full head ms (median) | head ms (median) | head / full |")
    print("|---|---|---|---|")
    ratios = []
    for r in range(args.rounds):
        med = {}
        for name, m in (("full", full), ("head", head)):
            med[name] = decode_ms(m, len(prompt), args.reps)
        ratios.append(med["head"] / med["full"])
        print(f"| {r + 1} | {med['full']:.1f} | {med['head']:.1f} | {ratios[-1]:.3f} |")
    print(f"median head / full over rounds: {np.median(ratios):.3f}")


if __name__ == "__main__":
    main()
