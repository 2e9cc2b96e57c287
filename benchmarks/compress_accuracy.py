"""Accuracy and cost of prompt compression against the full context, from one bench run.

    edgespec bench -m qwen2.5-coder-1.5b --backends llamacpp --strategies autoregressive \
        --compress 0.25 --compress-only --compressor smollm2-135m --workloads ... \
        -c 4608 -n 16 --runs 1 --warmup 0 -t 2 --energy estimate --out DIR --no-plot
    python benchmarks/compress_accuracy.py DIR [--load DIR/load.log] [--compressed-json GEN]
    python benchmarks/compress_accuracy.py --pairs A/pairs.jsonl B/pairs.jsonl [--load LOG]

``--compress-only`` makes every prompt one full-context row (the llama.cpp baseline) and one
compressed row, measured one after the other in the same process. This script pairs them
by prompt (a partial ``results.json`` counts: only prompts with both rows are used), writes
``DIR/pairs.jsonl`` (one line a prompt: both answers, right or wrong, TTFT and CPU-s of
both) and prints a Markdown summary: accuracy per family and overall for both arms, the
paired difference with a bound on it, and the medians of the per-prompt TTFT and CPU-s
ratios (compressed / full; CPU-s is what the estimated energy is proportional to).

``--compressed-json GEN`` takes the compressed arm from ``edgespec generate ... --compress
0.25 --json`` outputs instead (``GEN/<prompt id>.json``, e.g. after a compressor change),
paired with the bench's full-context rows: the accuracy pairs hold, but the time ratios
are then across runs (other load), so they are labelled so (``same_run`` false in
``pairs.jsonl``).

``--pairs FILE ...`` summarises ``pairs.jsonl`` files written before, together (e.g. the
first 12 prompts' full rows of an earlier bench with a compressed arm from ``generate``,
and a later bench of the other 12): the TTFT and CPU-s ratios are then the medians over
the pairs measured in one run only (both arms of a prompt in one process, one after the
other), and the table says over how many (``n = ...``).

Two bounds. The two arms can differ only on discordant prompts (right in one arm, wrong in
the other), so ``|accuracy difference| <= discordant / n``; the one-sided 95 % upper
Clopper-Pearson bound on the discordant rate bounds the difference a larger sample of the
same prompts could show. The exact two-sided sign test (McNemar) on the discordant pairs
says whether the difference seen is more than chance. The target's own question, whether
the compressed arm is no worse than the full context by more than 5 points, is the
one-sided 95 % lower bound of the paired difference (:func:`paired_lower_bound`, Newcombe's
hybrid score interval) against -5 points.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def upper_bound(k: int, n: int, alpha: float = 0.05) -> float:
    """One-sided (1 - alpha) upper Clopper-Pearson bound on a rate seen k times in n."""
    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):  # bisection: the p where P(X <= k) = alpha
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if binom_cdf(k, n, mid) > alpha else (lo, mid)
    return hi


def wilson(k: int, n: int, z: float) -> tuple[float, float]:
    """Wilson's score interval for a rate seen k times in n, at normal quantile z."""
    p, q = k / n, z * z / n
    mid, half = (p + q / 2) / (1 + q), z * math.sqrt(p * (1 - p) / n + q / (4 * n)) / (1 + q)
    return mid - half, mid + half


def paired_lower_bound(a: int, b: int, c: int, d: int, z: float = 1.645) -> float:
    """The lower confidence bound of ``p2 - p1`` (the compressed arm's accuracy less the
    full context's) over paired prompts: ``a`` right in both, ``b`` only in arm 1 (full), ``c``
    only in arm 2, ``d`` in neither; Newcombe's hybrid score interval for paired proportions
    (Statistics in Medicine 17, 1998, method 10: each arm's Wilson interval, joined with the
    pairs' correlation, whose ``ad - bc`` loses ``n / 2`` when above it and counts as 0
    between 0 and ``n / 2``). z = 1.645: the one-sided 95 % bound."""
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    l2 = wilson(a + c, n, z)[0]
    u1 = wilson(a + b, n, z)[1]
    den = (a + b) * (c + d) * (a + c) * (b + d)
    cross: float = a * d - b * c  # the correlation's numerator, corrected as Newcombe's
    cross = cross - n / 2 if cross > n / 2 else min(cross, 0)
    phi = cross / math.sqrt(den) if den else 0.0
    dl, du = p2 - l2, u1 - p1
    return p2 - p1 - math.sqrt(max(0.0, dl * dl - 2 * phi * dl * du + du * du))


def sign_test(b: int, c: int) -> float:
    """Exact two-sided p of b successes against c under p = 1/2 (McNemar's exact test)."""
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * binom_cdf(min(b, c), n, 0.5))


