"""What the speculation controller costs per step on the host: ``observe`` (every plain step
changes the cost curve) plus ``choose`` over three proposers, best of 5 repeats of 2000
steps. The numbers in the closing notes of the vectorised ``CostCurve.table`` (97 -> 88 us
here, about 1 % of a SmolLM2 step on tvm) came from this script.

    .venv/bin/python benchmarks/controller_overhead.py
"""

from __future__ import annotations

import timeit

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


if __name__ == "__main__":
    main()
