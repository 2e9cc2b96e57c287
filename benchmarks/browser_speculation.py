"""Browser speculation: plain greedy vs prompt lookup (and a draft model) in the same page.

One headless Chromium page (android_demo's web app served by ``edgespec demo serve``) loads the
bundle once; then each repetition runs every prompt with each strategy, interleaved, greedy,
the same number of new tokens. Prints the median decode tokens/s per strategy, the median of
the per-run ratios against plain decoding of the same prompt and repetition, acceptance, and
whether every speculative output equals plain greedy's. The prompts are a lookup-friendly
workload (default: ``summarize``, "repeat the passage"), tokenized by the Python runtime with
the model's chat template and given to the page as token ids.

    python benchmarks/browser_speculation.py                  # SmolLM2 fp32, cached bundle
    python benchmarks/browser_speculation.py --draft layerskip:      # + a layer-skip draft
    python benchmarks/browser_speculation.py --bundle DIR --workload code --reps 5

Numbers on a shared machine are directional: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any


def prompt_ids(bundle: Path, workload: str, n: int) -> list[tuple[str, list[int]]]:
    """``[(prompt id, token ids)]``: the first ``n`` prompts of ``workload``, encoded as
    ``edgespec bench`` encodes them (chat template when the prompt asks for it)."""
    import edgespec
    from edgespec.bench.workloads import load_workloads

    prompts = load_workloads([workload], per_workload=n)
    with edgespec.load(str(bundle), backend="onnx", n_ctx=64, progress=False) as rt:
        return [(p.id, rt.encode_prompt(p.prompt, chat=p.chat)) for p in prompts]


def summarize(
    results: list[dict[str, Any]], keys: list[tuple[int, str, str]]
) -> dict[str, dict[str, float]]:
    """Per strategy: median tokens/s, median ratio to plain (same rep and prompt), acceptance,
    and whether every output equals plain's."""
    by = dict(zip(keys, results, strict=True))
    rows: dict[str, dict[str, float]] = {}
    for strategy in dict.fromkeys(s for _, _, s in keys):
        runs = [(k, r) for k, r in by.items() if k[2] == strategy]
        plain = {k[:2]: r for k, r in by.items() if k[2] == "plain"}
        speeds = [r["stats"]["tokensPerS"] for _, r in runs]
        ratios = [r["stats"]["tokensPerS"] / plain[k[:2]]["stats"]["tokensPerS"] for k, r in runs]
        proposed = sum(r["stats"]["proposed"] for _, r in runs)
        accepted = sum(r["stats"]["accepted"] for _, r in runs)
        steps = sum(r["stats"]["steps"] for _, r in runs)
        rows[strategy] = {
            "tokens_per_s": statistics.median(speeds),
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "acceptance": accepted / proposed if proposed else float("nan"),
            "accepted_per_step": accepted / steps if steps else float("nan"),
            "equal_to_plain": float(all(r["tokens"] == plain[k[:2]]["tokens"] for k, r in runs)),
        }
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, help="default: smollm2-135m's cached fp32 bundle")
    p.add_argument(
        "--draft",
        help="with the default bundle: export (once, cached) a draft role too, an edgespec "
        "export --draft spec such as 'layerskip:' (the middle half of the layers skipped)",
    )
    p.add_argument("--workload", default="summarize", help="a shipped workload name or .jsonl")
    p.add_argument("--prompts", type=int, default=2, help="prompts from the workload")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--max-new", type=int, default=48)
    p.add_argument("-k", type=int, default=4, help="draft length")
    p.add_argument("--backend", default="wasm", choices=["wasm", "webgpu", "auto"])
    p.add_argument("--no-isolation", action="store_true", help="one WASM thread, as in WebView")
    a = p.parse_args()

    from edgespec.demo.browser import (
        WEBGPU_SWIFTSHADER,
        Served,
        browser_missing,
        demo_bundle,
        drive_page,
    )

    why = browser_missing()
    if why:
        print(why, file=sys.stderr)
        return 2
    bundle = a.bundle or demo_bundle("smollm2-135m", "fp32", a.draft)
    prompts = prompt_ids(bundle, a.workload, a.prompts)
    load_before = os.getloadavg()
    with Served([bundle], isolate=not a.no_isolation) as server:
        # the page reports whether the bundle has a draft; probe with no runs first
        info = drive_page(f"{server.url}?backend={a.backend}&verify=0", [])
        if info["error"]:
            print(f"the page failed: {info['error']}", file=sys.stderr)
            return 1
        strategies = ["plain", "ngram"] + (["draft"] if info["info"]["draft"] else [])
        keys = [(rep, pid, s) for rep in range(a.reps) for pid, _ in prompts for s in strategies]
        ids = dict(prompts)
        runs = [
            {"promptIds": ids[pid], "maxNewTokens": a.max_new, "strategy": s, "k": a.k}
            for _, pid, s in keys
        ]
        warm = [{"promptIds": prompts[0][1], "maxNewTokens": 8, "strategy": "plain"}]
        flags = WEBGPU_SWIFTSHADER if a.backend != "wasm" else []
        got = drive_page(
            f"{server.url}?backend={a.backend}&verify=0",
            warm + runs,
            extra_flags=flags,
            timeout_s=3600,
        )
    if got["error"]:
        print(f"the page failed: {got['error']}", file=sys.stderr)
        return 1
    load_after = os.getloadavg()
    rows = summarize(got["results"][len(warm) :], keys)
    info = got["info"]
    print(f"$ python benchmarks/browser_speculation.py {shlex.join(sys.argv[1:])}")
    print(
        f"bundle {bundle.name}: {info['artifact']} ({info['quantization']})"
        f"{' + ' + info['draft'] if info['draft'] else ''} on {info['backend']}, "
        f"{info['threads']} WASM thread(s), isolated={info['isolated']}; workload "
        f"{a.workload} x {len(prompts)} prompts x {a.reps} reps, {a.max_new} new tokens, k={a.k}"
    )
    print(f"load average (1 min) before/after: {load_before[0]:.1f} / {load_after[0]:.1f}")
    print(
        "| strategy | decode tok/s (median) | x plain (median, min-max) | acceptance |"
        " accepted/step | tokens = plain |"
    )
    print("|---|---|---|---|---|---|")
    for s, r in rows.items():
        print(
            f"| {s} | {r['tokens_per_s']:.1f} | {r['ratio']:.2f}x ({r['ratio_min']:.2f}-"
            f"{r['ratio_max']:.2f}) | {r['acceptance']:.2f} | {r['accepted_per_step']:.2f} | "
            f"{'yes' if r['equal_to_plain'] else 'NO'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
