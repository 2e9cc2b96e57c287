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


def test_decode_ms_times_one_token_forwards_after_the_context() -> None:
    """The cache is cut back to ``context`` first, then each timed forward appends one
    token: what a draft's one-token step costs at that context."""
    from edgespec.bench.timing import decode_ms
    from edgespec.testing import PrefixModel

    model = PrefixModel(vocab_size=128, scale=3.0)
    model.forward(list(range(12)))
    seen: list[list[int]] = []
    forward = model.forward
    model.forward = lambda ids, **kw: seen.append(list(ids)) or forward(ids, **kw)  # type: ignore[method-assign]
    ms = decode_ms(model, 5, 4)
    assert ms > 0.0
    assert seen == [[100], [101], [102], [103]]
    assert model.n_past == 5 + 4
