"""``edgespec profile``: one generation, timed phase by phase, to show where the time goes.

Phases: tokenize and setup (strategy preparation: speculation session, cost-curve probe) are
timed here; prefill, draft, verify (decode for plain decoding; small and large for the
forwards of a two-model strategy), rollback, sample and detokenize are recorded by the engine
and strategies through :meth:`~edgespec.stats.StatsRecorder.phase` when ``trace_phases`` is
on. "other" is the wall time no phase covers (controller, bookkeeping, the generator
hand-offs).

Strategies that record an entropy trace (entropy-switch, sentence-lead) also get
entropy.png: ``H_t`` per token, τ, and which model was in charge.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

#: phases in pipeline order (a phase that never occurred is left out of the table)
ORDER = (
    "tokenize",
    "setup",
    "prefill",
    "draft",
    "verify",
    "decode",
    "small",
    "large",
    "rollback",
    "sample",
    "detokenize",
)


def profile_generation(
    rt: Any,
    prompt: str,
    *,
    strategy: str = "autoregressive",
    config: Any = None,
    chat: bool = False,
    system: str | None = None,
    warmup: int = 0,
    **params: Any,
) -> dict[str, Any]:
    """Generate once with phase tracing on; returns phases, the table and the stats.

    ``warmup`` untimed generations run first, so that one-time setup (the speculation
    session, the cost-curve probe when no ``edgespec calibrate`` profile is stored) does
    not dominate; with 0 the cold start is what you see.

    Returns:
        ``{"phases": [[name, start_s, seconds], ...], "table": [{"phase", "calls",
        "total_s", "share", "mean_ms"}, ...], "total_s", "text", "stats", "options"}``;
        starts are seconds since tokenization began; ``options`` are the strategy's
        prepared options when they have a ``to_dict`` (entropy-switch: tau, window, ...),
        else None.
    """
    for _ in range(warmup):
        rt.generate(
            rt.encode_prompt(prompt, chat=chat, system=system),
            strategy=strategy,
            config=config,
            **params,
        )
    t_start = time.perf_counter()
    ids = rt.encode_prompt(prompt, chat=chat, system=system)
    t_tok = time.perf_counter()
    gen = rt.start(ids, strategy=strategy, config=config, **params)
    gen.ctx.rec.trace_phases = True
    result = gen.run()
    total = time.perf_counter() - t_start
    rec = gen.ctx.rec
    shift = rec._t0 - t_start  # the recorder's clock starts when generation begins
    phases = [("tokenize", 0.0, t_tok - t_start), ("setup", t_tok - t_start, rec._t0 - t_tok)]
    phases += [(n, s + shift, d) for n, s, d in rec.phases]
    prof = {
        "phases": [list(p) for p in phases],
        "table": phase_table(phases, total),
        "total_s": total,
        "warmup": warmup,
        "text": result.text,
        "stats": result.stats.to_dict(),
        "options": _options(gen.ctx.config),
    }
    if getattr(rt.target, "sparsity", None) is not None:  # chunk-sparse FFN: T = 1 .. 16
        from edgespec.sparse.stats import sparsity_curve

        prof["sparsity_curve"] = sparsity_curve(rt.target, [*ids, *result.token_ids])
    return prof


def _options(prepared: Any) -> dict[str, Any] | None:
    to_dict = getattr(prepared, "to_dict", None)
    return to_dict() if callable(to_dict) else None


def phase_table(phases: list[tuple[str, float, float]], total: float) -> list[dict[str, Any]]:
    """Per phase: calls, total seconds, share of ``total``, mean ms per call; then "other"."""
    names = [n for n in ORDER if any(p[0] == n for p in phases)]
    names += sorted({p[0] for p in phases} - set(names))
    rows: list[dict[str, Any]] = []
    for n in names:
        ds = [d for name, _, d in phases if name == n]
        rows.append(
            {
                "phase": n,
                "calls": len(ds),
                "total_s": sum(ds),
                "share": sum(ds) / total if total else 0.0,
                "mean_ms": 1000 * sum(ds) / len(ds),
            }
        )
    other = max(total - sum(r["total_s"] for r in rows), 0.0)
    rows.append(
        {
            "phase": "other",
            "calls": 0,
            "total_s": other,
            "share": other / total if total else 0.0,
            "mean_ms": 0.0,
        }
    )
    return rows


def format_table(prof: dict[str, Any]) -> str:
    lines = [f"{'phase':<12} {'calls':>6} {'total ms':>10} {'share':>7} {'mean ms':>9}"]
    for r in prof["table"]:
        lines.append(
            f"{r['phase']:<12} {r['calls']:>6} {r['total_s'] * 1000:>10.2f} "
            f"{r['share']:>7.1%} {r['mean_ms']:>9.3f}"
        )
    lines.append(f"{'total':<12} {'':>6} {prof['total_s'] * 1000:>10.2f} {1:>7.1%}")
    return "\n".join(lines)


def write_profile(prof: dict[str, Any], out: Path, title: str, *, plot: bool = True) -> list[Path]:
    """profile.json; with matplotlib installed also profile.png (the timeline), entropy.png
    when the strategy recorded an entropy trace, and sparsity.png (chunk sparsity against
    chunk size) for a chunk-sparse model (old ones are removed)."""
    from edgespec.bench import plots

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "profile.json"]
    (out / "profile.json").write_text(json.dumps(prof, indent=1) + "\n")
    (out / "entropy.png").unlink(missing_ok=True)  # never leave another run's trace
    (out / "sparsity.png").unlink(missing_ok=True)
    if plot and plots.available():
        order = [r["phase"] for r in prof["table"] if r["phase"] != "other"]
        phases = [(n, s, d) for n, s, d in prof["phases"]]
        written.append(plots.timeline_plot(phases, order, title, out / "profile.png"))
        stats = prof["stats"]
        if stats.get("entropy_trace") and stats.get("model_trace"):
            opts = prof.get("options") or {}
            tau = opts.get("tau")
            written.append(
                plots.entropy_plot(
                    stats["entropy_trace"],
                    stats["model_trace"],
                    f"{title.split(':')[0]}: entropy per token",
                    out / "entropy.png",
                    tau=None if tau is None else float(tau),
                    window=opts.get("window"),
                )
            )
        if prof.get("sparsity_curve"):
            written.append(
                plots.sparsity_plot(
                    prof["sparsity_curve"],
                    f"{title.split(':')[0]}: FFN sparsity against chunk size",
                    out / "sparsity.png",
                    measured=stats.get("sparsity", {}).get("by_chunk"),
                )
            )
    return written
