"""Calibrate entropy switching: the cheapest (τ, window) that meets a quality floor.

For every prompt of a workload the large model's own greedy output is the reference. Each
grid point (τ, w) runs ``entropy-switch`` on every prompt and measures, as means over prompts:

- quality: token edit similarity to the reference (``--metric edit``, the default) or the
  exact-prefix fraction (``--metric prefix``); plus the mean NLL under the large model when
  asked (``nll=True``);
- cost: the share of tokens written while the large model was in charge. With ``r`` the small
  model's per-token time over the large one's, the estimated cost against the large model
  alone is ``r + (1 - r) * share``, which ranks points exactly as the share does, so the
  choice does not depend on timing noise; measured tokens/s is reported beside it.

The cheapest point whose quality is at or above the floor wins (ties: higher quality). τ = -inf
(large model only) always reproduces the reference, so greedy calibration always finds one.
The result is lossy by nature and says so (``"lossy": true``). The CLI writes it to a JSON
file, plots cost against quality (PNG), and, when the model is a bundle folder, stores it in
the bundle's ``calibration`` entry.

Keep this module's top level light: the CLI imports it to add ``calibrate-switch``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgespec.cli import DEFAULT_MAX_NEW_TOKENS
from edgespec.errors import EdgespecError

if TYPE_CHECKING:
    import argparse

    from edgespec.runtime import Runtime

METRICS = ("edit", "prefix")
#: rounding slack when comparing a measured quality with the floor
QUALITY_TOL = 1e-9
#: quantiles of the small model's entropy trace used as τ candidates by default
TAU_QUANTILES = (0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9)


def _json_float(x: float) -> float | str:
    return str(x) if math.isinf(x) else x


@dataclass(frozen=True)
class Point:
    """One grid point, averaged over the workload.

    Attributes:
        tau: entropy threshold (nats).
        window: rolling window (tokens).
        min_run: minimum run before a switch (tokens).
        quality: the chosen metric, in [0, 1].
        edit_similarity: mean token edit similarity to the reference.
        prefix_frac: mean exact-prefix length over the reference length.
        large_share: fraction of tokens written while the large model was in charge.
        switches: mean model switches per prompt.
        tokens_per_s: measured new tokens over wall seconds, all prompts together.
        nll: mean NLL under the large model (nats/token), when measured.
    """

    tau: float
    window: int
    min_run: int
    quality: float
    edit_similarity: float
    prefix_frac: float
    large_share: float
    switches: float
    tokens_per_s: float
    nll: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tau"] = _json_float(self.tau)
        return d


@dataclass(frozen=True)
class Calibration:
    """The search's outcome.

    Attributes:
        metric: "edit" or "prefix".
        min_quality: the floor.
        chosen: the cheapest point meeting the floor (None when none does).
        points: every point measured.
        small_over_large: r, the small model's seconds per token over the large one's
            (measured on the workload; 0 when unknown).
        reference_tokens_per_s: the large model alone, tokens/s on the same workload.
        prompts: number of prompts; max_new_tokens: tokens per prompt.
    """

    metric: str
    min_quality: float
    chosen: Point | None
    points: list[Point]
    small_over_large: float = 0.0
    reference_tokens_per_s: float = 0.0
    prompts: int = 0
    max_new_tokens: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def est_cost(self, p: Point) -> float:
        """Estimated cost against the large model alone: ``r + (1 - r) * share``."""
        r = self.small_over_large
        return r + (1 - r) * p.large_share

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": "entropy-switch",
            "lossy": True,
            "reference": "the large model's greedy output",
            "metric": self.metric,
            "min_quality": self.min_quality,
            "met": self.chosen is not None,
            "chosen": None
            if self.chosen is None
            else {**self.chosen.to_dict(), "est_cost_vs_large": self.est_cost(self.chosen)},
            "small_over_large": self.small_over_large,
            "reference_tokens_per_s": self.reference_tokens_per_s,
            "prompts": self.prompts,
            "max_new_tokens": self.max_new_tokens,
            **self.info,
            "points": [{**p.to_dict(), "est_cost_vs_large": self.est_cost(p)} for p in self.points],
        }


def pick(points: Sequence[Point], min_quality: float) -> Point | None:
    """The cheapest point (lowest large-model share) with ``quality >= min_quality``; ties
    go to the higher quality. None when no point meets the floor (compared with a 1e-9
    tolerance, so that a mean such as 1 - 11/20 meets a floor of 0.45)."""
    ok = [p for p in points if p.quality >= min_quality - QUALITY_TOL]
    return min(ok, key=lambda p: (p.large_share, -p.quality)) if ok else None


def check_floor(min_quality: float, metric: str) -> None:
    if metric not in METRICS:
        raise EdgespecError(f"unknown quality metric '{metric}'; known: {', '.join(METRICS)}")
    if not 0.0 <= min_quality <= 1.0:  # also rejects NaN
        raise EdgespecError(f"--min-quality must be in [0, 1], got {min_quality!r}")


def calibrate(
    rt: Runtime,
    prompts: Sequence[list[int]],
    *,
    min_quality: float,
    metric: str = "edit",
    taus: Sequence[float] | None = None,
    windows: Sequence[int] = (1, 4, 8),
    min_run: int = 4,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    spec_k: int | str = 0,
    nll: bool = False,
    progress: bool = False,
) -> Calibration:
    """Search ``taus`` x ``windows`` (greedy decoding) for the cheapest point meeting
    ``min_quality``. ``taus=None``: quantiles of the small model's entropy on the workload,
    plus +inf and -inf.

    ``spec_k`` (default 0) is the composition used while measuring each point. It does not
    change greedy output (hand-overs happen at exact tokens), so quality and large-model
    share are the same for every value; only the measured tokens/s differ.

    ``progress`` shows a tqdm bar on stderr: the two reference passes, then one step per
    grid point."""
    import sys

    from tqdm.auto import tqdm

    from edgespec.quality import agreement
    from edgespec.strategies.entropy_switch import SwitchConfig

    check_floor(min_quality, metric)
    if not prompts:
        raise EdgespecError("the workload has no prompts")
    for w in windows:
        SwitchConfig(window=w, min_run=min_run)
    for t in taus or ():
        SwitchConfig(tau=t)
    gen = {"max_new_tokens": max_new_tokens}

    def timed(**kw: Any) -> tuple[list[Any], float]:
        t0 = time.perf_counter()
        out = [rt.generate(list(p), **gen, **kw) for p in prompts]
        return out, time.perf_counter() - t0

    n_taus = len(taus) if taus is not None else len(TAU_QUANTILES) + 2
    bar = tqdm(
        total=2 + len(windows) * n_taus,
        desc="calibrate-switch",
        unit="run",
        disable=not progress,
        file=sys.stderr,
        leave=False,
    )
    bar.set_postfix_str("large model alone")
    refs, t_large = timed(strategy="autoregressive")
    bar.update(1)
    bar.set_postfix_str("small model alone")
    smalls, t_small = timed(strategy="entropy-switch", config={"tau": math.inf})
    bar.update(1)
    n_large = sum(r.stats.new_tokens for r in refs)
    n_small = sum(r.stats.new_tokens for r in smalls)
    ratio = (t_small / max(n_small, 1)) / (t_large / max(n_large, 1)) if n_large else 0.0
    if taus is None:
        import numpy as np

        trace = [h for r in smalls for h in r.stats.entropy_trace]
        qs = np.quantile(trace, TAU_QUANTILES) if trace else []
        taus = [math.inf, *sorted({round(float(q), 4) for q in qs}, reverse=True), -math.inf]
        bar.total = 2 + len(windows) * len(taus)
        bar.refresh()
    points = []
    for w in windows:
        for tau in taus:
            cfg = {"tau": tau, "window": w, "min_run": min_run, "spec_k": spec_k}
            bar.set_postfix_str(f"tau={tau:.3g} w={w}")
            outs, wall = timed(strategy="entropy-switch", config=cfg)
            bar.update(1)
            ags = [
                agreement(o.token_ids, r.token_ids, model=rt.target if nll else None, prompt=p)
                for o, r, p in zip(outs, refs, prompts, strict=True)
            ]
            n_tok = sum(o.stats.new_tokens for o in outs)
            edit = _mean(a.edit_similarity for a in ags)
            prefix = _mean(a.prefix_frac for a in ags)
            points.append(
                Point(
                    tau=float(tau),
                    window=w,
                    min_run=min_run,
                    quality=edit if metric == "edit" else prefix,
                    edit_similarity=edit,
                    prefix_frac=prefix,
                    large_share=(
                        sum(o.stats.model_trace.count("t") for o in outs) / n_tok if n_tok else 0.0
                    ),
                    switches=_mean(o.stats.switches for o in outs),
                    tokens_per_s=n_tok / wall if wall > 0 else 0.0,
                    nll=_mean(a.nll for a in ags if a.nll is not None) if nll else None,
                )
            )
    bar.close()
    return Calibration(
        metric=metric,
        min_quality=min_quality,
        chosen=pick(points, min_quality),
        points=points,
        small_over_large=ratio,
        reference_tokens_per_s=n_large / t_large if t_large > 0 else 0.0,
        prompts=len(prompts),
        max_new_tokens=max_new_tokens,
    )


def _mean(xs: Any) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else 0.0


def plot(cal: Calibration, path: Path) -> bool:
    """Cost (large-model share) against quality, one line per window; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for w in sorted({p.window for p in cal.points}):
        pts = sorted((p for p in cal.points if p.window == w), key=lambda p: p.large_share)
        ax.plot([p.large_share for p in pts], [p.quality for p in pts], "o-", label=f"w={w}")
    ax.axhline(cal.min_quality, color="grey", ls="--", lw=1, label="quality floor")
    if cal.chosen is not None:
        c = cal.chosen
        ax.plot(
            [c.large_share], [c.quality], "r*", ms=14, label=f"chosen: tau={c.tau:g}, w={c.window}"
        )
    ax.set_xlabel("share of tokens from the large model (cost)")
    ax.set_ylabel(f"quality ({cal.metric} vs large greedy)")
    ax.set_title("entropy-switch calibration (lossy)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def read_workload(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Prompts from a ``.jsonl`` file (``{"prompt": ..., "chat": bool}`` per line) or a text
    file (one prompt per line)."""
    if not path.is_file():
        raise EdgespecError(f"workload file '{path}' does not exist")
    rows: list[dict[str, Any]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
                prompt = row["prompt"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise EdgespecError(
                    f'{path}:{n}: expected a JSON object with a "prompt" field'
                ) from None
            rows.append({"prompt": prompt, "chat": bool(row.get("chat", False))})
        else:
            rows.append({"prompt": line.replace("\\n", "\n"), "chat": False})
    if not rows:
        raise EdgespecError(f"workload file '{path}' has no prompts")
    return rows[:limit] if limit else rows


def store_in_bundle(model: str | None, result: dict[str, Any]) -> Path | None:
    """Write ``result`` under ``calibration.entropy_switch`` of a bundle's ``edgespec.json``
    (atomically); None when ``model`` is not a bundle folder."""
    from edgespec.fileutil import atomic_path

    if not model:
        return None
    manifest = Path(model) / "edgespec.json"
    if not manifest.is_file():
        return None
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data.setdefault("calibration", {})["entropy_switch"] = {
        k: v for k, v in result.items() if k != "points"
    }
    with atomic_path(manifest) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return manifest


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise EdgespecError(f"{flag} takes comma-separated numbers, got {text!r}") from None


def cmd_calibrate_switch(a: argparse.Namespace) -> int:

    if a.draft is None:
        raise EdgespecError("calibrate-switch needs a small model; pass --draft SMALL")
    check_floor(a.min_quality, a.metric)
    taus = _floats(a.taus, "--taus") if a.taus else None
    windows = [int(w) for w in _floats(a.windows, "--windows")]
    from edgespec.bench.workloads import resolve_workload

    rows = read_workload(resolve_workload(a.workload), a.limit)
    from edgespec.cli import load_from_args

    with load_from_args(a) as rt:
        prompts = [rt.encode_prompt(r["prompt"], chat=r["chat"]) for r in rows]
        cal = calibrate(
            rt,
            prompts,
            min_quality=a.min_quality,
            metric=a.metric,
            taus=taus,
            windows=windows,
            min_run=a.min_run,
            max_new_tokens=a.max_new_tokens,
            spec_k=a.k,
            nll=a.nll,
            progress=not a.quiet,
        )
        info = {
            "model": str(rt.source.name),
            "draft": str(a.draft),
            "backend": rt.backend,
            "workload": str(a.workload),
        }
    result = {**cal.to_dict(), **info}
    out = Path(a.out)
    from edgespec.fileutil import atomic_path

    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    png = Path(a.plot) if a.plot else out.with_suffix(".png")
    plotted = plot(cal, png)
    bundle = store_in_bundle(a.model, result)
    if a.json:
        print(json.dumps(result))
        return 0 if cal.chosen is not None else 1
    print(f"{'tau':>8} {'w':>3} {'quality':>8} {'large%':>7} {'cost':>6} {'tok/s':>7}")
    for p in cal.points:
        mark = " *" if p == cal.chosen else ""
        print(
            f"{p.tau:>8.3g} {p.window:>3} {p.quality:>8.3f} {100 * p.large_share:>6.1f}% "
            f"{cal.est_cost(p):>6.2f} {p.tokens_per_s:>7.1f}{mark}"
        )
    if cal.chosen is None:
        print(f"no setting reaches quality {a.min_quality} (lossy strategy)")
    else:
        c = cal.chosen
        print(
            f"chosen (lossy): --tau {c.tau:g} --window {c.window} --min-run {c.min_run} "
            f"quality {c.quality:.3f}, large model for {100 * c.large_share:.0f}% of tokens"
        )
    print(
        f"result: {out}"
        + (f", plot: {png}" if plotted else " (no matplotlib: no plot)")
        + (f", bundle: {bundle}" if bundle else "")
    )
    return 0 if cal.chosen is not None else 1


def add_commands(sub: Any) -> None:
    """Add ``calibrate-switch`` to the ``edgespec`` command."""
    from edgespec.cli import _add_load_args

    c = sub.add_parser(
        "calibrate-switch",
        help="find the cheapest entropy-switch tau/window meeting a quality floor (lossy)",
        description="Run entropy-switch (lossy) over a grid of tau x window on a workload, "
        "against the large model's own greedy output, and pick the cheapest point whose "
        "quality meets --min-quality. -m is the large model, -md the small one.",
    )
    _add_load_args(c)
    c.add_argument(
        "--workload",
        required=True,
        help=".jsonl (prompt per object) or .txt file, or a shipped workload: code, "
        "summarize, chat, json",
    )
    c.add_argument(
        "--min-quality",
        type=float,
        required=True,
        help="floor in [0, 1] on the quality metric against the large model",
    )
    c.add_argument("--metric", default="edit", help="edit (token edit similarity) | prefix")
    c.add_argument(
        "--taus",
        default=None,
        help="comma-separated taus (default: quantiles of the small model's entropy)",
    )
    c.add_argument("--windows", default="1,4,8", help="comma-separated windows")
    c.add_argument("--min-run", type=int, default=4)
    c.add_argument(
        "--k", type=int, default=0, help="draft length while the large model is in charge (0 = off)"
    )
    c.add_argument(
        "--max-new-tokens",
        "-n",
        type=int,
        default=DEFAULT_MAX_NEW_TOKENS,
        help=f"tokens per prompt and grid point (default {DEFAULT_MAX_NEW_TOKENS})",
    )
    c.add_argument("--limit", type=int, default=None, help="use the first N prompts only")
    c.add_argument("--nll", action="store_true", help="also measure NLL under the large model")
    c.add_argument("--out", default="switch-calibration.json", help="result JSON")
    c.add_argument("--plot", default=None, help="PNG path (default: beside --out)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_calibrate_switch)
