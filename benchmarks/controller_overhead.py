"""What the speculation controller costs per step on the host: ``observe`` (every plain step
changes the cost curve) plus ``choose`` over three proposers, best of 5 repeats of 2000
steps. The numbers in the closing notes of the vectorised ``CostCurve.table`` (97 -> 88 us
here, about 1 % of a SmolLM2 step on tvm) came from this script.

    .venv/bin/python benchmarks/controller_overhead.py

With ``--model``, the whole engine's cost outside the target's forwards, per forward, of
real generations (the json and summarize prompts, 128 tokens each, ``--rounds`` rounds
after a warm-up, strategies interleaved): wall time minus the time inside the backend's
``_run`` (the tvm backend's one call per forward), divided by the forwards.

    .venv/bin/python benchmarks/controller_overhead.py --model smollm2-135m \
        --strategies autoregressive auto speculative:proposers=ngram:k=1
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit
from typing import Any

from edgespec.speculative.controller import Acceptance, Controller, CostCurve


def main() -> None:
    curve = CostCurve({1: 0.010, 2: 0.011, 3: 0.012, 5: 0.0135, 9: 0.019})
    names = ("ngram", "recycle", "draft")
    c = Controller(curve, {n: Acceptance.prior(8, 0.5) for n in names}, max_k=8)
    c.draft_cost.update(ngram=1e-4, recycle=1e-5, draft=0.03)
    count = [0]

    def step() -> None:
        count[0] += 1
        c.verify.observe(1, 0.010 + 1e-6 * (count[0] % 7))  # what every plain step does
        c.choose(100)

    n = 2000
    best = min(timeit.repeat(step, number=n, repeat=5)) / n
    print(f"observe + choose per step: {best * 1e6:.1f} us")


def engine(model: str, strategies: list[str], rounds: int) -> None:
    """Per strategy: median over rounds of (wall - time in the target's forwards) / forwards."""
    import edgespec
    from edgespec.bench.runner import parse_strategy
    from edgespec.bench.workloads import load_workloads

    rt = edgespec.load(model, backend="tvm", weights="gguf-q8act", progress=False)
    target: Any = rt.target
    inside = {"s": 0.0, "n": 0.0}
    run = target._run

    def timed_run(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return run(*args, **kwargs)
        finally:
            inside["s"] += time.perf_counter() - t
            inside["n"] += 1.0

    target._run = timed_run
    prompts = load_workloads(["json", "summarize"], per_workload=2)

    def generate(spec: str) -> tuple[float, float, float]:
        name, opts = parse_strategy(spec)
        inside.update(s=0.0, n=0.0)
        t = time.perf_counter()
        for p in prompts:
            rt.generate(p.prompt, chat=p.chat, max_new_tokens=128, strategy=name,
                        ignore_eos=True, config=opts)  # fmt: skip
        return time.perf_counter() - t, inside["s"], inside["n"]

    for spec in strategies:
        generate(spec)  # warm-up: sessions, curves
    per: dict[str, list[tuple[float, float]]] = {s: [] for s in strategies}
    for _ in range(rounds):
        for spec in strategies:
            wall, fwd, n = generate(spec)
            per[spec].append(((wall - fwd) / n, fwd / n))
    print(f"`benchmarks/controller_overhead.py --model {model} --rounds {rounds}` (tvm "
          "gguf-q8act; medians over rounds)\n")  # fmt: skip
    print("| strategy | outside the forwards, ms per forward | one forward, ms |")
    print("|---|---|---|")
    for spec, xs in per.items():
        out = statistics.median(x for x, _ in xs) * 1e3
        fwd = statistics.median(f for _, f in xs) * 1e3
        print(f"| `{spec}` | {out:.3f} | {fwd:.2f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="time real generations of this model")
    ap.add_argument("--strategies", nargs="+", default=["autoregressive", "auto"])
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if a.model is None:
        main()
    else:
        engine(a.model, a.strategies, a.rounds)
