"""What ``auto``'s controller chose and learned, generation after generation: per step the
proposer that drafted and its draft length, then each proposer's drafting cost per token
and acceptance estimates, the verify cost curve and the host drift. This is the diagnosis
in docs/benchmarks.md sections 10 and 12. Options after ``--config`` go to ``auto``
(e.g. ``--config probe_follow=false cost_drift=false`` for the controller before 12).

    .venv/bin/python benchmarks/auto_controller_state.py --workloads summarize chat json code

The step line has one character per step: ``.`` plain, else the proposer's initial
(``d`` draft, ``n`` ngram, ``r`` recycle); the line below it the draft length (9: 9 or more).
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b")
    ap.add_argument("--weights", default="gguf-q8act")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=2, help="rounds over the prompts")
    ap.add_argument("--workloads", nargs="+", default=["code"])
    ap.add_argument("--per-workload", type=int, default=1)
    ap.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("-n", type=int, default=128, help="new tokens per generation")
    args = ap.parse_args()

    import edgespec
    from edgespec.bench.workloads import load_workloads
    from edgespec.speculative.config import SpecConfig

    rt = edgespec.load(
        args.model,
        draft=args.draft,
        backend="tvm",
        weights=args.weights,
        n_threads=args.threads,
        progress=False,
    )
    pairs = (kv.split("=", 1) for kv in args.config)
    config = {k: SpecConfig.parse_value(k, v) for k, v in pairs} or None
    prompts = load_workloads(args.workloads, per_workload=args.per_workload)
    for i in range(args.runs):
        for p in prompts:
            res = rt.generate(
                p.prompt,
                chat=p.chat,
                max_new_tokens=args.n,
                strategy="auto",
                config=config,
                ignore_eos=True,
            )
            (session,) = rt._sessions.values()
            c, s = session.controller, res.stats
            drift = c.verify.drift
            cost = {n: round(v * drift * 1e3, 1) for n, v in c.draft_cost.items()}
            alpha = {n: [round(float(x), 2) for x in a.alpha[:4]] for n, a in c.acceptance.items()}
            curve = {n: round(c.verify(n) * 1e3, 1) for n in sorted(c.verify.points)}
            print(f"run {i + 1} {p.id}: {s.tokens_per_s:.1f} tok/s; {s.steps_by_proposer()}")
            print("  " + "".join(n[:1] or "." for n in s.proposer_trace))
            print("  " + "".join(str(min(k, 9)) for k in s.k_trace))
            print("  drafting cost per token (ms):", cost)
            print("  acceptance at positions 1-4:", alpha)
            print(f"  c_verify(n) (ms), drift {drift:.3f}:", curve)
    rt.close()


if __name__ == "__main__":
    main()
