"""From results.json to the summary, report.md, results.csv and the plots.

Everything here is a pure function of the results document, so ``edgespec report DIR``
re-renders exactly what ``edgespec bench`` wrote.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from edgespec.bench.metrics import fmt, merge_hist, spread
from edgespec.bench.schema import RUN_PROPERTIES
from edgespec.errors import EdgespecError

BASELINE = "baseline"
#: run-record fields summarised as median (min-max)
SPREAD_FIELDS = (
    "tok_s",
    "decode_tok_s",
    "ratio",
    "ttft_s",
    "cpu_s_per_token",
    "cpu_ratio",
    "peak_rss_mb",
    "mean_accepted",
    "energy_j",
    "j_per_token",
    "j_per_accepted",
    "energy_ratio",
    "large_share",
    "switches",
)
#: results.csv columns: every run-record field of the schema, in its order, but the notes
CSV_FIELDS = tuple(f for f in RUN_PROPERTIES if f != "notes")
PLOTS = {
    "tok_s.png": "tokens/s per configuration, median with min-max bars",
    "speed_energy.png": "speed vs energy per token",
    "acceptance.png": "acceptance histograms",
    "k_trace.png": "chosen draft length over time",
}


def draft_quant_note(settings: dict[str, Any]) -> str:
    """ ", run as a Q4_0 copy on tvm" where ``edgespec.load`` requantized the draft
    (``settings["draft_quant"]``: backend -> type or None; absent in older results)."""
    copies = {b: q for b, q in (settings.get("draft_quant") or {}).items() if q}
    if not copies or not settings.get("draft"):
        return ""
    names = settings.get("resolved_backends") or {}
    on = ", ".join(f"{q.upper()} copy on {names.get(b, b)}" for b, q in copies.items())
    return f" (run as its {on}: `draft_quant` auto, docs/speculative.md)"


def labels(doc: dict[str, Any]) -> list[str]:
    """The baseline, then every configuration, in the order they were measured."""
    return [BASELINE] + [c["label"] for c in doc["configs"]]


def energy_kind(doc: dict[str, Any]) -> str:
    """ "measured" or "estimated"; a document never mixes the two."""
    kinds = {r["energy_kind"] for r in doc["runs"]} or {doc["energy"]["kind"]}
    if len(kinds) > 1:
        raise EdgespecError(f"results mix energy kinds {sorted(kinds)}; refusing to report them")
    return kinds.pop()


def summarize_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median/min/max of every metric over ``rows`` (runs of one configuration)."""
    s: dict[str, Any] = {f: spread(r.get(f) for r in rows) for f in SPREAD_FIELDS}
    plain = [r["agree_plain"] for r in rows if r.get("agree_plain") is not None]
    s["agree_baseline_min"] = min((r["agree_baseline"] for r in rows), default=None)
    s["agree_plain_min"] = min(plain, default=None)
    # quantized backends may diverge from plain decoding at near-ties (edgespec.losslessness)
    diverged = [r for r in rows if r.get("agree_plain") is not None and r["agree_plain"] < 1]
    s["non_tie_divergences"] = sum(1 for r in diverged if not r.get("near_tie", False))
    s["near_tie_divergences"] = len(diverged) - s["non_tie_divergences"]
    bounds = [r for r in rows if r.get("near_tie_bound") is not None]
    s["near_tie_bound"] = max((r["near_tie_bound"] for r in bounds), default=None)
    s["near_tie_bound_source"] = (
        "+".join(sorted({str(r.get("near_tie_bound_source")) for r in bounds})) or None
    )
    answered = [r for r in rows if "correct" in r]  # prompts with a checked answer
    s["answered"], s["right"] = len(answered), sum(bool(r["correct"]) for r in answered)
    s["accept_hist"] = merge_hist(r["accept_hist"] for r in rows)
    ks = [k for r in rows for k in r["k_trace"]]
    s["mean_k"] = sum(ks) / len(ks) if ks else None
    s["runs"] = len(rows)
    return s


def _bound_text(s: dict[str, Any]) -> str:
    """The near-tie bound a configuration was judged by, and where it came from."""
    if s.get("near_tie_bound") is None:
        return "(none recorded)"
    return f"(bound {s['near_tie_bound']:.3g} logits, {s['near_tie_bound_source']})"


