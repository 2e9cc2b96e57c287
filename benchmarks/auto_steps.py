"""What each kind of ``auto`` step delivers against what the controller expected of it.

Runs plain decoding and ``auto`` on the same prompts (``--backend``, tvm by default; the
json and summarize prompts, 128 tokens each, a warm-up round first), and groups ``auto``'s
steps by what the session chose: (proposer, draft length k, tree or chain, probe or not).
Per group: steps, new tokens a step, wall milliseconds a step (choice, drafting, forward,
verification and bookkeeping), the tokens per second that delivered, and the rate the
controller expected when it chose (``Choice.expected_rate``; probes carry none). Plain
decoding's own tokens per second after the first token (the prefill left out), from the
same process, is the yardstick: a group below it costs speed.

    .venv/bin/python benchmarks/auto_steps.py --model smollm2-135m
    .venv/bin/python benchmarks/auto_steps.py --model qwen2.5-coder-1.5b \
        --draft qwen2.5-coder-0.5b --strategy speculative:proposers=tree

docs/benchmarks.md section 18 found with it that recycling's 3-node trees (three siblings)
delivered 237 tokens/s where the controller expected 402 and plain decoding gave 291.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--draft", default=None, help="a draft model (the draft and tree proposers)")
    ap.add_argument(
        "--strategy", default="auto", help="the speculative strategy, with options (auto:max_k=4)"
    )
    ap.add_argument("--backend", default="tvm")
    ap.add_argument("--weights", default=None, help="default: gguf-q8act on tvm, else auto")
    ap.add_argument("--workloads", nargs="+", default=["json", "summarize"])
    ap.add_argument("--per-workload", type=int, default=2)
    ap.add_argument("-n", type=int, default=128, help="new tokens per prompt")
    a = ap.parse_args()

    import edgespec
    import edgespec.strategies.speculative as strategy
    from edgespec.bench.runner import parse_strategy
    from edgespec.bench.workloads import load_workloads
    from edgespec.speculative.session import SpecSession

    weights = a.weights or ("gguf-q8act" if a.backend == "tvm" else "auto")
    rt = edgespec.load(a.model, draft=a.draft, backend=a.backend, weights=weights, progress=False)
    name, config = parse_strategy(a.strategy)
    prompts = load_workloads(a.workloads, per_workload=a.per_workload)
    steps: list[tuple[Any, bool, Any, float]] = []
    chosen: list[Any] = []
    choose, step = SpecSession.choose, strategy.speculative_step

    def recording_choose(self: SpecSession, room: int) -> Any:
        c = choose(self, room)
        chosen.append(c)
        return c

    def recording_step(session: SpecSession, *args: Any) -> Any:
        t = time.perf_counter()
        r = step(session, *args)
        steps.append((chosen[-1], session.probing, r, time.perf_counter() - t))
        return r

    SpecSession.choose = recording_choose  # type: ignore[method-assign]
    strategy.speculative_step = recording_step  # type: ignore[assignment]

    def generate(strategy: str, config: Any = None) -> float:
        """Tokens per second after the first token (the prefill left out), over the prompts."""
        tokens, seconds = 0, 0.0
        for p in prompts:
            r = rt.generate(
                p.prompt,
                chat=p.chat,
                max_new_tokens=a.n,
                strategy=strategy,
                ignore_eos=True,
                config=config,
            )
            tokens += r.stats.new_tokens - 1
            seconds += r.stats.wall_s - r.stats.ttft_s
        return tokens / seconds

    generate(name, config)
    generate("autoregressive")  # warm-up
    plain = generate("autoregressive")
    steps.clear()
    auto = generate(name, config)
    draft = f" --draft {a.draft}" if a.draft else ""
    print(f"`benchmarks/auto_steps.py --model {a.model}{draft} --backend {a.backend} --strategy "
          f"{a.strategy}` ({weights} weights, {len(prompts)} prompts)")  # fmt: skip
    print(f"\nafter the first token: plain decoding {plain:.0f} tok/s, {a.strategy} {auto:.0f} "
          f"tok/s ({auto / plain:.3f}x plain), same process\n")  # fmt: skip
    groups: dict[tuple[str, int, str, str], list[float]] = defaultdict(lambda: [0, 0, 0.0, 0.0])
    for c, probing, r, dt in steps:
        d = r.draft
        key = (
            d.source or "plain",
            d.k,
            "tree" if d.is_tree else "chain",
            "probe" if probing else "",
        )
        g = groups[key]
        g[0] += 1
        g[1] += len(r.tokens)
        g[2] += dt
        g[3] += c.expected_rate
    print("| proposer | k | shape | probe | steps | tokens a step | ms a step | tok/s | "
          "vs plain decoding | expected tok/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (src, k, shape, probe), (n, ntok, dt, expected) in sorted(
        groups.items(), key=lambda kv: -kv[1][0]
    ):
        rate = ntok / dt
        exp = f"{expected / n:.0f}" if expected else "-"
        print(f"| {src} | {k} | {shape} | {probe} | {n} | {ntok / n:.2f} | {dt / n * 1e3:.2f} | "
              f"{rate:.0f} | {rate / plain:.2f}x | {exp} |")  # fmt: skip


if __name__ == "__main__":
    main()
