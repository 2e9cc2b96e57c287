"""Which scoring mode keeps the facts: the compressor alone, no target, every mode side by side.

    python benchmarks/compress_survival.py [--compressor smollm2-135m] \
        [--compressor-backend onnx] [--scoring conditional contrastive plain] \
        [--ratio 0.25] [--workloads long/needle long/multifact long/code_long] \
        [--max-tokens 4500] [-t 2] [--json FILE]

For every long-context prompt (up to ``--max-tokens`` compressor tokens) and every scoring
mode (``edgespec.compress.core.SCORERS``), the prompt is compressed to ``--ratio`` of its
context by the compressor on its scoring backend, exactly as ``edgespec generate
--compress`` does (the compressor's tokenizer must round-trip the text, as with a target of
another vocabulary), and the kept context is checked for the facts the question needs:

- ``needle``: the vault code's digits are in the kept context;
- ``multifact``: for each person asked about, a kept record (a line, cut again before each
  full name, :func:`records`) starts with the full name and holds the answer (city, job);
- other kinds: every part of the answer is in the kept context or the question.

Each row also counts the kept context's lines (``lines``: a kept directory should stay one
record a line, not one run-on line) and, for ``multifact``, the kept full names that share
a first or last name with an asked person without being one (``near_misses``: "Sven
Tanaka" for "Sven Rossi").

This is a necessary condition for the target to answer, not the target's accuracy (that is
``edgespec bench --compress``); it picks the default scoring mode cheaply. The modes share
their passes (the context alone; the question then the context): each distinct sequence is
scored once per prompt and the result reused, so no seconds are reported
(``benchmarks/compress_scoring.py`` times a pass).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgespec.bench.workloads import Prompt, load_workloads
from edgespec.compress import core
from edgespec.compress.core import SCORERS, CompressOptions, split_question
from edgespec.compress.prompt import Compressor, compress_prompt, scoring_backend
from edgespec.runtimes.base import LoadOptions
from edgespec.sources import resolve
from edgespec.threads import load_tuned
from edgespec.tokenizer import load_tokenizer

#: the people a multifact question asks about: city of the first, job of the second
ASKED = re.compile(r"does (\w+ \w+) live, and what is (\w+ \w+)'s job")


#: a person's full name in a directory: two capitalised words ("Sven Rossi"), also glued
#: to the word before when the compressor dropped the space ("yearsNadia Kowalski")
FULL_NAME = re.compile(r"(?<![A-Z])[A-Z][a-z]+ [A-Z][a-z]+\b")


def records(kept_context: str) -> list[str]:
    """The kept context cut into records: at each line break and before each full name
    (:data:`FULL_NAME`), so that a directory whose line breaks were dropped (one run-on
    line) is still one record a person."""
    out = []
    for line in kept_context.splitlines():
        cuts = sorted({0, len(line), *(m.start() for m in FULL_NAME.finditer(line))})
        out += [line[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if line[a:b].strip()]
    return out


def facts_kept(p: Prompt, kept_context: str, question: str) -> bool:
    """Whether ``kept_context`` still holds what ``p``'s question needs (see the module
    docstring); case-sensitive, as the workloads write them."""
    if p.kind == "multifact" and (m := ASKED.search(question)):
        recs = records(kept_context)
        return all(
            any(rec.lstrip().startswith(name) and part in rec for rec in recs)
            for name, part in zip(m.groups(), p.answer, strict=True)
        )
    return all(part in kept_context or part in question for part in p.answer)


def near_misses(p: Prompt, kept_context: str, question: str) -> int | None:
    """How many kept full names (:data:`FULL_NAME`) share a first or last name with a
    person the question asks about without being one ("Sven Tanaka" for "Sven Rossi");
    None for prompts other than ``multifact``."""
    if p.kind != "multifact" or not (m := ASKED.search(question)):
        return None
    parts = {w for name in m.groups() for w in name.split()}
    return sum(
        1
        for name in FULL_NAME.findall(kept_context)
        if name not in m.groups() and parts & set(name.split())
    )


def shared_passes() -> dict[tuple[int, ...], np.ndarray]:
    """Put a cache in front of ``core.self_information`` (the scorers call it through the
    module) so that modes sharing a pass compute it once; returns the cache."""
    cache: dict[tuple[int, ...], np.ndarray] = {}
    score = core.self_information

    def cached(model: Any, ids: Sequence[int], **kw: Any) -> np.ndarray:
        key = tuple(ids)
        if key not in cache:
            cache[key] = score(model, ids, **kw)
        return cache[key].copy()

    core.self_information = cached  # type: ignore[assignment]
    return cache


def score_overlap_ids(*args: Any, **_: Any) -> core.Scores:
    """``overlap`` matching the question by token id only (before words were matched
    whatever their case and token; docs/compression.md), for comparison."""
    return core.score_overlap(*args)


SCORERS.register("overlap-ids")(score_overlap_ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compressor", default="smollm2-135m")
    ap.add_argument("--compressor-backend", default=None)
    ap.add_argument("--scoring", nargs="+", default=SCORERS.names())
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument(
        "--workloads", nargs="+", default=["long/needle", "long/multifact", "long/code_long"]
    )
    ap.add_argument("--max-tokens", type=int, default=4500)
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the rows here")
    a = ap.parse_args()

    src = resolve(a.compressor, progress=False)
    options = LoadOptions(n_ctx=a.max_tokens + 512, n_threads=a.threads, progress=False)
    backend, options = scoring_backend(src, a.compressor_backend, options)
    model, _ = load_tuned(src, backend, options)
    tok = load_tokenizer(src)
    comp = Compressor(model, tok, f"{a.compressor}@{backend}", same_vocab=False)
    print(f"compressor {comp.name} (weights {options.weights}, {a.threads} threads)")
    rows: list[dict[str, Any]] = []
    cache = shared_passes()
    try:
        for p in load_workloads(a.workloads):
            n = len(tok.encode(p.prompt))
            if n > a.max_tokens:
                continue
            question = split_question(p.prompt, None)[1]
            cache.clear()
            for mode in a.scoring:
                res = compress_prompt(p.prompt, comp, CompressOptions(ratio=a.ratio, scoring=mode))
                kept = res.text[: len(res.text) - len(question)]
                row = {
                    "prompt": p.id,
                    "kind": p.kind,
                    "scoring": mode,
                    "ratio": a.ratio,
                    "tokens": res.original,
                    "kept": res.kept,
                    "facts_kept": facts_kept(p, kept, question),
                    "lines": sum(1 for line in kept.splitlines() if line.strip()),
                    "near_misses": near_misses(p, kept, question),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        model.close()
    print("\n| scoring | facts kept (needle / multifact / other) |")
    print("|---|---|")
    for mode in a.scoring:
        mine = [r for r in rows if r["scoring"] == mode]
        by = {k: [r["facts_kept"] for r in mine if r["kind"] == k] for k in ("needle", "multifact")}
        by["other"] = [r["facts_kept"] for r in mine if r["kind"] not in ("needle", "multifact")]
        counts = " / ".join(f"{sum(v)}/{len(v)}" for v in by.values())
        print(f"| {mode} | {counts} |")
    if a.json:
        from edgespec.fileutil import atomic_path

        with atomic_path(Path(a.json)) as tmp:
            tmp.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
