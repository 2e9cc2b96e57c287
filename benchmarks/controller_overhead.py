"""What the speculation engine costs per step on the host, beside the target's forwards.

Without ``--model``: the controller alone, ``observe`` (every plain step changes the cost
curve) plus ``choose`` over three proposers, best of 5 repeats of 2000 steps. The numbers
in the closing notes of the vectorised ``CostCurve.table`` (97 -> 88 us here, about 1 % of
a SmolLM2 step on tvm) came from this.

    .venv/bin/python benchmarks/controller_overhead.py

With ``--model``: real generations on one backend in one process (``-n`` new tokens of
each prompt of ``--workloads``, one warm-up round, then ``--rounds`` rounds with the
strategies' order reversed every other round). Per strategy, medians over rounds of:

- milliseconds per generated token, and that time over the first strategy's;
- the time outside the target's forwards, per forward (wall time minus the time inside the
  target's ``forward`` and ``forward_tree``, wrapped on the loaded model whatever its
  backend): the controller's choice, the proposers' bookkeeping, the step's plumbing;
- the mean time of a forward (the prompts' included), and the steps that drafted.

``auto:probe_every=0`` never drafts where speculation cannot pay (the ``drafted`` column
shows it), so beside ``autoregressive`` it times ``auto``'s plain step:

    .venv/bin/python benchmarks/controller_overhead.py --model smollm2-135m \\
        --backend llamacpp --strategies autoregressive auto:probe_every=0

    .venv/bin/python benchmarks/controller_overhead.py --model smollm2-135m \\
        --strategies autoregressive auto speculative:proposers=ngram:k=1
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
import timeit
from collections.abc import Callable
from typing import Any

from edgespec.speculative.controller import Acceptance, Controller, CostCurve


def controller_only() -> None:
    """``observe`` + ``choose`` per step, on a made-up curve and three proposers."""
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


class ForwardClock:
    """Wraps a model's ``forward`` and ``forward_tree`` on the instance: the seconds spent
    inside them and how many calls, since the last :meth:`reset`."""

    def __init__(self, model: Any) -> None:
        self.seconds = 0.0
        self.calls = 0
        for name in ("forward", "forward_tree"):
            setattr(model, name, self._timed(getattr(model, name)))

    def _timed(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t
                self.calls += 1

        return timed

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0


def engine(a: argparse.Namespace) -> None:
    """Per strategy: ms per token, outside/inside the target's forwards, steps drafted."""
    import edgespec
    from edgespec.bench.runner import parse_strategy
    from edgespec.bench.workloads import Prompt, load_workloads

    rt = edgespec.load(a.model, backend=a.backend, weights=a.weights, progress=False)
    clock = ForwardClock(rt.target)
    if a.prompt is not None:
        prompts = [
            Prompt(
                "prompt",
                "given",
                a.prompt.replace("\\n", "\n").replace("\\t", "\t"),
                False,
                "--prompt",
            )
        ]
    else:
        prompts = load_workloads(a.workloads, per_workload=a.per_workload)
    specs = {s: parse_strategy(s) for s in a.strategies}
    keys = ("token", "outside", "forward", "drafted")

    def generate(spec: str) -> dict[str, float]:
        name, opts = specs[spec]
        clock.reset()
        tokens = drafted = 0
        t = time.perf_counter()
        for p in prompts:
            res = rt.generate(p.prompt, chat=p.chat, max_new_tokens=a.n, strategy=name,
                              ignore_eos=True, config=opts)  # fmt: skip
            tokens += len(res.token_ids)
            drafted += sum(1 for k in res.stats.k_trace if k)
        wall = time.perf_counter() - t
        if not clock.calls:
            raise SystemExit(f"no forward of the target was seen under {spec}")
        return dict(zip(keys, (wall / tokens, (wall - clock.seconds) / clock.calls,
                               clock.seconds / clock.calls, drafted), strict=True))  # fmt: skip

    for spec in specs:
        generate(spec)  # warm-up: sessions, curves
    per: dict[str, list[dict[str, float]]] = {s: [] for s in specs}
    for r in range(a.rounds):
        for spec in list(specs) if r % 2 == 0 else list(reversed(specs)):
            per[spec].append(generate(spec))
    first = a.strategies[0]
    base = statistics.median(x["token"] for x in per[first])
    loaded = a.backend + (f" {a.weights}" if a.weights != "auto" else "")
    what = (
        "one --prompt"
        if a.prompt is not None
        else f"{len(prompts)} prompts of " + "+".join(a.workloads)
    )
    print(f"{a.model} on {loaded}: {what}, {a.n} tokens each, medians over {a.rounds} rounds\n")
    print(f"| strategy | ms per token | over `{first}` | outside the forwards, ms per forward "
          "| mean forward (prompts' too), ms | steps drafted |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for spec, xs in per.items():
        m = {k: statistics.median(x[k] for x in xs) for k in keys}
        print(f"| `{spec}` | {m['token'] * 1e3:.2f} | {m['token'] / base:.3f}x "
              f"| {m['outside'] * 1e3:.3f} | {m['forward'] * 1e3:.2f} "
              f"| {m['drafted']:.0f} |")  # fmt: skip


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="time real generations of this model")
    ap.add_argument("--backend", default="tvm")
    ap.add_argument("--weights", default="auto", help="the backend's --weights")
    ap.add_argument("--strategies", nargs="+", default=["autoregressive", "auto"])
    ap.add_argument("--workloads", nargs="+", default=["json", "summarize"])
    ap.add_argument("--per-workload", type=int, default=2, help="prompts of each workload")
    ap.add_argument(
        "--prompt", default=None, help="one prompt instead (\\n and \\t escapes allowed)"
    )
    ap.add_argument("-n", type=int, default=128, help="new tokens per generation")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds, after one warm-up")
    args = ap.parse_args()
    if args.model is None:
        controller_only()
    else:
        engine(args)
