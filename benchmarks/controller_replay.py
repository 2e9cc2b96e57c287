"""Replay speculation controllers on recorded text: each configuration's speed-up over plain
decoding, free of the host's noise, from the real session code on a modeled clock.

One bench run cannot rank controller variants that differ by less than about 0.1x (docs/
benchmarks.md sections 12 and 13). Greedy speculation is lossless, so every configuration
emits the same tokens; what differs is which drafts it asks for and what they cost. This
script separates the two:

``record`` runs the real models once: the target's greedy continuation of each prompt with
its top-4 tokens at every position (what token recycling learns from), the draft model's
greedy draft of up to ``--max-k`` tokens after every prefix (its real proposer, draft head
and confidence stop included: a draft of k is the first k of these), and both models' cost
curves (``measure_verify_curve``). Saved as one JSON file.

``replay`` runs each configuration's real :class:`SpecSession` (controller, probes, n-gram
lookup, recycling) through the real :func:`speculative_step` on a fake target that answers
with the recorded rows and charges the recorded cost curve to a modeled clock; the draft
model is replayed from the record and charged the draft's curve (its catch-up forwards
included). Sessions carry their state over prompts and rounds as in ``edgespec bench``
(a warm-up of 16 tokens on the first prompt, then ``--runs`` rounds over the prompts).
Every replayed generation is checked token for token against the record. Not modeled: the
host's drift and Python's per-step cost (small next to a 1.5B model's 50 ms step; about 0.3
ms a step on SmolLM2, docs/benchmarks.md), and the target's rows after draft tokens off the
recorded path (recycling learns zeros there).

    .venv/bin/python benchmarks/controller_replay.py record --model qwen2.5-coder-1.5b \\
        --draft qwen2.5-coder-0.5b --out docs/results/controller-replay/qwen-pair.json
    .venv/bin/python benchmarks/controller_replay.py replay \\
        docs/results/controller-replay/qwen-pair.json auto speculative:proposers=draft:k=4

``--target-curve`` replays the same text on another backend's verify curve (e.g. llama.cpp's
from ``benchmarks/tvm_backend.py``), the draft's curve scaled by the same c(1) ratio: how a
policy fares where verification is expensive. ``--draft-curve`` gives the draft its own curve
on that backend instead (``benchmarks/backend_curves.py``): a backend whose many-token
forwards are steep makes the draft's catch-ups dear too.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: tokens of the bench's warm-up generation (``edgespec.bench.runner.WARMUP_TOKENS``)
WARMUP_TOKENS = 16


# --------------------------------------------------------------------------- record


def record(args: argparse.Namespace) -> int:
    import edgespec
    from edgespec.bench.workloads import load_workloads
    from edgespec.fileutil import atomic_path
    from edgespec.sampling import GenerationParams
    from edgespec.speculative.base import PROPOSERS
    from edgespec.speculative.config import SpecConfig
    from edgespec.speculative.cost_curves import measure_verify_curve
    from edgespec.speculative.proposers.recycle import top_k_rows

    rt = edgespec.load(
        args.model, draft=args.draft, backend="tvm", weights=args.weights, progress=False
    )
    sizes = [*range(1, args.max_k + 2), 17, 33, 65, 129]
    target_curve = measure_verify_curve(rt.target, sizes[: args.max_k + 1], reps=args.reps)
    draft_curve = {} if rt.draft is None else measure_verify_curve(rt.draft, sizes, reps=args.reps)
    proposer = None if rt.draft is None else PROPOSERS.get("draft").create(rt, SpecConfig())
    params = GenerationParams()
    rng = np.random.default_rng(0)
    prompts = []
    for p in load_workloads(args.workloads, per_workload=args.per_workload):
        ids = rt.encode_prompt(p.prompt, chat=p.chat)
        t = rt.target
        t.reset()
        row = t.forward(ids, all_logits=False)[-1:].copy()
        text: list[int] = []
        top: list[list[int]] = []
        for _ in range(args.n):
            top.append(top_k_rows(row, 4)[0].tolist())
            text.append(top[-1][0])
            row = t.forward([text[-1]], all_logits=False)[-1:].copy()
        drafts: list[list[int]] = [[]]  # after the prompt alone: never asked
        if proposer is not None:
            proposer.begin(ids, params)
            for j in range(1, args.n):
                drafts.append(list(proposer.propose([*ids, *text[:j]], args.max_k, rng).tokens))
        prompts.append({"id": p.id, "ids": list(map(int, ids)), "text": text, "top": top,
                        "drafts": drafts})  # fmt: skip
        print(f"{p.id}: {len(text)} tokens", file=sys.stderr)
    doc = {
        "model": args.model,
        "draft": args.draft,
        "weights": args.weights,
        "vocab_size": rt.target.info.vocab_size,
        "max_k": args.max_k,
        "target_curve": {str(n): s for n, s in target_curve.items() if n},
        "draft_curve": {str(n): s for n, s in draft_curve.items() if n},
        "prompts": prompts,
    }
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(doc))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- replay


class Clock:
    """The modeled clock every ``time.perf_counter`` call reads during a replay."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def curve_fn(points: dict[str, float]) -> Any:
    """Seconds of a forward of n tokens: the controller's own :class:`CostCurve` of the
    recorded sizes (linear between them, the last slope beyond)."""
    from edgespec.speculative.controller import CostCurve

    return CostCurve({int(n): s for n, s in points.items()})