def pairs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per prompt with both a baseline (full) and a compressed row."""
    by: dict[str, dict[str, Any]] = {}
    for r in doc["runs"]:
        arm = (
            "full"
            if r["label"] == "baseline"
            else "compressed"
            if "compress" in r["label"]
            else None
        )
        if arm is not None and "correct" in r:
            by.setdefault(r["prompt"], {"prompt": r["prompt"], "family": r["kind"]})[arm] = r
    out = []
    for p in by.values():
        if "full" not in p or "compressed" not in p:
            continue
        f, c = p.pop("full"), p.pop("compressed")
        p.update(
            full_correct=f["correct"],
            compressed_correct=c["correct"],
            full_text=f.get("text"),
            compressed_text=c.get("text"),
            full_ttft_s=f["ttft_s"],
            compressed_ttft_s=c["ttft_s"],
            full_cpu_s=f["cpu_s"],
            compressed_cpu_s=c["cpu_s"],
            compress_s=c.get("compress_s"),
            tokens_full=c.get("compressed_from"),
            tokens_compressed=c.get("compressed_to"),
            ttft_ratio=c["ttft_s"] / f["ttft_s"],
            cpu_ratio=c["cpu_s"] / f["cpu_s"],
            same_run=c["label"] != GENERATED,
        )
        out.append(p)
    return out


def generate_rows(doc: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``doc`` with its compressed rows replaced by ``folder/<prompt id>.json`` (``edgespec
    generate --json`` outputs), scored against the workloads' answers; prompts without
    such a file lose their compressed row."""
    from edgespec.bench.workloads import is_correct, load_workloads

    answers = {p["id"]: p for p in doc["prompts"]}
    names: list[str | Path] = sorted({str(w) for w in doc["settings"]["workloads"]})
    answer_of = {p.id: p.answer for p in load_workloads(names)}
    runs = [r for r in doc["runs"] if r["label"] == "baseline"]
    for pid, p in answers.items():
        f = folder / f"{pid}.json"
        if not f.is_file():
            continue
        raw = f.read_text().strip()
        if not raw:  # the generate call is still running or failed (see its runs.log)
            continue
        g = json.loads(raw)
        st = g["stats"]
        runs.append(
            {
                "label": GENERATED,
                "prompt": pid,
                "kind": p["kind"],
                "correct": is_correct(g["text"], answer_of[pid]),
                "text": g["text"],
                "ttft_s": st["ttft_s"],
                "cpu_s": st["cpu_s"],
                "compress_s": st["compress_s"],
                "compressed_from": st["compressed_from"],
                "compressed_to": st["compressed_to"],
            }
        )
    return {**doc, "runs": runs}


#: the label of a compressed row taken from ``edgespec generate --json`` (another run)
GENERATED = "generate+compress"


def _pct(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / n:.0f} %)" if n else "-"


def _ratios(rs: list[float], counted: bool) -> str:
    """'median (min-max)' of the ratios; with ``counted``, also how many pairs."""
    if not rs:
        return "-"
    n = f", n = {len(rs)}" if counted else ""
    return f"{statistics.median(rs):.2f} ({min(rs):.2f}-{max(rs):.2f}{n})"


def counts(rows: list[dict[str, Any]]) -> tuple[int, int, int, int]:
    """The paired table of ``rows``: right in both arms, only with the full context, only
    compressed, in neither."""
    both = sum(r["full_correct"] and r["compressed_correct"] for r in rows)
    full = sum(r["full_correct"] and not r["compressed_correct"] for r in rows)
    comp = sum(r["compressed_correct"] and not r["full_correct"] for r in rows)
    return both, full, comp, len(rows) - both - full - comp


