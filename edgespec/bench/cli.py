"""The ``bench``, ``report`` and ``profile`` subcommands (parsing only; the work is in
:mod:`edgespec.bench.runner`, :mod:`~edgespec.bench.report` and
:mod:`~edgespec.bench.profiler`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edgespec.errors import EdgespecError


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_commands(sub: Any) -> None:
    from edgespec.bench.energy import DEFAULT_WATTS, ENERGY_SOURCES
    from edgespec.cli import (
        DEFAULT_MAX_NEW_TOKENS,
        _add_gen_args,
        _add_load_args,
        add_draft_arg,
        add_model_arg,
        add_prompt_args,
        add_runtime_args,
        add_weights_arg,
    )

    b = sub.add_parser(
        "bench",
        help="speed and energy of strategies against llama.cpp's plain decoding",
        description="Run every (backend, strategy) combination on every workload prompt, "
        "interleaved with the baseline (llama-cpp-python's plain greedy decoding of the same "
        "GGUF), and write results.json, results.csv, report.md and PNG plots to --out.",
    )
    add_model_arg(b)
    add_draft_arg(b, "draft model for strategies that use one")
    b.add_argument(
        "--strategies",
        type=_csv,
        default=["autoregressive", "auto"],
        help="comma-separated strategy specs: name[:key=value...], proposers joined "
        "by '+', e.g. autoregressive,auto,speculative:proposers=ngram:k=4",
    )
    b.add_argument(
        "--backends",
        type=_csv,
        default=None,
        help="comma-separated backends (default: the best installed one)",
    )
    b.add_argument(
        "--workloads",
        nargs="+",
        default=None,
        help="workload .jsonl files or shipped names: code, summarize, chat, json, long/needle, "
        "long/multifact, long/code_long; NAME:PREFIX keeps the prompts whose id starts with "
        "PREFIX, e.g. long/needle:needle-4k (default: code, summarize, chat, json)",
    )
    b.add_argument(
        "--per-workload",
        type=int,
        default=None,
        help="use only the first N prompts of each workload",
    )
    b.add_argument("--runs", type=int, default=3, help="measured rounds (medians over them)")
    b.add_argument("--warmup", type=int, default=1, help="untimed rounds before measuring")
    b.add_argument(
        "--max-new-tokens",
        "-n",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help=f"tokens per generation, EOS ignored (default {DEFAULT_MAX_NEW_TOKENS})",
    )
    add_runtime_args(b)
    b.add_argument(
        "--baseline",
        default="llamacpp",
        choices=["llamacpp", "autoregressive"],
        help="llamacpp: llama-cpp-python on the same GGUF; autoregressive: "
        "edgespec's plain decoding (for models llama.cpp cannot load)",
    )
    b.add_argument(
        "--energy",
        default="auto",
        choices=ENERGY_SOURCES,
        help="energy source; auto: RAPL, battery, powermetrics, else the estimate",
    )
    b.add_argument(
        "--watts",
        type=float,
        default=DEFAULT_WATTS,
        help="the estimate's power model: watts per fully busy core",
    )
    b.add_argument(
        "--compress",
        type=_csv,
        default=[],
        metavar="CONFIGS",
        help="context compression (lossy), comma-separated: RATIO or budget=TOKENS, "
        "optionally :scoring=conditional|contrastive|plain; each strategy also runs once per "
        "configuration on the compressed prompt, e.g. --compress 0.5,budget=1024 "
        "(long-context workloads: long/needle, long/multifact, long/code_long; "
        "docs/compression.md)",
    )
    b.add_argument(
        "--compress-only",
        action="store_true",
        help="run the strategies only on the compressed prompts: per prompt, one full-context "
        "run (the baseline) and one run per --compress configuration; no uncompressed "
        "strategy rows, no default-threads baseline row, and (every row being lossy) no "
        "losslessness reference",
    )
    b.add_argument(
        "--compressor",
        default=None,
        metavar="MODEL",
        help="the compressor model for --compress (default: the draft, else the target)",
    )
    b.add_argument(
        "--compressor-backend",
        default=None,
        metavar="BACKEND",
        help="the backend the compressor scores on (default: the installed one fastest at "
        "batched scoring: onnx with fp32 weights, then llamacpp)",
    )
    b.add_argument(
        "--kv-cache",
        type=_csv,
        default=[],
        metavar="TYPES",
        help="KV-cache types side by side, comma-separated (f32,q8,q4,gear4 on numpy; "
        "f32,f16,q8,q4 on llamacpp): every strategy runs once per type, on a runtime loaded "
        "with it; q8, q4 and gear4 rows are lossy",
    )
    b.add_argument(
        "--device",
        default="cpu",
        help="where the backends run: cpu, opencl or vulkan (--backends tvm; docs/tvm.md), "
        "or npu (--backends onnx: ONNX Runtime's NPU providers)",
    )
    add_weights_arg(b)
    b.add_argument("--out", "-o", type=Path, required=True, help="output folder")
    b.add_argument(
        "--no-plot", "--no-plots", dest="no_plot", action="store_true", help="skip the PNG plots"
    )
    b.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_bench)

    r = sub.add_parser(
        "report", help="re-render report.md, results.csv and plots from DIR/results.json"
    )
    r.add_argument("dir", type=Path)
    r.add_argument("--schema", action="store_true", help="print the results.json schema")
    r.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "profile",
        help="time one generation phase by phase (table + PNG; entropy plot for entropy-switch "
        "and sentence-lead)",
        description="Generate once (after --warmup untimed runs) and write where the time "
        "went, phase by phase: profile.json and profile.png in --out. The prompt is text, "
        "-f FILE or stdin, as for generate.",
    )
    add_prompt_args(p)
    _add_load_args(p)
    _add_gen_args(p)
    p.add_argument(
        "--out",
        "-o",
        type=Path,
        default=Path("edgespec-profile"),
        help="folder for profile.json, profile.png and (two-model strategies) entropy.png",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed generations first, so one-time setup is not profiled "
        "(0: profile the cold start)",
    )
    p.add_argument(
        "--no-plot", "--no-plots", dest="no_plot", action="store_true", help="skip the PNG plots"
    )
    p.set_defaults(func=cmd_profile)


def options_from_args(a: argparse.Namespace) -> Any:
    from edgespec.bench.runner import BenchOptions

    return BenchOptions(
        out=a.out,
        model=a.model,
        draft=a.draft,
        strategies=a.strategies,
        backends=a.backends or [None],
        workloads=[w for x in a.workloads or [] for w in _csv(x)],
        per_workload=a.per_workload,
        runs=a.runs,
        warmup=a.warmup,
        max_new_tokens=a.max_new_tokens,
        n_ctx=a.n_ctx,
        threads=a.threads,
        baseline=a.baseline,
        energy=a.energy,
        watts=a.watts,
        progress=not a.quiet,
        plots=not a.no_plot,
        compress=a.compress,
        compressor=a.compressor,
        compressor_backend=a.compressor_backend,
        kv_cache=a.kv_cache,
        device=a.device,
        compress_only=a.compress_only,
        weights=a.weights,
    )


def canonical_argv(opts: Any) -> list[str]:
    """Every option spelled out, so the recorded command reproduces the run exactly."""
    argv = ["--out", str(opts.out)]
    if opts.model:
        argv += ["--model", opts.model]
    if opts.draft:
        argv += ["--draft", opts.draft]
    argv += ["--strategies", ",".join(opts.strategies)]
    if opts.backends != [None]:
        argv += ["--backends", ",".join(str(b) for b in opts.backends)]
    if opts.workloads:
        argv += ["--workloads", *map(str, opts.workloads)]
    if opts.per_workload:
        argv += ["--per-workload", str(opts.per_workload)]
    argv += [
        "--runs",
        str(opts.runs),
        "--warmup",
        str(opts.warmup),
        "--max-new-tokens",
        str(opts.max_new_tokens),
        "--ctx-size",
        str(opts.n_ctx),
    ]
    if opts.threads:
        argv += ["--threads", str(opts.threads)]
    argv += ["--baseline", opts.baseline, "--energy", opts.energy]
    if opts.energy in ("auto", "estimate"):
        argv += ["--watts", str(opts.watts)]
    if not opts.plots:
        argv.append("--no-plot")
    if opts.compress:
        argv += ["--compress", ",".join(opts.compress)]
    if opts.compress_only:
        argv.append("--compress-only")
    if opts.compressor:
        argv += ["--compressor", opts.compressor]
    if opts.compressor_backend:
        argv += ["--compressor-backend", opts.compressor_backend]
    if opts.kv_cache:
        argv += ["--kv-cache", ",".join(opts.kv_cache)]
    if opts.device != "cpu":
        argv += ["--device", opts.device]
    if opts.weights != "auto":
        argv += ["--weights", opts.weights]
    return argv


def cmd_bench(a: argparse.Namespace) -> int:
    from edgespec.bench.report import summarize
    from edgespec.bench.runner import Bench

    opts = options_from_args(a)
    bench = Bench(opts, argv=canonical_argv(opts))
    doc = bench.run()
    ov = summarize(doc)["overall"]
    for lb, s in ov.items():
        med = s["tok_s"]["median"]
        ratio = s["ratio"]["median"]
        right = f"  {s['right']}/{s['answered']} right" if s["answered"] else ""
        print(f"{lb:<40} {med or 0:8.1f} tok/s  {ratio or 0:5.2f}x  {s['status']}{right}")
    print(
        f"wrote {opts.out}/results.json, results.csv, report.md"
        + (" and plots" if opts.plots else "")
        + f"; energy {doc['energy']['kind']}"
    )
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from edgespec.bench.report import load_results, render_all
    from edgespec.bench.schema import SCHEMA

    if a.schema:
        print(json.dumps(SCHEMA, indent=1))
        return 0
    doc = load_results(a.dir)
    for path in render_all(doc, a.dir):
        print(f"wrote {path}")
    if not doc["complete"]:
        print(f"note: these results are incomplete ({doc['error']})", file=sys.stderr)
    return 0


def cmd_profile(a: argparse.Namespace) -> int:
    from edgespec.bench.profiler import format_table, profile_generation, write_profile
    from edgespec.cli import config_from_args, load_from_args, params_from_args
    from edgespec.strategies import STRATEGIES

    params = params_from_args(a)
    STRATEGIES.get(a.strategy)
    if a.warmup < 0:
        raise EdgespecError(f"--warmup must be >= 0, got {a.warmup}")
    config = config_from_args(a)
    with load_from_args(a) as rt:
        prof = profile_generation(
            rt,
            a.prompt,
            strategy=a.strategy,
            config=config,
            chat=a.chat,
            system=a.system,
            warmup=a.warmup,
            params=params,
        )
        title = f"{rt.source.name} on {rt.backend}, {a.strategy}: where the time goes"
    files = write_profile(prof, a.out, title, plot=not a.no_plot)
    if a.json:
        print(json.dumps(prof))
        return 0
    print(format_table(prof))
    s = prof["stats"]
    print(
        f"{s['new_tokens']} tokens, {s['tokens_per_s']:.1f} tok/s; wrote "
        + ", ".join(str(f) for f in files)
    )
    return 0
