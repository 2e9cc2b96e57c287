"""Training-free activation sparsity on a dense model: the quality curve per method, and what
the sparsity at >= 0.95 top-1 agreement can buy on plain decoding (bandwidth arithmetic).

    .venv/bin/python benchmarks/sparse_quality.py --model qwen2.5-coder-1.5b \\
        --out docs/results/sparse_quality_qwen1.5b.json

1. **Quality.** The model runs on the NumPy reference (GGUF dequantized to float32). One
   dense teacher-forced pass over the fit text collects ``|value|`` at every site of every
   method (:mod:`edgespec.sparse.methods`: ``cats`` |act(gate)|, ``act-up`` |act(gate)*up|,
   ``teal`` |h| for gate/up and the down input); per method and target sparsity s the
   per-layer thresholds are the s-quantiles. On the held text (other files): teacher-forced
   top-1 agreement with dense, perplexity of both, the measured sparsity per site, chunk
   sparsity (T = 1, 2, 4, 8) and how often whole K-blocks (32, 64, 256 consecutive inputs)
   are off. Texts are the repository's own Python and English docs (fixed files; the
   commit is recorded), ``--fit-tokens`` / ``--held-tokens`` each half code, half English,
   windows of 256 tokens.
2. **What it buys (arithmetic, not timed).** From the GGUF file's tensor bytes: the bytes a
   one-token decoding step streams (every matrix but the embedding table), split into FFN
   (gate, up, down), attention and LM head. Per method at the largest measured s with
   agreement >= ``--min-agreement``: the bytes skipped when every off unit is skipped
   ("neuron-exact": rows of gate/up are contiguous in GGUF, but off *columns* (K inputs) of a
   matrix are skippable only in a repacked layout) and when only whole K-blocks can be skipped
   in the file's own layout (Q4_K: 32-wide sub-blocks, 256-wide super-blocks). Speed-up over
   the dense quantized step = total / (total - skipped), an upper bound for a
   bandwidth-bound step; times ``--backend-ratio`` (a backend's plain decoding vs llama.cpp,
   measured in docs/tvm.md) it gives the best case against llama.cpp.
3. **Code tasks** (``--code-tasks METHOD:S``, instead of 1-2): the pass rate of
   benchmarks/code_tasks (greedy, EOS honoured, the body cut at the first non-indented
   line, at most ``--max-new-tokens``) of the dense model and of the masked model, task by
   task interleaved on the same loaded model; thresholds fitted on the fit text as in 1.
   The masked FFN gives what the gathered runtime computes (up to summation order); this
   measures the pass rate, not speed.

    .venv/bin/python benchmarks/sparse_quality.py --model qwen2.5-coder-1.5b \
        --code-tasks act-up:0.3 --limit 8 --max-new-tokens 64 \
        --out docs/results/sparse_code_tasks_qwen1.5b.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIT_FILES = {
    "code": ["edgespec/sparse/stats.py", "edgespec/sampling.py"],
    "english": ["docs/design.md"],
}
HELD_FILES = {
    "code": ["benchmarks/code_tasks/harness.py", "edgespec/tokenizer.py"],
    "english": ["docs/speculative.md"],
}
#: a backend's plain decoding against llama.cpp's on the Qwen 1.5B (docs/tvm.md, load 3-4)
BACKEND_RATIOS = {"tvm gguf-exact": (0.75, 0.79), "onnx gguf-exact": (0.95, 0.95)}
#: issue 11's plain-decoding target against llama.cpp
TARGET = 1.3


def _texts(tok: Any, files: dict[str, list[str]], n: int) -> list[int]:
    """``n`` tokens: the first n/2 of the code files joined, then n/2 of the English ones."""
    ids: list[int] = []
    for kind in ("code", "english"):
        text = "\n\n".join((ROOT / f).read_text(encoding="utf-8") for f in files[kind])
        got = tok.encode(text)[: n // 2 + 1]
        if len(got) < n // 2 + 1:
            sys.exit(f"sparse_quality: {kind} files hold only {len(got)} tokens; lower the count")
        ids += got
    return ids


def gguf_bytes(path: Path) -> dict[str, float]:
    """Bytes per matrix kind streamed by one decoding step: ``gate, up, down, attn, lm_head``
    (the embedding table is looked up, not streamed; with no ``output.weight`` the head is
    the embedding table), plus ``down_types``: ``{ggml type: bytes}`` of the down matrices."""
    from gguf import GGUFReader

    r = GGUFReader(str(path))
    out = {"gate": 0.0, "up": 0.0, "down": 0.0, "attn": 0.0, "lm_head": 0.0, "other": 0.0}
    types: dict[str, float] = {}
    names = {t.name for t in r.tensors}
    kinds = {"ffn_gate": "gate", "ffn_up": "up", "ffn_down": "down"}
    for t in r.tensors:
        parts = t.name.split(".")
        key = parts[-2] if parts[0] == "blk" else parts[0]
        nb = float(t.n_bytes)
        if key in kinds:
            out[kinds[key]] += nb
            if key == "ffn_down":
                types[t.tensor_type.name] = types.get(t.tensor_type.name, 0.0) + nb
        elif key.startswith("attn") and parts[-1] == "weight" and "norm" not in key:
            out["attn"] += nb
        elif key == "output" or (key == "token_embd" and "output.weight" not in names):
            out["lm_head"] += nb
        elif key != "token_embd":
            out["other"] += nb
    return {**out, "down_types": types}  # type: ignore[dict-item]


def skipped_bytes(
    method: str, q: dict[str, Any], b: dict[str, Any], block: str
) -> dict[str, float]:
    """Bytes one decoding step could skip at ``method``'s measured sparsity: every off unit
    ("neuron") and, for input columns, only whole K-blocks of ``block`` inputs ("blocks");
    each site says which matrices' rows and columns its off units remove."""
    from edgespec.sparse.methods import METHODS

    s, off = q["site_sparsity"], q["block_off"]
    neuron = blocks = 0.0
    for site in METHODS.get(method).sites:
        rows = s[site.name] * sum(b[k] for k in site.rows)
        cols = sum(b[k] for k in site.cols)
        neuron += rows + s[site.name] * cols
        blocks += rows + off[site.name][block] * cols
    return {"neuron": neuron, "blocks": blocks}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--methods", nargs="+", default=["cats", "act-up", "teal"])
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0.1, 0.2, 0.3, 0.4, 0.5])
    ap.add_argument("--fit-tokens", type=int, default=512)
    ap.add_argument("--held-tokens", type=int, default=512)
    ap.add_argument("--min-agreement", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--code-tasks",
        default=None,
        metavar="METHOD:S",
        help="measure the code-task pass rate dense vs METHOD at sparsity S instead",
    )
    ap.add_argument("--limit", type=int, default=None, help="code tasks: the first N only")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--out", default=None, help="write the JSON here (rewritten after each row)")
    ap.add_argument(
        "--from-json",
        nargs="+",
        default=None,
        metavar="FILE",
        help="only redo the decode arithmetic (2.) from earlier runs' JSON (their rows, "
        "merged; written into the first or --out) and the model's GGUF; nothing is measured",
    )
    a = ap.parse_args(argv)
    if a.from_json:
        return redo_decode([Path(f) for f in a.from_json], a)

    from edgespec.runtime import load
    from edgespec.sparse.methods import METHODS
    from edgespec.sparse.neuron import (
        WINDOW,
        collect_site_values,
        dense_reference,
        measure_quality,
        thresholds_from_values,
    )

    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    res: dict[str, Any] = {
        "command": " ".join(["benchmarks/sparse_quality.py", *(argv or sys.argv[1:])]),
        "model": a.model,
        "commit": commit,
        "fit_files": FIT_FILES,
        "held_files": HELD_FILES,
        "load_before": os.getloadavg(),
        "rows": [],
    }

    def save() -> None:
        if a.out:
            tmp = Path(a.out + ".tmp")
            tmp.write_text(json.dumps(res, indent=1) + "\n")
            tmp.replace(a.out)

    t0 = time.time()
    with load(a.model, backend="numpy", n_ctx=WINDOW + 8, n_threads=a.threads) as rt:
        m: Any = rt.target
        res["n_layers"], res["n_embd"], res["n_ff"] = m.hp.n_layers, m.hp.n_embd, m.hp.n_ff
        fit = _texts(rt.tokenizer, FIT_FILES, a.fit_tokens)
        held = _texts(rt.tokenizer, HELD_FILES, a.held_tokens)
        if a.code_tasks:
            method, _, sp = a.code_tasks.partition(":")
            meth = METHODS.get(method)
            print(f"loaded in {time.time() - t0:.0f} s; fitting on {len(fit)} tokens", flush=True)
            values = collect_site_values(m, fit, list(meth.sites))
            th = thresholds_from_values(values, method, float(sp), m.hp.n_ff)
            res["code_tasks"] = code_tasks(m, rt.tokenizer, th, a, save, res)
            return 0
        sites = {s.name: s for n in a.methods for s in METHODS.get(n).sites}
        print(f"loaded in {time.time() - t0:.0f} s; fitting on {len(fit)} tokens", flush=True)
        values = collect_site_values(m, fit, list(sites.values()), progress=False)
        dense = dense_reference(m, held)
        print(f"fit + dense reference done at {time.time() - t0:.0f} s", flush=True)
        for method in a.methods:
            for s in a.sparsities:
                th = thresholds_from_values(values, method, s, m.hp.n_ff)
                q = measure_quality(m, th, held, dense=dense).to_dict()
                row = {"method": method, "target": s, **q, "elapsed_s": time.time() - t0}
                res["rows"].append(row)
                res["load_after"] = os.getloadavg()
                save()
                print(
                    f"{method:7s} s={s:.2f} agree={q['top1_agreement']:.3f} "
                    f"ppl {q['ppl_dense']:.3f}->{q['ppl_sparse']:.3f} "
                    f"sites {json.dumps(q['site_sparsity'])} "
                    f"off-blocks {json.dumps(q['block_off'])} "
                    f"[{time.time() - t0:.0f} s, load {os.getloadavg()[0]:.1f}]",
                    flush=True,
                )
        gguf = Path(rt.source.path)
    b = gguf_bytes(gguf) if gguf.suffix == ".gguf" else None
    res["gguf_bytes"] = b
    if b is not None:
        res["decode"] = decode_table(res["rows"], b, a.min_agreement)
        for line in res["decode"]["lines"]:
            print(line)
    save()
    return 0


