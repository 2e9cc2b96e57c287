"""benchmarks/startup.py: fresh processes timed to exit, with their peak memory, per backend
and source tree; trees get their own EDGESPEC_HOME linked to the real one."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from edgespec.testing import load_script


@pytest.fixture(scope="module")
def script():
    return load_script("startup.py")


def test_run_measured_gives_the_child_s_own_time_memory_and_output(script) -> None:
    """A child that holds 200 MB and sleeps 0.3 s is timed at least that, and its peak RSS
    is its own, not the larger parent's (which wait4 would have reported: the test holds
    600 MB while it runs)."""
    parent = bytearray(600 << 20)
    parent[::4096] = b"x" * len(parent[::4096])
    code = "import time\nb = bytearray(200 << 20)\nb[::4096] = b'x' * len(b[::4096])\n"
    code += "time.sleep(0.3)\nprint('done')"
    wall, rss, out = script.run_measured(script.python_cmd(code), dict(os.environ))
    assert out.strip() == "done" and wall >= 0.3
    assert 200 <= rss < 400
    _, inherited, _ = script.run_measured([sys.executable, "-c", code], dict(os.environ))
    assert inherited >= 600  # without PEAK: wait4's figure, the parent's peak at least
    del parent
    with pytest.raises(SystemExit, match="exited 3"):
        script.run_measured(script.python_cmd("raise SystemExit(3)"), dict(os.environ))


def test_a_tree_s_home_links_all_but_its_own_tvm(
    script, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "tvm").mkdir()
    (tmp_path / "digests.json").write_text("{}")
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path))
    home = script.tree_home("before x")
    assert home == tmp_path / "bench" / "startup" / "before-x"
    assert sorted(p.name for p in home.iterdir()) == ["digests.json", "models"]
    assert (home / "models").resolve() == tmp_path / "models"
    assert script.tree_home("before x") == home  # again: the links kept
    env = script._env("a" + os.pathsep + "b", home)
    assert env["EDGESPEC_HOME"] == str(home)
    assert env["PYTHONPATH"].split(os.pathsep)[:2] == [str(Path(p).resolve()) for p in "ab"]


@pytest.mark.backend
def test_a_start_is_timed_end_to_end(script, smollm2_path: Path, capsys) -> None:
    """One round on llama.cpp: the table has its row, with the time to first token the
    process reported."""
    pytest.importorskip("llama_cpp")
    args = ["--model", "smollm2-135m", "--backends", "llamacpp", "--rounds", "1"]
    assert script.main([*args, "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    row = [r for r in out.splitlines() if r.startswith("| this tree | llamacpp |")]
    assert len(row) == 1 and "1.00x" in row[0]
    assert float(row[0].split("|")[-2]) > 0  # ttft
