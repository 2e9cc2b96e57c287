"""Workload files: JSON Lines of ``{"id", "kind", "prompt", "chat"}``, one prompt a line.

The shipped workloads are package data (``edgespec/bench/data/*.jsonl``, found through
:mod:`importlib.resources`), so ``edgespec bench`` works from an installed wheel; in a source
checkout ``benchmarks/workloads`` is a symlink to the same folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from edgespec.errors import EdgespecError

#: the folder of the shipped workloads (package data; benchmarks/workloads links to it)
WORKLOAD_DIR = Path(str(resources.files("edgespec.bench") / "data"))


@dataclass(frozen=True)
class Prompt:
    """One benchmark prompt.

    Attributes:
        id: unique id ("code-0").
        kind: workload kind ("code", "summarize", "chat", "json").
        prompt: the text.
        chat: wrap in the model's chat template.
        workload: the file it came from.
        answer: text parts a correct answer contains, all of them (case-insensitive);
            empty: the prompt has no checked answer (the long-context workloads have one).
    """

    id: str
    kind: str
    prompt: str
    chat: bool
    workload: str
    answer: tuple[str, ...] = ()


def default_workloads() -> list[Path]:
    """Every ``*.jsonl`` in the shipped workload folder."""
    files = sorted(WORKLOAD_DIR.glob("*.jsonl"))
    if not files:
        raise EdgespecError(f"no workload files in {WORKLOAD_DIR}; pass --workloads FILES")
    return files


def resolve_workload(name: str | Path) -> Path:
    """A path as given, or a shipped workload name ("code" -> the shipped code.jsonl)."""
    p = Path(name)
    if p.is_file():
        return p
    shipped = WORKLOAD_DIR / f"{name}.jsonl"
    if shipped.is_file():
        return shipped
    known = ", ".join(f.stem for f in sorted(WORKLOAD_DIR.glob("*.jsonl")))
    raise EdgespecError(
        f"workload file '{name}' not found (it does not exist and is not a shipped name); "
        f"pass a .jsonl path or one of: {known}"
    )


def _answer(value: object) -> tuple[str, ...]:
    """A workload line's ``answer``: a string or a list of strings (all must appear)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TypeError(f"answer must be a string or a list of strings, got {value!r}")


def is_correct(text: str, answer: tuple[str, ...]) -> bool:
    """Whether ``text`` contains every part of ``answer`` (case-insensitive)."""
    low = text.lower()
    return all(part.lower() in low for part in answer)


def load_workloads(names: list[str | Path], per_workload: int | None = None) -> list[Prompt]:
    """Every prompt of the named workload files (the first ``per_workload`` of each).

    ``NAME:PREFIX`` (e.g. ``long/needle:needle-4k``) keeps only the prompts of NAME whose id
    starts with PREFIX.
    """
    prompts: list[Prompt] = []
    for name in names:
        prefix = None
        if isinstance(name, str) and ":" in name and not Path(name).exists():
            name, prefix = name.rsplit(":", 1)
        path = resolve_workload(name)
        rows: list[Prompt] = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                rows.append(
                    Prompt(
                        id=str(d.get("id", f"{path.stem}-{len(rows)}")),
                        kind=str(d.get("kind", path.stem)),
                        prompt=d["prompt"],
                        chat=bool(d.get("chat", False)),
                        workload=str(path),
                        answer=_answer(d.get("answer")),
                    )
                )
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise EdgespecError(
                    f'{path}:{n}: not a workload line (need JSON with a "prompt"): {exc}'
                ) from None
            if not str(rows[-1].prompt).strip():
                raise EdgespecError(f"{path}:{n}: the prompt is empty")
        if not rows:
            raise EdgespecError(f"workload file {path} is empty; it needs at least one prompt")
        if prefix is not None:
            known = sorted({r.id for r in rows})
            rows = [r for r in rows if r.id.startswith(prefix)]
            if not rows:
                raise EdgespecError(
                    f"no prompt id in {path} starts with '{prefix}'; ids there: "
                    f"{', '.join(known[:8])}{', ...' if len(known) > 8 else ''}"
                )
        prompts += rows[:per_workload] if per_workload else rows
    ids = [p.id for p in prompts]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise EdgespecError(f"duplicate prompt ids across workloads: {', '.join(dupes)}")
    return prompts
