"""Executable code tasks: run a completion against the task's unit tests in a subprocess.

Each task in ``tasks.jsonl`` has ``prompt`` (a signature and docstring; the model writes the
body), ``entry_point``, ``tests`` (assert statements) and a reference ``solution`` body. The
program ``prompt + completion + tests`` runs in a fresh ``python -I`` process with a timeout;
it passes when it exits with status 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: a completion ends where the next top-level statement begins
STOP_PREFIXES = (
    "def ",
    "class ",
    "if __name__",
    "print(",
    "assert ",
    "#",
    "@",
    "import ",
    "from ",
    "```",
)


@dataclass(frozen=True)
class Result:
    """One task's outcome: ``reason`` is "pass", "fail" (non-zero exit) or "timeout"."""

    task_id: str
    passed: bool
    reason: str
    detail: str = ""


def load_tasks(path: Path = HERE / "tasks.jsonl") -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cut_completion(text: str) -> str:
    """The function body: everything before the first non-indented line."""
    out = []
    for line in text.splitlines(keepends=True):
        if line.strip() and not line[0].isspace():
            break
        out.append(line)
    body = "".join(out).rstrip() + "\n"
    return body


def program(task: dict[str, Any], completion: str) -> str:
    return f"{task['prompt']}{cut_completion(completion)}\n\n{task['tests']}\n"


def check(task: dict[str, Any], completion: str, timeout: float = 10.0) -> Result:
    """Run ``task``'s tests against ``completion`` in a subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "task.py"
        path.write_text(program(task, completion))
        try:
            p = subprocess.run(
                [sys.executable, "-I", str(path)],
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=tmp,
                env={"PATH": os.environ.get("PATH", "")},
            )
        except subprocess.TimeoutExpired:
            return Result(task["id"], False, "timeout")
    if p.returncode == 0:
        return Result(task["id"], True, "pass")
    return Result(
        task["id"], False, "fail", p.stderr.strip().splitlines()[-1:][0] if p.stderr else ""
    )


def check_many(pairs: list[tuple[dict[str, Any], str]], timeout: float = 10.0) -> list[Result]:
    return [check(t, c, timeout) for t, c in pairs]