def make_target(vocab: int, clock: Clock, cost: Any, tree_ratio: float) -> Any:
    from edgespec.model import Model, ModelInfo

    class RecordedTarget(Model):
        """Answers a context that follows the recorded text with the recorded top-4 (in
        order, so its argmax is the recorded token); any other context with zeros."""

        backend = "replay"
        supports_tree = True

        def __init__(self) -> None:
            self.info = ModelInfo("replay", 1, 8, vocab, 1 << 20, source="replay")
            self.cache: list[int] = []
            self.full: list[int] = []
            self.top: list[list[int]] = []
            self.start = 0

        def use(self, prompt: dict[str, Any]) -> None:
            self.full = [*prompt["ids"], *prompt["text"]]
            self.top, self.start = prompt["top"], len(prompt["ids"])

        @property
        def n_past(self) -> int:
            return len(self.cache)

        def _row(self, context: Sequence[int]) -> np.ndarray:
            row = np.zeros(vocab, dtype=np.float32)
            j = len(context) - self.start
            if 0 <= j < len(self.top) and list(context) == self.full[: len(context)]:
                row[self.top[j]] = [4.0, 3.0, 2.0, 1.0][: len(self.top[j])]
            return row

        def forward(self, tokens: Sequence[int], *, all_logits: bool = True) -> np.ndarray:
            base = list(self.cache)
            self.cache.extend(int(t) for t in tokens)
            clock.now += cost(len(tokens))
            n = len(tokens)
            ends = range(1, n + 1) if all_logits else [n]
            return np.stack([self._row([*base, *tokens[:e]]) for e in ends])

        def forward_tree(self, tokens: Sequence[int], parents: Sequence[int]) -> np.ndarray:
            base = list(self.cache)
            paths: list[list[int]] = []
            for i, p in enumerate(parents):
                paths.append([*(paths[p] if p >= 0 else []), int(tokens[i])])
            self.cache.extend(int(t) for t in tokens)
            clock.now += cost(len(tokens)) * tree_ratio
            return np.stack([self._row([*base, *path]) for path in paths])

        def commit_tree_path(self, base: int, path: Sequence[int]) -> None:
            nodes = self.cache[base:]
            self.cache = [*self.cache[:base], *(nodes[i] for i in path)]

        def truncate(self, length: int) -> None:
            del self.cache[length:]

        def reset(self) -> None:
            self.cache = []

    return RecordedTarget()


def make_draft(clock: Clock, cost: Any) -> Any:
    from edgespec.speculative.base import Proposer
    from edgespec.speculative.proposers.draft_model import STEADY_LAG
    from edgespec.speculative.types import EMPTY_DRAFT, Draft

    class RecordedDraft(Proposer):
        """The draft model's recorded drafts, charged as the real proposer spends: one
        forward of the tokens its cache lacks, then one per further drafted token."""

        name = "draft"
        needs_draft_model = True
        prior_acceptance = 0.7

        def __init__(self) -> None:
            super().__init__()
            self.cached: list[int] = []
            self.drafts: list[list[int]] = []
            self.start = 0

        def use(self, prompt: dict[str, Any]) -> None:
            self.drafts, self.start = prompt["drafts"], len(prompt["ids"])

        def begin(self, prompt_ids: Sequence[int], params: Any) -> None:
            self.cached = []

        def propose(self, context: Sequence[int], k: int, rng: Any) -> Draft:
            if k <= 0:
                return EMPTY_DRAFT
            common, limit = 0, min(len(self.cached), len(context) - 1)
            while common < limit and self.cached[common] == context[common]:
                common += 1
            missing = len(context) - common
            catchup = cost(missing)
            clock.now += catchup
            tokens = self.drafts[len(context) - self.start][:k]
            clock.now += cost(1) * (len(tokens) - 1)
            self.cached = [*context, *tokens[:-1]]
            return Draft(
                tuple(tokens),
                source=self.name,
                forwards=len(tokens),
                catchup_s=catchup if missing > STEADY_LAG else 0.0,
            )

    return RecordedDraft()


