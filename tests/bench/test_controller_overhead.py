"""benchmarks/controller_overhead.py: the time inside the target's forwards, on any backend."""

from __future__ import annotations

import argparse
import time

import pytest

from edgespec.testing import PrefixModel, fake_runtime, load_script


@pytest.fixture(scope="module")
def script():
    return load_script("controller_overhead.py")


def test_forward_clock_counts_both_forwards_and_their_time(script) -> None:
    """Every ``forward`` and ``forward_tree`` of the wrapped instance is counted with its
    own time (a forward that sleeps 20 ms is timed at least that), and the outputs are the
    model's."""
    model, plain = PrefixModel(vocab_size=8), PrefixModel(vocab_size=8)
    clock = script.ForwardClock(model)
    assert (model.forward([1, 2]) == plain.forward([1, 2])).all()
    assert (model.forward_tree([3, 4], [-1, -1]) == plain.forward_tree([3, 4], [-1, -1])).all()
    assert (clock.calls, model.forward_calls) == (2, 2)
    clock.reset()
    assert (clock.calls, clock.seconds) == (0, 0.0)

    class Sleepy:
        def forward(self, tokens, *, all_logits=True):
            time.sleep(0.02)

        forward_tree = forward

    slow = script.ForwardClock(sleepy := Sleepy())
    t = time.perf_counter()
    sleepy.forward([1])
    wall = time.perf_counter() - t
    assert slow.calls == 1 and 0.02 <= slow.seconds <= wall


def test_engine_reports_each_strategy_on_a_fake_runtime(script, monkeypatch, capsys) -> None:
    """On a fake runtime the table has one row per strategy, the first at 1.000x, and plain
    decoding drafts nothing."""
    import edgespec

    monkeypatch.setattr(edgespec, "load", lambda *a, **k: fake_runtime("abcdefgh "))
    args = argparse.Namespace(
        model="fake", backend="fake", weights="auto", workloads=["json"], per_workload=1,
        prompt="abc abc abc", n=12, rounds=2, strategies=["autoregressive", "auto"],
    )  # fmt: skip
    script.engine(args)
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| `")]
    assert [r.split("|")[1].strip() for r in rows] == ["`autoregressive`", "`auto`"]
    assert rows[0].split("|")[3].strip() == "1.000x"
    assert rows[0].split("|")[6].strip() == "0"
