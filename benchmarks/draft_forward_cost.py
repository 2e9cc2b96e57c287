"""What a drafted token costs: the draft model's one-token forward alone and between the
target's verify forwards.

Speculation interleaves the two models: k one-token draft forwards, then one (k+1)-token
target forward. If the target's forward evicted what the draft keeps warm (caches, the
thread pool's state), a drafted token would cost more live than alone. One process, both
models loaded once; each round primes both caches with the same context, then times
``--per-round`` draft forwards back to back ("alone"), then ``--per-round / 2`` pairs of draft
forwards each followed by a ``k+1``-token target forward, rolled back ("between": the first
draft forward after a target forward; "second": the next one), then the target's one-token
forward. Medians over ``--rounds`` rounds, in milliseconds.

    .venv/bin/python benchmarks/draft_forward_cost.py --head 32768
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any


def timed(model: Any, tokens: list[int], out: list[float], **kw: Any) -> None:
    """Append the seconds of ``model.forward(tokens, **kw)`` to ``out``."""
    t0 = time.perf_counter()
    model.forward(tokens, **kw)
    out.append(time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen2.5-coder-1.5b")
    p.add_argument("--draft", default="qwen2.5-coder-0.5b")
    p.add_argument("--backend", default="tvm")
    p.add_argument("--weights", default="gguf-q8act")
    p.add_argument("--head", type=int, default=0, help="the draft's frequent-token head (0: full)")
    p.add_argument("--k", type=int, default=4, help="the verify forward is k + 1 tokens")
    p.add_argument("--context", type=int, default=200)
    p.add_argument("--per-round", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()

    from edgespec.runtime import load

    rt = load(
        a.model, draft=a.draft, backend=a.backend, weights=a.weights, progress=False, n_ctx=2048
    )
    draft = rt.draft_with_head(a.head) if a.head else rt.draft
    target = rt.target
    assert draft is not None
    context = [1 + (i * 7919) % 20000 for i in range(a.context)]
    t: dict[str, list[float]] = {"alone": [], "between": [], "second": [], "verify": [], "c1": []}
    load_avg = [os.getloadavg()[0]]
    for _ in range(a.rounds):
        target.reset()
        draft.reset()
        target.forward(context, all_logits=False)
        draft.forward(context, all_logits=False)
        for _ in range(a.per_round):
            timed(draft, [5], t["alone"], all_logits=False)
        draft.rollback(a.per_round)
        for _ in range(a.per_round // 2):
            timed(draft, [5], t["between"], all_logits=False)
            timed(draft, [5], t["second"], all_logits=False)
            timed(target, [5] * (a.k + 1), t["verify"])
            target.rollback(a.k + 1)
        draft.rollback(a.per_round // 2 * 2)
        for _ in range(a.per_round // 2):
            timed(target, [5], t["c1"], all_logits=False)
        load_avg.append(os.getloadavg()[0])
    ms = {key: statistics.median(v) * 1e3 for key, v in t.items()}
    head = f", head {a.head}" if a.head else ""
    print(
        f"{a.draft}{head} drafting for {a.model} on {a.backend} {a.weights}, medians of "
        f"{a.rounds} x {a.per_round}, 1-minute load average {min(load_avg):.1f} to "
        f"{max(load_avg):.1f}:\n"
        f"draft forward alone {ms['alone']:.1f} ms; after a target forward {ms['between']:.1f} "
        f"ms ({ms['between'] / ms['alone']:.2f}x), the next {ms['second']:.1f} ms; target "
        f"c({a.k + 1}) {ms['verify']:.1f} ms, c(1) {ms['c1']:.1f} ms; draft / target c(1) "
        f"{ms['alone'] / ms['c1']:.2f}"
    )
    rt.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