def build_session(spec: str, doc: dict[str, Any], clock: Clock) -> tuple[Any, Any, Any]:
    """(session, target, draft proposer or None) for ``spec`` (``strategy[:key=value...]``,
    as ``edgespec bench --strategies`` names them; ``auto`` or ``speculative``): the bench's
    parser, the strategy's own ``prepare`` (its proposers and draft lengths) and the
    session's controller, on the recorded target and draft."""
    from edgespec.bench.runner import parse_strategy
    from edgespec.speculative.base import PROPOSERS
    from edgespec.speculative.session import SpecSession, make_controller
    from edgespec.strategies import STRATEGIES

    name, opts = parse_strategy(spec)
    if name not in ("auto", "speculative"):
        raise SystemExit(f"replay: unknown strategy '{name}' (auto or speculative)")
    target = make_target(doc["vocab_size"], clock, curve_fn(doc["target_curve"]), 1.0)
    draft = make_draft(clock, curve_fn(doc["draft_curve"])) if doc["draft"] else None

    class Runtime:  # what the strategies' prepare and the proposers' create read
        def spec_session(self, config: Any, *, allow_plain: bool) -> tuple[Any, bool]:
            return config, allow_plain

    rt: Any = Runtime()
    rt.target, rt.draft = target, draft
    cfg, allow_plain = STRATEGIES.get(name).prepare(rt, opts)
    proposers: dict[str, Any] = {}
    for n in cfg.proposers:
        if n == "draft" and draft is None:
            raise SystemExit("replay: the record has no draft model to replay")
        proposers[n] = draft if n == "draft" else PROPOSERS.get(n).create(rt, cfg)
    points = {int(n): s for n, s in doc["target_curve"].items()}
    controller = make_controller(cfg, proposers, points, allow_plain=allow_plain)
    session = SpecSession(cfg, proposers, controller, tree_ok=cfg.tree, curve_source="replay")
    return session, target, (draft if "draft" in proposers else None)


def generate(session: Any, target: Any, draft: Any, prompt: dict[str, Any], n: int,
             clock: Clock) -> tuple[float, list[str]]:  # fmt: skip
    """Modeled seconds of ``n`` new tokens after the prefill, and the step trace."""
    from edgespec.sampling import GenerationParams
    from edgespec.speculative.step import Scorer, StepRecorder, speculative_step
    from edgespec.stats import StatsRecorder

    target.use(prompt)
    if draft is not None:
        draft.use(prompt)
    target.reset()
    params, rng = GenerationParams(), np.random.default_rng(0)
    ids = prompt["ids"]
    session.begin(ids, params)
    scorer, rec = Scorer(target), StatsRecorder("replay", "replay")
    hook = StepRecorder(rec)
    pending = int(np.argmax(scorer.catch_up(ids)))
    t0 = clock.now
    seq = [*ids, pending]
    trace = []
    while len(seq) - len(ids) < n:
        produced = len(seq) - len(ids)
        room = max(n - produced - 1, 0)
        step = speculative_step(session, scorer, seq, room, params, rng, hook)
        seq.extend(step.tokens)
        trace.append(f"{step.draft.source[:1]}{step.draft.k}" if step.draft.k else ".")
    if seq[len(ids) : len(ids) + n] != prompt["text"][:n]:
        raise SystemExit(f"replay: {prompt['id']} differs from the recorded text (a bug)")
    return clock.now - t0, trace


def parse_curve(text: str) -> dict[str, float]:
    """``"1:64.2,2:103.7,..."`` (tokens: ms) -> the record's ``{"n": seconds}``."""
    pairs = (item.split(":") for item in text.split(",") if item)
    return {str(int(n)): float(ms) / 1e3 for n, ms in pairs}