def summary(rows: list[dict[str, Any]]) -> str:
    """The Markdown tables: per family and overall."""
    lines = [
        "| family | prompts | full context right | compressed right | difference (points) |"
        " both / full only / compressed only / neither | TTFT ratio median (range) |"
        " CPU-s ratio median (range) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fams = sorted({r["family"] for r in rows})
    # pairs from one run and pairs across runs together: time only the one-run pairs
    mixed = len({r.get("same_run", True) for r in rows}) > 1
    for fam in [*fams, "all"]:
        rs = [r for r in rows if fam in ("all", r["family"])]
        n = len(rs)
        if not n:
            continue
        both, fo, co, neither = counts(rs)
        f, c = both + fo, both + co
        timed = [r for r in rs if r.get("same_run", True)] if mixed else rs
        lines.append(
            f"| {'**all**' if fam == 'all' else fam} | {n} | {_pct(f, n)} | {_pct(c, n)} | "
            f"{100 * (c - f) / n:+.1f} | {both} / {fo} / {co} / {neither} | "
            f"{_ratios([r['ttft_ratio'] for r in timed], mixed)} | "
            f"{_ratios([r['cpu_ratio'] for r in timed], mixed)} |"
        )
    n = len(rows)
    both, fo, co, neither = counts(rows)
    ub = upper_bound(fo + co, n) if n else 1.0
    low = paired_lower_bound(both, fo, co, neither) if n else -1.0
    lines += [
        "",
        f"Paired, {n} prompts: {fo} right only with the full context, {co} right only "
        f"compressed; exact sign test p = {sign_test(fo, co):.3g}. The arms can differ only "
        f"on discordant prompts: {fo + co}/{n} here, at most {100 * ub:.0f} % at 95 % "
        "confidence (one-sided Clopper-Pearson), which bounds |accuracy difference| in "
        "points.",
        "",
        f"Compressed less full context: {100 * (co - fo) / n:+.1f} points; its one-sided 95 % "
        f"lower bound {100 * low:+.1f} points (Newcombe's paired score interval, method 10): "
        f"the compressed arm is {'' if low > -0.05 else 'not '}shown within 5 points of the "
        "full context (no worse by more than 5).",
    ]
    return "\n".join(lines)


def load_range(path: Path) -> str:
    """'1-minute load average L-H over HH:MM-HH:MM' from a ``time l1 l5 l15`` log."""
    rows = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    if not rows:
        return "no load samples"
    l1 = [float(r[1]) for r in rows]
    return (
        f"1-minute load average {min(l1):.1f}-{max(l1):.1f} (median "
        f"{statistics.median(l1):.1f}) over {rows[0][0]}-{rows[-1][0]} UTC, {len(rows)} samples"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "dir", type=Path, nargs="?", default=None, help="the bench --out folder (results.json)"
    )
    ap.add_argument("--load", type=Path, default=None, help="a load log: 'HH:MM:SS l1 l5 l15'")
    ap.add_argument(
        "--compressed-json",
        type=Path,
        default=None,
        metavar="GEN",
        help="the compressed arm from GEN/<prompt id>.json (edgespec generate --json)",
    )
    ap.add_argument(
        "--pairs",
        type=Path,
        nargs="+",
        default=None,
        metavar="FILE",
        help="summarise these pairs.jsonl files (written by earlier runs) together instead",
    )
    a = ap.parse_args()
    if (a.dir is None) == (a.pairs is None):
        print(
            "compress_accuracy.py: pass a bench folder DIR or --pairs FILE ..., one",
            file=sys.stderr,
        )
        raise SystemExit(2)
    if a.pairs is not None:
        rows = [json.loads(ln) for f in a.pairs for ln in f.read_text().splitlines() if ln]
        seen = [r["prompt"] for r in rows]
        if twice := sorted({p for p in seen if seen.count(p) > 1}):
            print(
                f"compress_accuracy.py: {', '.join(twice)} in more than one --pairs file; "
                "pass each prompt's pairs once",
                file=sys.stderr,
            )
            raise SystemExit(2)
        print(f"{len(rows)} prompts with both arms from {', '.join(map(str, a.pairs))}")
    else:
        doc = json.loads((a.dir / "results.json").read_text())
        out = a.dir / "pairs.jsonl"
        if a.compressed_json is not None:
            doc, out = generate_rows(doc, a.compressed_json), a.compressed_json / "pairs.jsonl"
            print("compressed arm: edgespec generate outputs; time ratios are ACROSS runs")
        rows = pairs(doc)
        with open(out, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(
            f"{a.dir}/results.json: {'complete' if doc['complete'] else 'partial'}, "
            f"{len(rows)} prompts with both arms"
        )
    if a.load is not None and a.load.is_file():
        print(load_range(a.load))
    print()
    print(summary(rows))
    print()
    print(
        "| prompt | full answer | compressed answer | tokens | TTFT s full / compressed | "
        "CPU-s full / compressed |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:

        def ans(text: str | None, ok: bool) -> str:
            t = " ".join((text or "").split()).replace("|", "\\|")
            return f"{'right' if ok else 'WRONG'}: `{t[:48]}`"

        print(
            f"| {r['prompt']} | {ans(r['full_text'], r['full_correct'])} | "
            f"{ans(r['compressed_text'], r['compressed_correct'])} | "
            f"{r['tokens_full']} -> {r['tokens_compressed']} | "
            f"{r['full_ttft_s']:.1f} / {r['compressed_ttft_s']:.1f} | "
            f"{r['full_cpu_s']:.1f} / {r['compressed_cpu_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
