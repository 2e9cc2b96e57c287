"""Files written whole or not at all (edgespec/fileutil.py), and the benchmarks' output."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgespec.bench.timing import emit
from edgespec.fileutil import atomic_path, write_text


def test_write_text_replaces_whole(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "table.md"
    write_text(out, "old\n")
    write_text(out, "new\n")
    assert out.read_text() == "new\n"
    assert [p.name for p in out.parent.iterdir()] == ["table.md"]  # no temporary left


def test_interrupted_write_leaves_the_old_file(tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    write_text(out, "kept\n")
    with pytest.raises(KeyboardInterrupt), atomic_path(out) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert out.read_text() == "kept\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_emit_prints_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.md"
    assert emit("| a |\n", out) == 0
    assert capsys.readouterr().out == "| a |\n\n"
    assert out.read_text() == "| a |\n"
    assert emit("| b |\n", None) == 0 and out.read_text() == "| a |\n"