def run_config(
    spec: str, doc: dict[str, Any], n: int, runs: int
) -> tuple[dict[str, list[float]], list[str]]:
    """One configuration over ``runs`` rounds of the record's prompts after the warm-up:
    ``({workload: [modeled speed-up over plain decoding, per prompt and round]}, traces)``."""
    prompts = doc["prompts"]
    plain_s = curve_fn(doc["target_curve"])(1) * (n - 1)
    clock = Clock()
    real = time.perf_counter
    time.perf_counter = clock  # type: ignore[assignment]
    per: dict[str, list[float]] = {}
    traces = []
    try:
        session, target, draft = build_session(spec, doc, clock)
        generate(session, target, draft, prompts[0], WARMUP_TOKENS, clock)
        for r in range(runs):
            for p in prompts:
                seconds, trace = generate(session, target, draft, p, n, clock)
                per.setdefault(p["id"].split("-")[0], []).append(plain_s / seconds)
                traces.append(f"{r} {p['id']:<12} {plain_s / seconds:5.2f}x {' '.join(trace)}")
    finally:
        time.perf_counter = real  # type: ignore[assignment]
    return per, traces


def replay(args: argparse.Namespace) -> int:
    try:
        doc = json.loads(args.record.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"replay: cannot read the record {args.record} ({exc}); make one "
                         "with `controller_replay.py record`") from None  # fmt: skip
    if args.target_curve:  # another backend's verify curve on the same text
        scale = parse_curve(args.target_curve)["1"] / doc["target_curve"]["1"]
        doc["target_curve"] = parse_curve(args.target_curve)
        doc["draft_curve"] = {n: s * scale for n, s in doc["draft_curve"].items()}
    if args.draft_curve:  # the draft's own curve on that backend (its catch-ups' cost)
        doc["draft_curve"] = parse_curve(args.draft_curve)
    if args.prompts:  # e.g. '[23]$': the held-out prompts of a --per-workload 4 record
        doc["prompts"] = [p for p in doc["prompts"] if re.search(args.prompts, p["id"])]
        if not doc["prompts"]:
            raise SystemExit(f"replay: no prompt id matches '{args.prompts}'")
    prompts = doc["prompts"]
    n = min(len(p["text"]) for p in prompts) if args.n is None else args.n
    rows = [(spec, *run_config(spec, doc, n, args.runs)) for spec in args.configs]
    kinds = sorted({k for _, per, _ in rows for k in per})
    print(f"modeled speed-up over plain decoding ({n} tokens, {args.runs} rounds; medians over "
          "prompts and rounds)\n")  # fmt: skip
    print("| config | all | " + " | ".join(kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    for spec, per, _ in rows:
        every = [x for v in per.values() for x in v]
        cells = " | ".join(f"{statistics.median(per[k]):.3f}x" for k in kinds)
        print(f"| `{spec}` | **{statistics.median(every):.3f}x** | {cells} |")
    if args.traces:
        for spec, _, traces in rows:
            print(f"\n{spec}:")
            print("\n".join(traces))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="run the real models once and save what replay needs")
    r.add_argument("--model", required=True)
    r.add_argument("--draft", default=None, help="a draft model (else none is recorded)")
    r.add_argument("--weights", default="gguf-q8act")
    r.add_argument("--workloads", nargs="+", default=["summarize", "chat", "json", "code"])
    r.add_argument("--per-workload", type=int, default=2)
    r.add_argument("-n", type=int, default=128, help="new tokens per prompt")
    r.add_argument("--max-k", type=int, default=8)
    r.add_argument("--reps", type=int, default=5, help="repetitions per cost-curve size")
    r.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("replay", help="replay configurations on a record")
    p.add_argument("record", type=Path)
    p.add_argument("configs", nargs="+", help="auto[:key=value...], speculative[:...]")
    p.add_argument("--runs", type=int, default=3, help="rounds over the prompts")
    p.add_argument("-n", type=int, default=None, help="new tokens (default: the record's)")
    p.add_argument("--traces", action="store_true", help="print each generation's steps")
    p.add_argument("--prompts", default=None, metavar="REGEX", help="only prompt ids matching")
    p.add_argument(
        "--target-curve",
        default=None,
        metavar="N:MS,...",
        help="replace the recorded target curve (ms per forward of N tokens, linear between); "
        "the draft's curve is scaled by the same c(1) ratio",
    )
    p.add_argument(
        "--draft-curve",
        default=None,
        metavar="N:MS,...",
        help="replace the draft's curve too (its own on that backend: a catch-up of 13 tokens "
        "costs what that backend's draft takes, not the recorded curve scaled)",
    )
    a = ap.parse_args()
    return record(a) if a.cmd == "record" else replay(a)


if __name__ == "__main__":
    sys.exit(main())
