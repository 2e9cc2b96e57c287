"""PNG plots with matplotlib's Agg canvas (no display, no pyplot global state).

Every figure is a pure function of the results document, and PNGs are written without a
timestamp, so re-rendering gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

BASELINE = "baseline"
#: PNG metadata: no "Software" version string, so output does not vary with matplotlib
_META = {"Software": None}


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(w: float = 8.0, h: float = 4.5) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png", metadata=_META)
    return path


def draw_all(doc: dict[str, Any], summary: dict[str, Any], out: Path) -> list[Path]:
    """tok_s.png, speed_energy.png, acceptance.png and k_trace.png in ``out``."""
    from edgespec.bench.report import energy_label

    ov = summary["overall"]
    title = f"{doc['settings']['model'] or 'default model'}"
    if not doc["complete"]:
        title += " (INCOMPLETE)"
    return [
        tok_s_plot(ov, title, out / "tok_s.png"),
        speed_energy_plot(
            ov, title, energy_label(doc), doc["energy"]["kind"], out / "speed_energy.png"
        ),
        acceptance_plot(ov, title, out / "acceptance.png"),
        k_trace_plot(doc, title, out / "k_trace.png"),
    ]


def tok_s_plot(ov: dict[str, Any], title: str, path: Path) -> Path:
    fig = _figure(max(6.0, 1.3 * len(ov) + 2), 4.5)
    ax = fig.add_subplot()
    names = list(ov)
    med = [ov[n]["tok_s"]["median"] or 0.0 for n in names]
    lo = [m - (ov[n]["tok_s"]["min"] or m) for n, m in zip(names, med, strict=True)]
    hi = [(ov[n]["tok_s"]["max"] or m) - m for n, m in zip(names, med, strict=True)]
    colors = [
        "0.55" if n == BASELINE else ("tab:orange" if ov[n]["lossy"] else "tab:blue") for n in names
    ]
    ax.bar(range(len(names)), med, yerr=[lo, hi], capsize=4, color=colors)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(
        [n + (" (lossy)" if ov[n]["lossy"] else "") for n in names], rotation=20, ha="right"
    )
    ax.set_ylabel("tokens/s (median, min-max bars)")
    ax.set_title(f"{title}: speed")
    return _save(fig, path)


def speed_energy_plot(ov: dict[str, Any], title: str, label: str, kind: str, path: Path) -> Path:
    fig = _figure(7.0, 5.0)
    ax = fig.add_subplot()
    marker = "o" if kind == "measured" else "x"
    for n, s in ov.items():
        x, y = s["j_per_token"]["median"], s["tok_s"]["median"]
        if x is None or y is None:
            continue
        ax.scatter([x], [y], marker=marker, s=60)
        ax.annotate(
            n + (" (lossy)" if s["lossy"] else ""),
            (x, y),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    ax.set_xlabel(f"J/token ({label})")
    ax.set_ylabel("tokens/s")
    ax.set_title(
        f"{title}: speed vs energy"
        + (" [ESTIMATED energy]" if kind != "measured" else " [measured energy]")
    )
    return _save(fig, path)


def acceptance_plot(ov: dict[str, Any], title: str, path: Path) -> Path:
    hists = {n: s["accept_hist"] for n, s in ov.items() if s["accept_hist"]}
    cols = max(1, min(3, len(hists)))
    rows = max(1, -(-len(hists) // cols))
    fig = _figure(4.0 * cols, 3.2 * rows)
    if not hists:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no speculative steps", ha="center", va="center")
        ax.set_axis_off()
    for i, (n, h) in enumerate(hists.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        xs = [int(k) for k in h]
        ax.bar(xs, list(h.values()), color="tab:green")
        ax.set_xticks(xs)
        ax.set_title(n, fontsize=9)
        ax.set_xlabel("draft tokens accepted per step")
        ax.set_ylabel("steps")
    fig.suptitle(f"{title}: acceptance")
    return _save(fig, path)


def k_trace_plot(doc: dict[str, Any], title: str, path: Path) -> Path:
    """The draft length chosen at each step, for the first measured run of each config."""
    fig = _figure(8.0, 4.5)
    ax = fig.add_subplot()
    drawn = False
    for c in doc["configs"]:
        row = next((r for r in doc["runs"] if r["label"] == c["label"] and r["k_trace"]), None)
        if row is None:
            continue
        ax.step(
            range(len(row["k_trace"])),
            row["k_trace"],
            where="post",
            label=f"{c['label']} ({row['prompt']}, run {row['run']})",
        )
        drawn = True
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(
            0.5,
            0.5,
            "no speculative configuration",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xlabel("speculative step")
    ax.set_ylabel("draft length k (0 = plain decoding)")
    ax.set_title(f"{title}: chosen draft length over time")
    return _save(fig, path)


def timeline_plot(
    phases: list[tuple[str, float, float]], order: list[str], title: str, path: Path
) -> Path:
    """One row per phase, a bar for each span: (name, start s, seconds)."""
    fig = _figure(10.0, 0.45 * len(order) + 1.6)
    ax = fig.add_subplot()
    cmap = [
        "tab:blue",
        "tab:orange",
        "tab:green",
        "tab:red",
        "tab:purple",
        "tab:brown",
        "tab:pink",
        "tab:gray",
        "tab:olive",
        "tab:cyan",
    ]
    for i, name in enumerate(order):
        spans = [(s * 1000, d * 1000) for n, s, d in phases if n == name]
        ax.broken_barh(spans, (i - 0.4, 0.8), color=cmap[i % len(cmap)])
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels(order)
    ax.invert_yaxis()
    ax.set_xlabel("ms since the start")
    ax.set_title(title)
    return _save(fig, path)


#: what each letter of ``Stats.model_trace`` means, and its shading in the entropy plot
ROLES = {"d": ("small model in charge", "tab:green"), "t": ("large model in charge", "tab:orange")}


def role_spans(model_trace: str) -> list[tuple[str, int, int]]:
    """Maximal runs of one role in ``model_trace``: (role, first token, one past the last)."""
    spans: list[tuple[str, int, int]] = []
    for i, role in enumerate(model_trace):
        if spans and spans[-1][0] == role:
            spans[-1] = (role, spans[-1][1], i + 1)
        else:
            spans.append((role, i, i + 1))
    return spans


def rolling_mean(values: list[float], window: int) -> list[float]:
    """``float[n]``: the mean of the last ``window`` values at each position (fewer at the
    start), the quantity entropy-switch compares with τ."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def entropy_plot(
    entropy_trace: list[float],
    model_trace: str,
    title: str,
    path: Path,
    *,
    tau: float | None = None,
    window: int | None = None,
) -> Path:
    """``H_t`` per new token (nats), its rolling mean over ``window`` tokens, the threshold
    τ (when finite), and shading for which model was in charge of each token."""
    import math

    fig = _figure(10.0, 4.2)
    ax = fig.add_subplot()
    labelled: set[str] = set()
    for role, start, end in role_spans(model_trace):
        label, color = ROLES.get(role, (role, "0.8"))
        ax.axvspan(
            start - 0.5,
            end - 0.5,
            color=color,
            alpha=0.15,
            lw=0,
            label=None if role in labelled else label,
        )
        labelled.add(role)
    xs = list(range(len(entropy_trace)))
    ax.plot(xs, entropy_trace, ".-", lw=0.7, ms=3, color="tab:blue", label="H_t")
    if window and window > 1:
        ax.plot(
            xs,
            rolling_mean(entropy_trace, window),
            lw=1.6,
            color="tab:purple",
            label=f"mean of the last {window}",
        )
    if tau is not None and math.isfinite(tau):
        ax.axhline(tau, color="tab:red", ls="--", lw=1.2, label=f"tau = {tau:g}")
    ax.set_xlim(-0.5, max(len(entropy_trace), 1) - 0.5)
    ax.set_xlabel("new token")
    ax.set_ylabel("entropy of its distribution (nats)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path)


def sparsity_plot(
    curve: dict[str, Any],
    title: str,
    path: Path,
    *,
    measured: dict[str, Any] | None = None,
) -> Path:
    """Chunk-level sparsity against chunk size T (:func:`edgespec.sparse.stats.sparsity_curve`):
    the mean over layers, each layer, what independent tokens would leave (``s1^T``, s1 the
    token-level sparsity), and the generation's own forwards (``measured``: Stats
    ``sparsity["by_chunk"]``) as points."""
    sizes, mean = curve["chunk_sizes"], curve["mean"]
    fig = _figure(8.0, 4.5)
    ax = fig.add_subplot()
    for i, row in enumerate(curve["per_layer"]):
        ax.plot(sizes, row, lw=0.7, color="0.7", label="per layer" if i == 0 else None)
    ax.plot(sizes, mean, "o-", lw=2.0, ms=4, color="tab:blue", label="mean over layers")
    if sizes and sizes[0] == 1:
        s1 = mean[0]
        indep = [s1**T for T in sizes]
        ax.plot(sizes, indep, ":", lw=1.5, color="tab:red", label=f"independent tokens: {s1:.2f}^T")
    if measured:
        pts = sorted((int(T), r["chunk_sparsity"]) for T, r in measured.items())
        pts = [(T, y) for T, y in pts if T <= max(sizes, default=0)]
        if pts:
            ax.plot(*zip(*pts, strict=True), "s", ms=6, color="tab:green", label="this generation")
    ax.set_xlabel("chunk size T (tokens verified together)")
    ax.set_ylabel(f"{curve.get('unit', 'block')}s outside the chunk's union")
    ax.set_ylim(0.0, 1.0)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
    return _save(fig, path)