def status(label: str, lossy: bool, s: dict[str, Any]) -> str:
    """One word on correctness: reference, exact, lossy, NOT LOSSLESS or differs."""
    if label == BASELINE:
        return "reference"
    if not s["runs"]:
        return "not measured"
    if lossy:
        return "lossy"
    if s.get("non_tie_divergences", 0):
        return "NOT LOSSLESS"
    if s.get("near_tie_divergences", 0):
        return "exact up to near-ties"
    if s["agree_baseline_min"] is not None and s["agree_baseline_min"] < 1:
        return "differs from baseline"
    return "exact"


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """``{"overall": {label: stats}, "by_kind": {kind: {label: stats}}, "flags": [...]}``."""
    lossy = {c["label"]: bool(c["lossy"]) for c in doc["configs"]}
    lossy[BASELINE] = False
    runs = doc["runs"]
    overall = {}
    for lb in labels(doc):
        s = summarize_rows([r for r in runs if r["label"] == lb])
        s["lossy"] = lossy[lb]
        s["status"] = status(lb, lossy[lb], s)
        overall[lb] = s
    kinds = sorted({r["kind"] for r in runs})
    by_kind = {
        k: {
            lb: summarize_rows([r for r in runs if r["label"] == lb and r["kind"] == k])
            for lb in labels(doc)
        }
        for k in kinds
    }
    flags = []
    for lb, s in overall.items():
        if s["status"] == "NOT LOSSLESS":
            flags.append(
                f"`{lb}` is declared lossless but {s['non_tie_divergences']} run(s) left plain "
                "greedy decoding on the same backend at a position that was not a near-tie "
                f"{_bound_text(s)} (worst agreement {s['agree_plain_min']:.0%}): a bug"
            )
        elif s["status"] == "exact up to near-ties":
            flags.append(
                f"`{lb}`: {s['near_tie_divergences']} run(s) left plain greedy decoding at a "
                "near-tie (plain decoding's top two logits no further apart than the "
                "largest top-2 gap change measured between batched and one-token forwards "
                f"{_bound_text(s)}); the first divergence decides the rest, so prefix "
                f"agreement can be low (worst {s['agree_plain_min']:.0%})"
            )
        elif s["status"] == "differs from baseline":
            flags.append(
                f"`{lb}` matches its own backend's plain decoding but only "
                f"{s['agree_baseline_min']:.0%} of the baseline's tokens: the backend's "
                "numerics differ from llama.cpp"
            )
        elif s["status"] == "lossy":
            flags.append(
                f"`{lb}` is lossy: greedy agreement with the baseline "
                f"{fmt(s['agree_baseline_min'], '.0%')} (worst run)"
            )
    return {"overall": overall, "by_kind": by_kind, "flags": flags}


def baseline_threads_lines(doc: dict[str, Any]) -> list[str]:
    """The report's line on the baseline's thread count (none for older results)."""
    b = doc["baseline"]
    if "threads" not in b:
        return []
    if b["threads"] is None:
        return ["- baseline threads: llama-cpp-python's default (half the cores for one token)"]
    extra = [c["label"] for c in doc["configs"] if c.get("strategy") == BASELINE]
    also = f"; also measured: `{extra[0]}`" if extra else ""
    return [f"- baseline threads: {b['threads']} ({b.get('threads_source', 'given')}){also}"]


def _cell(s: dict[str, Any], spec: str = ".1f", scale: float = 1.0) -> str:
    if s["median"] is None:
        return "-"
    m, lo, hi = (s[k] * scale for k in ("median", "min", "max"))
    return f"{m:{spec}} ({lo:{spec}}-{hi:{spec}})"


def _ratio(s: dict[str, Any]) -> str:
    if s["median"] is None:
        return "-"
    return f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})"


def energy_label(doc: dict[str, Any]) -> str:
    """The energy source as every table and plot names it."""
    e = doc["energy"]
    if e["kind"] == "estimated":
        return f"estimated: CPU-s x {e.get('watts_per_core')} W"
    return f"measured: {e['source']}"


