"""Pass rate and speed of entropy-switch (lossy) against the large model alone, same run.

    python benchmarks/code_tasks/run.py --model qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b \
        --tau 1.0 --window 4 --min-run 4 --out docs/results/code_tasks_ead.json

For every task, interleaved: the large model alone (autoregressive: the baseline), then each
entropy-switch setting (``--tau`` may be repeated; ``--k N`` or ``--k auto`` adds speculation
while the large model is in charge; it changes speed, not the greedy output). Greedy, EOS
honoured, completions cut at the first non-indented line and run against the task's tests in
a subprocess with a timeout. Reported per configuration:
pass rate, tokens/s and CPU-seconds per token (sums over tasks) and their ratios against the
baseline, the large model's token share and mean switches. entropy-switch is lossy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

import edgespec  # noqa: E402

STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```", "\nassert ")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b")
    ap.add_argument("--backend", default="llamacpp")
    ap.add_argument("--tau", type=float, action="append", default=[])
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--min-run", type=int, default=4)
    ap.add_argument(
        "--k",
        type=lambda v: v if v == "auto" else int(v),
        default=0,
        help="speculation while the large model is in charge: N draft tokens, or auto "
        "(the speculative controller picks k each step); default 0 (off)",
    )
    ap.add_argument("--max-new-tokens", type=int, default=160)
    ap.add_argument("--limit", type=int, default=None, help="first N tasks only")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per task's tests")
    ap.add_argument("--out", default=None, help="write the JSON here")
    a = ap.parse_args(argv)
    tasks = harness.load_tasks()[: a.limit]
    configs: list[tuple[str, str, dict[str, Any] | None]] = [("large", "autoregressive", None)]
    for tau in a.tau or [1.0]:
        cfg = {"tau": tau, "window": a.window, "min_run": a.min_run, "spec_k": a.k}
        configs.append((f"ead-tau{tau:g}", "entropy-switch", cfg))
    rt = edgespec.load(
        a.model, backend=a.backend, draft=a.draft, n_threads=a.threads, progress=False
    )
    acc: dict[str, dict[str, Any]] = {
        name: {
            "passed": 0,
            "tokens": 0,
            "wall_s": 0.0,
            "cpu_s": 0.0,
            "large_tokens": 0,
            "switches": 0,
            "results": [],
        }
        for name, _, _ in configs
    }
    with rt:
        for i, task in enumerate(tasks):
            for name, strategy, cfg in configs:
                res = rt.generate(
                    task["prompt"],
                    strategy=strategy,
                    config=cfg,
                    max_new_tokens=a.max_new_tokens,
                    stop=STOPS,
                )
                r = harness.check(task, res.text, timeout=a.timeout)
                s, row = res.stats, acc[name]
                row["passed"] += r.passed
                row["tokens"] += s.new_tokens
                row["wall_s"] += s.wall_s
                row["cpu_s"] += s.cpu_s
                row["large_tokens"] += s.model_trace.count("t") if s.model_trace else s.new_tokens
                row["switches"] += s.switches
                row["results"].append(
                    {
                        "id": task["id"],
                        "passed": r.passed,
                        "reason": r.reason,
                        "tokens": s.new_tokens,
                        "lossy": s.lossy,
                    }
                )
            print(
                f"[{i + 1}/{len(tasks)}] "
                + " ".join(f"{n}:{acc[n]['passed']}" for n, _, _ in configs),
                file=sys.stderr,
            )
    base = acc["large"]
    summary = {}
    for name, strategy, cfg in configs:
        row = acc[name]
        tps = row["tokens"] / row["wall_s"] if row["wall_s"] else 0.0
        cpt = row["cpu_s"] / row["tokens"] if row["tokens"] else 0.0
        btps = base["tokens"] / base["wall_s"]
        bcpt = base["cpu_s"] / base["tokens"]
        summary[name] = {
            "strategy": strategy,
            "config": cfg,
            "lossy": strategy != "autoregressive",
            "pass_rate": row["passed"] / len(tasks),
            "tokens_per_s": tps,
            "cpu_s_per_token": cpt,
            "speedup_vs_large": tps / btps,
            "cpu_ratio_vs_large": cpt / bcpt,
            "large_share": row["large_tokens"] / row["tokens"] if row["tokens"] else 0.0,
            "mean_switches": row["switches"] / len(tasks),
            "results": row["results"],
        }
    print("| config | lossy | pass rate | tok/s | x large | CPU s/tok | x large | large share |")
    print("|---|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(
            f"| {name} | {str(s['lossy']).lower()} | {100 * s['pass_rate']:.1f}% | "
            f"{s['tokens_per_s']:.1f} | {s['speedup_vs_large']:.2f} | "
            f"{s['cpu_s_per_token']:.4f} | {s['cpu_ratio_vs_large']:.2f} | "
            f"{100 * s['large_share']:.0f}% |"
        )
    out = {
        "model": a.model,
        "draft": a.draft,
        "backend": a.backend,
        "tasks": len(tasks),
        "max_new_tokens": a.max_new_tokens,
        "configs": summary,
    }
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
