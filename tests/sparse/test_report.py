"""Reporting sparsity: ``edgespec profile`` plots it against chunk size, bench rows carry it,
and :func:`sparsity_curve` agrees with the counters of real forwards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgespec.cli import main
from edgespec.sparse.stats import ForwardSparsity, sparsity_curve

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path / "home"))


def test_sparsity_curve_matches_forward_counters(blockffn_dir):
    """The curve's chunk sparsity at T equals the counters of forwards of T-token chunks of
    the same text (same routers, same tokens), and never rises with T."""
    from edgespec.sparse.blockffn import load_blockffn

    m = load_blockffn(blockffn_dir, dtype="float64")
    ids = np.random.default_rng(3).integers(0, 256, 32).tolist()
    curve = sparsity_curve(m, ids, sizes=(1, 2, 4, 8))
    assert m.n_past == 0 and not m.sparsity.forwards  # the model itself is untouched
    assert curve["tokens"] == 32 and len(curve["per_layer"]) == 3
    assert all(a >= b for a, b in zip(curve["mean"], curve["mean"][1:], strict=False))
    for i, T in enumerate(curve["chunk_sizes"]):
        m.reset()
        m.sparsity.reset()
        for s in range(0, 32, T):  # the text in chunks of T: each forward's union
            m.forward(ids[s : s + T])
        counted = m.sparsity.to_dict()["by_chunk"][str(T)]
        assert counted["chunk_sparsity"] == pytest.approx(curve["mean"][i], abs=1e-12)


def test_profile_writes_the_sparsity_plot(model_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "prof"
    argv = ["profile", "-m", str(model_dir), "-b", "blockffn", "-t", "1", "-q", "--out", str(out)]
    assert main([*argv, "-n", "8", "--ignore-eos", "the quick brown fox jumps"]) == 0
    prof = json.loads((out / "profile.json").read_text())
    curve = prof["sparsity_curve"]
    assert curve["chunk_sizes"] == list(range(1, 17)) and curve["unit"] == "block"
    assert curve["mean"][0] > curve["mean"][-1]  # the union grows with the chunk
    png = (out / "sparsity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_bench_rows_carry_the_sparsity(tmp_path):
    from edgespec.bench import energy
    from edgespec.bench.runner import Bench, BenchOptions
    from edgespec.testing import FakeBaseline, PrefixModel, fake_runtime

    class Sparse(PrefixModel):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.sparsity = ForwardSparsity(8, 2)

        def forward(self, tokens, *, all_logits=True):
            T = len(tokens)
            for layer in range(2):
                self.sparsity.record(T, np.eye(T, 8, dtype=bool), layer)
            self.sparsity.end_forward(T)
            return super().forward(tokens, all_logits=all_logits)

    def loader(backend):
        rt = fake_runtime("abcdefgh")
        rt.target = Sparse(vocab_size=8, seed=0)
        return rt

    w = tmp_path / "w.jsonl"
    w.write_text(json.dumps({"id": "w-0", "kind": "w", "prompt": "abcab", "chat": False}) + "\n")
    opts = BenchOptions(
        out=tmp_path / "out",
        strategies=["autoregressive"],
        runs=1,
        warmup=0,
        max_new_tokens=4,
        workloads=[str(w)],
        progress=False,
        plots=False,
    )
    doc = Bench(
        opts, loader=loader, baseline=FakeBaseline, meter=energy.EstimateMeter(4.0), argv=["-"]
    ).run()
    rows = [r for r in doc["runs"] if r["label"] != "baseline"]
    assert rows and all("sparsity" in r for r in rows)
    by = rows[0]["sparsity"]["by_chunk"]
    assert by["1"]["chunk_sparsity"] == pytest.approx(7 / 8)  # one unit of 8 per token
    assert by["1"]["forwards"] == rows[0]["target_forwards"] - 1
    # report.md pools the runs per T: one unit of 8 per token and layer, T per chunk union
    from edgespec.bench.report import render_markdown

    md = render_markdown(doc).splitlines()
    at = md.index("## FFN sparsity")
    table = [ln for ln in md[at:] if ln.startswith("| autoregressive |")]
    n1 = sum(r["sparsity"]["by_chunk"]["1"]["forwards"] for r in rows)
    assert table[0] == f"| autoregressive | 1 | {n1} | 0.875 | 0.875 | 2.0 / 16 blocks |"
    assert table[1] == "| autoregressive | 5 | 1 | 0.875 | 0.375 | 10.0 / 16 blocks |"


def test_chunk_sparsity_of_a_forward_computed_in_groups() -> None:
    """A forward longer than a compiled kernel's rows is computed in groups, each over its
    own union: its chunk sparsity counts every union against all blocks (it stays in [0,
    1]; summing two unions against one forward's blocks gave -0.10 and -6.26 for 17- and
    128-token forwards), and blocks per forward are what the groups computed."""
    s = ForwardSparsity(4, 1)
    group_a = np.array([[True, True, False, False]] * 16)  # blocks 0, 1
    group_b = np.array([[False, True, True, True]] * 4)  # blocks 1, 2, 3
    s.record(20, group_a, 0)
    s.record(20, group_b, 0)
    s.end_forward(20)
    row = s.to_dict()["by_chunk"]["20"]
    assert row["chunk_sparsity"] == pytest.approx(1 - 5 / 8)
    assert row["chunk_sparsity_per_layer"] == [pytest.approx(1 - 5 / 8)]
    assert row["blocks_per_forward"] == 5
    assert row["token_sparsity"] == pytest.approx(1 - (16 * 2 + 4 * 3) / (20 * 4))