def render_markdown(doc: dict[str, Any], plots: list[str] | None = None) -> str:
    """report.md: settings, the summary table, ratios per workload, histograms, flags."""
    summ = summarize(doc)
    st, ov = doc["settings"], summ["overall"]
    kind = energy_label(doc)
    lines = ["# edgespec bench report", ""]
    if not doc["complete"]:
        lines += [
            f"> **INCOMPLETE**: the benchmark stopped early ({doc['error'] or 'unknown error'}). "
            f"{len(doc['runs'])} run records were gathered; every figure below covers only them.",
            "",
        ]
    prompts = doc["prompts"]
    kinds = sorted({p["kind"] for p in prompts})
    lines += [
        f"- model: `{st['model'] or 'default'}`"
        + (f", draft `{st['draft']}`" if st["draft"] else "")
        + draft_quant_note(st),
        f"- baseline: {doc['baseline']['description'] or '-'}",
        *baseline_threads_lines(doc),
        f"- {st['max_new_tokens']} new tokens per generation (EOS ignored); runs: {st['runs']}, "
        f"after {st['warmup']} warm-up round(s), interleaved; {len(prompts)} prompts "
        f"({', '.join(kinds)})",
        f"- energy: **{kind}**"
        + (" (an estimate, not a measurement)" if doc["energy"]["kind"] == "estimated" else ""),
        f"- device: {doc['machine']['description']} (fingerprint {doc['machine']['fingerprint']})",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in doc["versions"].items() if v),
        f"- command: `{doc['command_line']}`",
        f"- started {doc['started']}, finished {doc['finished'] or '-'}",
        "",
        "## Summary (all workloads)",
        "",
        "Medians over runs and prompts, min-max in brackets. Ratios are taken run by run "
        "against the baseline measured beside each run (speed: higher is better; "
        "CPU and energy: lower is better).",
        "",
        f"| config | tok/s | speed vs baseline | TTFT ms | CPU-s/token (x baseline) "
        f"| peak RSS MiB | mean accepted/forward | J/token ({kind}) | J/accepted draft token "
        f"({kind}) | greedy agreement | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lb, s in ov.items():
        agree = "-" if s["agree_baseline_min"] is None else f"{s['agree_baseline_min']:.0%}"
        lines.append(
            f"| {lb}{' (lossy)' if s['lossy'] else ''} | {_cell(s['tok_s'])} | "
            f"{_ratio(s['ratio'])} | {_cell(s['ttft_s'], '.0f', 1000)} | "
            f"{fmt(s['cpu_s_per_token']['median'], '.4f')} "
            f"({fmt(s['cpu_ratio']['median'], '.2f')}x) | {fmt(s['peak_rss_mb']['max'], '.0f')} | "
            f"{fmt(s['mean_accepted']['median'], '.2f')} | "
            f"{fmt(s['j_per_token']['median'], '.4f')} | "
            f"{fmt(s['j_per_accepted']['median'], '.4f')} | {agree} | {s['status']} |"
        )
    lines += [
        "",
        "## Speed vs baseline by workload",
        "",
        "Median ratio (min-max) of tokens/s against the baseline; baseline tok/s for scale.",
        "",
        "| workload | baseline tok/s | " + " | ".join(labels(doc)[1:]) + " |",
        "|---|---|" + "---|" * (len(labels(doc)) - 1),
    ]
    for k, per in summ["by_kind"].items():
        cells = [_ratio(per[lb]["ratio"]) for lb in labels(doc)[1:]]
        lines.append(f"| {k} | {_cell(per[BASELINE]['tok_s'])} | " + " | ".join(cells) + " |")
    lines += answers_section(doc, summ)
    lines += two_model_section(doc, ov)
    lines += sparsity_section(doc)
    lines += [
        "",
        "## Acceptance",
        "",
        "Draft tokens accepted per speculative step: {accepted: steps}; mean k chosen.",
        "",
        "| config | histogram | mean k |",
        "|---|---|---|",
    ]
    for lb, s in ov.items():
        if lb == BASELINE:
            continue
        hist = " ".join(f"{a}:{n}" for a, n in s["accept_hist"].items()) or "-"
        lines.append(f"| {lb} | {hist} | {fmt(s['mean_k'], '.2f')} |")
    lines += ["", "## Flags", ""]
    lines += [f"- {f}" for f in summ["flags"]] or [
        "- none: every lossless configuration matched plain greedy decoding exactly"
    ]
    notes = sorted({n for r in doc["runs"] for n in r["notes"]})
    notes += [f"energy: {n}" for n in doc["energy"].get("notes", [])]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Plots", ""]
    if plots is None:
        lines.append("- not drawn: matplotlib is not installed (pip install 'edgespec[plot]')")
    elif not plots:
        lines.append("- not drawn (--no-plots)")
    else:
        lines += [f"![{PLOTS[p]}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def answers_section(doc: dict[str, Any], summ: dict[str, Any]) -> list[str]:
    """Markdown lines: right answers per configuration and workload, for prompts with a
    checked answer (the long-context workloads); empty when there are none."""
    ov = summ["overall"]
    if not any(s["answered"] for s in ov.values()):
        return []
    kinds = [k for k, per in summ["by_kind"].items() if any(s["answered"] for s in per.values())]
    lines = [
        "",
        "## Answers",
        "",
        "Runs whose generated text holds every part of the prompt's answer "
        "(case-insensitive), per configuration and workload.",
        "",
        "| config | all | " + " | ".join(kinds) + " |",
        "|---|---|" + "---|" * len(kinds),
    ]
    for lb, s in ov.items():
        per = [summ["by_kind"][k][lb] for k in kinds]
        cells = [f"{x['right']}/{x['answered']}" if x["answered"] else "-" for x in [s, *per]]
        lines.append(f"| {lb} | " + " | ".join(cells) + " |")
    return lines


def two_model_section(doc: dict[str, Any], ov: dict[str, Any]) -> list[str]:
    """Markdown lines comparing two-model configurations (runs with ``large_share``) with
    the large model alone; empty when there are none."""
    rows = [lb for lb, s in ov.items() if s["large_share"]["median"] is not None]
    if not rows:
        return []
    lines = [
        "",
        "## Two-model strategies against the large model alone",
        "",
        "The baseline is the large model (`--model`) alone, "
        f"{doc['baseline']['description'] or 'plain decoding'}, measured beside every run: "
        "the ratios below are against the large model alone in the same run. These "
        "strategies are lossy: quality is the greedy agreement with the baseline.",
        "",
        "| config | tok/s | tok/s vs large alone | CPU-s/token | CPU-s/token vs large alone "
        "| large-model share | switches/run | greedy agreement |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for lb in rows:
        s = ov[lb]
        agree = "-" if s["agree_baseline_min"] is None else f"{s['agree_baseline_min']:.0%}"
        lines.append(
            f"| {lb}{' (lossy)' if s['lossy'] else ''} | {_cell(s['tok_s'])} | "
            f"{_ratio(s['ratio'])} | {fmt(s['cpu_s_per_token']['median'], '.4f')} | "
            f"{_ratio(s['cpu_ratio'])} | {fmt(s['large_share']['median'], '.0%')} | "
            f"{fmt(s['switches']['median'], '.1f')} | {agree} |"
        )
    return lines


def sparsity_section(doc: dict[str, Any]) -> list[str]:
    """Markdown lines on the FFN sparsity of chunk-sparse targets (rows with ``sparsity``;
    :func:`edgespec.sparse.stats.report_lines`); empty when there are none."""
    per: dict[str, list[dict[str, Any]]] = {}
    for r in doc["runs"]:
        if r.get("sparsity"):
            per.setdefault(r["label"], []).append(r["sparsity"])
    if not per:
        return []
    from edgespec.sparse.stats import report_lines

    return report_lines(per)


def render_csv(doc: dict[str, Any]) -> str:
    """results.csv: one row per measured generation."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in doc["runs"]:
        row = dict(r)
        row["accept_hist"] = json.dumps(r["accept_hist"], sort_keys=True)
        row["k_trace"] = " ".join(str(k) for k in r["k_trace"])
        row["proposer_trace"] = " ".join(n or "-" for n in r.get("proposer_trace", ()))
        row["accepted_trace"] = " ".join(str(n) for n in r.get("accepted_trace", ()))
        w.writerow(row)
    return buf.getvalue()


def render_all(doc: dict[str, Any], out: Path, *, plots: bool | None = None) -> list[Path]:
    """Write report.md, results.csv and (when matplotlib is installed) the PNG plots."""
    out.mkdir(parents=True, exist_ok=True)
    want = doc["settings"].get("plots", True) if plots is None else plots
    drawn: list[str] | None = []
    written: list[Path] = []
    if want:
        from edgespec.bench import plots as plotting

        if plotting.available():
            written += plotting.draw_all(doc, summarize(doc), out)
            drawn = [p.name for p in written]
        else:
            drawn = None
    (out / "report.md").write_text(render_markdown(doc, drawn))
    (out / "results.csv").write_text(render_csv(doc))
    return [out / "report.md", out / "results.csv", *written]


def load_results(folder: Path) -> dict[str, Any]:
    """results.json of ``folder``, validated against the schema."""
    from edgespec.bench.schema import validate

    path = Path(folder) / "results.json"
    if not path.is_file():
        raise EdgespecError(f"no results.json in {folder}; run edgespec bench --out {folder}")
    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:
        raise EdgespecError(f"{path} is not valid JSON: {exc}") from None
    validate(doc)
    return doc
