"""What ``auto``'s controller has learned after generations on one prompt: each proposer's
drafting cost per token, its acceptance estimates, and the draft lengths it chose. This is
the diagnosis in docs/benchmarks.md section 10. Run it at 99eba98 to see the draft's
catch-up charged as drafting cost, and at HEAD to see it without.

    .venv/bin/python benchmarks/auto_controller_state.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b")
    ap.add_argument("--weights", default="gguf-q8act")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("-n", type=int, default=128, help="new tokens per generation")
    args = ap.parse_args()

    import edgespec

    rt = edgespec.load(
        args.model,
        draft=args.draft,
        backend="tvm",
        weights=args.weights,
        n_threads=args.threads,
        progress=False,
    )
    line = (ROOT / "benchmarks" / "workloads" / "code.jsonl").read_text().splitlines()[0]
    prompt = json.loads(line)["prompt"]
    for i in range(args.runs):
        res = rt.generate(prompt, max_new_tokens=args.n, strategy="auto", ignore_eos=True)
        (session,) = rt._sessions.values()
        c = session.controller
        cost = {n: round(v * 1e3, 1) for n, v in c.draft_cost.items()}
        alpha = {n: [round(float(x), 2) for x in a.alpha[:4]] for n, a in c.acceptance.items()}
        curve = {n: round(v * 1e3, 1) for n, v in sorted(c.verify.points.items())}
        print(f"run {i + 1}: {res.stats.tokens_per_s:.1f} tok/s, k per step:")
        print("  " + "".join(str(min(k, 9)) for k in res.stats.k_trace))
        print("  drafting cost per token (ms):", cost)
        print("  acceptance at positions 1-4:", alpha)
        print("  c_verify(n) (ms):", curve)
    rt.close()


if __name__ == "__main__":
    main()