def _greedy(m: Any, tok: Any, prompt: str, max_new: int) -> tuple[str, int]:
    """Greedy completion of ``prompt`` until EOS, a non-indented line, or ``max_new``."""
    m.reset()
    logits = m.forward(tok.encode(prompt), all_logits=False)
    out: list[int] = []
    for _ in range(max_new):
        nxt = int(logits[-1].argmax())
        if nxt in tok.eos_ids:
            break
        out.append(nxt)
        text = tok.decode(out)
        if any(ln.strip() and not ln[0].isspace() for ln in text.split("\n")):
            break  # a non-indented line has begun: the body is over (cut_completion)
        logits = m.forward([nxt])
    return tok.decode(out), len(out)


def code_tasks(
    m: Any, tok: Any, th: Any, a: argparse.Namespace, save: Any, res: dict[str, Any]
) -> dict[str, Any]:
    """Pass rate of dense and masked greedy completions, task by task interleaved."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "code_tasks"))
    import harness

    from edgespec.sparse.neuron import ffn_override, masked_ffn

    tasks = harness.load_tasks()[: a.limit]
    out: dict[str, Any] = {
        "method": th.method,
        "target": th.target_sparsity,
        "max_new_tokens": a.max_new_tokens,
        "tasks": [],
    }
    res["code_tasks"] = out
    contexts = {"dense": _null, "sparse": lambda: ffn_override(m, masked_ffn(m, th))}
    t0 = time.time()
    for i, task in enumerate(tasks):
        row: dict[str, Any] = {"id": task["id"]}
        for name, ctx in contexts.items():
            with ctx():
                text, n = _greedy(m, tok, task["prompt"], a.max_new_tokens)
            r = harness.check(task, text)
            row[name] = {"passed": r.passed, "tokens": n, "text": text}
        row["same_text"] = row["dense"]["text"] == row["sparse"]["text"]
        out["tasks"].append(row)
        n_done = len(out["tasks"])
        for name in ("dense", "sparse"):
            out[f"{name}_pass_rate"] = sum(t[name]["passed"] for t in out["tasks"]) / n_done
        out["same_text"] = sum(t["same_text"] for t in out["tasks"]) / n_done
        res["load_after"] = os.getloadavg()
        save()
        print(
            f"[{i + 1}/{len(tasks)}] {task['id']}: dense {row['dense']['passed']} sparse "
            f"{row['sparse']['passed']} same {row['same_text']} "
            f"[{time.time() - t0:.0f} s, load {os.getloadavg()[0]:.1f}]",
            flush=True,
        )
    return out


def _null() -> Any:
    import contextlib

    return contextlib.nullcontext()


def redo_decode(paths: list[Path], a: argparse.Namespace) -> int:
    """The decode arithmetic of saved runs (their rows merged, ordered by method and
    target), written back into ``--out`` (or the first file)."""
    from edgespec import zoo

    res = json.loads(paths[0].read_text())
    rows = [r for p in paths for r in json.loads(p.read_text())["rows"]]
    order = list(dict.fromkeys(r["method"] for r in rows))
    res["rows"] = sorted(rows, key=lambda r: (order.index(r["method"]), r["target"]))
    res["merged_from"] = [str(p) for p in paths]
    b = gguf_bytes(zoo.pull(res["model"], progress=False))
    res["gguf_bytes"] = b
    res["decode"] = decode_table(res["rows"], b, a.min_agreement)
    for line in res["decode"]["lines"]:
        print(line)
    out = Path(a.out or paths[0])
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.replace(out)
    return 0


def decode_table(rows: list[dict[str, Any]], b: dict[str, Any], min_agree: float) -> dict[str, Any]:
    """Per method: the largest measured s with agreement >= ``min_agree`` and the best-case
    decode speed-ups it implies (see the module docstring)."""
    total = b["gate"] + b["up"] + b["down"] + b["attn"] + b["lm_head"] + b["other"]
    ffn = b["gate"] + b["up"] + b["down"]
    lines = [
        f"one decoding step streams {total / 1e6:.1f} MB: FFN {ffn / total:.1%}"
        f" (gate {b['gate'] / 1e6:.1f}, up {b['up'] / 1e6:.1f}, down {b['down'] / 1e6:.1f} MB),"
        f" attention {b['attn'] / total:.1%}, LM head {b['lm_head'] / total:.1%}",
        "| method | s at >= agreement | agreement | skip (neuron-exact) | speed-up | "
        "skip (whole 32-blocks) | speed-up | skip (whole 256-blocks) | speed-up | "
        + " | ".join(f"x {k} (neuron-exact / own layout)" for k in BACKEND_RATIOS)
        + " |",
    ]
    out: dict[str, Any] = {"total_bytes": total, "methods": {}}
    for method in dict.fromkeys(r["method"] for r in rows):
        ok = [r for r in rows if r["method"] == method and r["top1_agreement"] >= min_agree]
        if not ok:
            lines.append(f"| {method} | none measured | | | | | | | |")
            continue
        r = max(ok, key=lambda r: r["target"])
        sk = skipped_bytes(method, r, b, "32")
        sk256 = skipped_bytes(method, r, b, "256")
        sp = {k: total / (total - v) for k, v in sk.items()}
        sp256 = total / (total - sk256["blocks"])
        vs = {k: (lo * sp["neuron"], hi * sp["neuron"]) for k, (lo, hi) in BACKEND_RATIOS.items()}
        vs_own = {
            k: (lo * sp["blocks"], hi * sp["blocks"]) for k, (lo, hi) in BACKEND_RATIOS.items()
        }
        out["methods"][method] = {
            "target": r["target"],
            "agreement": r["top1_agreement"],
            "skipped_neuron": sk["neuron"],
            "skipped_blocks32": sk["blocks"],
            "skipped_blocks256": sk256["blocks"],
            "speedup_neuron": sp["neuron"],
            "speedup_blocks32": sp["blocks"],
            "speedup_blocks256": sp256,
            "vs_llamacpp": vs,
            "vs_llamacpp_own_layout": vs_own,
        }
        lines.append(
            f"| {method} | {r['target']:.2f} | {r['top1_agreement']:.3f} | "
            f"{sk['neuron'] / total:.1%} | {sp['neuron']:.2f}x | {sk['blocks'] / total:.1%} | "
            f"{sp['blocks']:.2f}x | {sk256['blocks'] / total:.1%} | {sp256:.2f}x | "
            + " | ".join(
                f"{lo:.2f}-{hi:.2f}x / {lo2:.2f}-{hi2:.2f}x"
                for (lo, hi), (lo2, hi2) in zip(vs.values(), vs_own.values(), strict=True)
            )
            + " |"
        )
    # the sparsity every site would need for 1.3x llama.cpp with neuron-exact skipping
    lines.append(
        "| method | bytes skipped per unit of s | "
        + " | ".join(f"s for 1.3x llama.cpp on {k} (best {hi:.2f}x)" for k, (_, hi) in
                     BACKEND_RATIOS.items())
        + " |"
    )  # fmt: skip
    from edgespec.sparse.methods import METHODS

    for method in out["methods"]:
        per_s = sum(b[k] for site in METHODS.get(method).sites for k in (*site.rows, *site.cols))
        need = {k: total * (1 - hi / TARGET) / per_s for k, (_, hi) in BACKEND_RATIOS.items()}
        out["methods"][method]["s_needed_for_target"] = need
        lines.append(
            f"| {method} | {per_s / total:.1%} | "
            + " | ".join(
                f"{v:.2f}" if v <= 1 else f"{v:.2f} (> 1: impossible)" for v in need.values()
            )
            + " |"
        )
    out["lines"] = lines
    return out


if __name__ == "__main__":
    sys.exit(main())
