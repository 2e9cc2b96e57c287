"""The default thread count: the fastest measured on this device, cached; explicit counts win.

A fake model's one-token forward advances a fake clock by a cost that depends on its thread
count, so the choice is deterministic.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from edgespec import threads
from edgespec.model import Model, ModelInfo
from edgespec.runtimes import BACKENDS, Backend, LoadOptions, ModelSource
from edgespec.speculative import cost_curves

SOURCE = ModelSource("gguf", Path("/models/fake.gguf"), "fake-model", "12" * 32)
#: seconds per one-token forward at each thread count: 3 threads is fastest (not the most)
COST = {1: 0.030, 2: 0.018, 3: 0.011, 4: 0.014}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeModel(Model):
    backend = "fake"

    def __init__(self, clock: Clock, threads: int | None, tunable: bool = True) -> None:
        self.info = ModelInfo("llama", 1, 8, 50, 4096, "fake")
        self.clock, self.threads, self.tunable = clock, threads or 1, tunable
        self.forwards = 0
        self._n = 0

    @property
    def n_past(self) -> int:
        return self._n

    def forward(self, tokens: Sequence[int], *, all_logits: bool = True) -> np.ndarray:
        self.forwards += 1
        self.clock.now += COST[self.threads] * len(tokens)
        self._n += len(tokens)
        return np.zeros((len(tokens) if all_logits else 1, 50), np.float32)

    def truncate(self, length: int) -> None:
        self._n = length

    def set_threads(self, n: int) -> bool:
        if self.tunable:
            self.threads = n
        return self.tunable


class FakeBackend(Backend):
    name = "fake"
    accepts = ("gguf",)
    loads: ClassVar[list[LoadOptions]] = []
    clock = Clock()
    tunable = True

    @classmethod
    def load(cls, source: ModelSource, options: LoadOptions) -> Model:
        cls.loads.append(options)
        return FakeModel(cls.clock, options.n_threads, cls.tunable)


@pytest.fixture(autouse=True)
def _env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path))
    monkeypatch.setitem(BACKENDS._loaded, "fake", FakeBackend)
    monkeypatch.setattr(FakeBackend, "loads", [])
    monkeypatch.setattr(FakeBackend, "tunable", True)
    monkeypatch.setattr(time, "perf_counter", FakeBackend.clock)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.5, 0.5, 0.5))  # a quiet machine


def test_first_use_probes_picks_the_fastest_and_tells_the_user(
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, choice = threads.load_tuned(SOURCE, "fake", LoadOptions())
    assert (choice.threads, choice.source) == (3, "probe")
    assert set(choice.one_token_s) == {1, 2, 3, 4}
    assert choice.one_token_s[3] == pytest.approx(COST[3])
    assert model.threads == 3 and model.info.extra["threads"] == 3  # type: ignore[attr-defined]
    err = capsys.readouterr().err
    assert "fastest with 3 thread(s)" in err and "cached in" in err
    assert len([line for line in err.splitlines() if line.startswith("edgespec:")]) == 1


def test_the_choice_is_cached_and_passed_at_load_time(capsys: pytest.CaptureFixture[str]) -> None:
    threads.load_tuned(SOURCE, "fake", LoadOptions())
    capsys.readouterr()
    model, choice = threads.load_tuned(SOURCE, "fake", LoadOptions())
    assert (choice.threads, choice.source) == (3, "stored")
    assert FakeBackend.loads[-1].n_threads == 3  # the backend built it with 3 threads
    assert model.forwards == 0  # type: ignore[attr-defined]  # nothing timed again
    assert capsys.readouterr().err == ""
    # another model (by content) or other load options are measured afresh
    other = ModelSource("gguf", SOURCE.path, SOURCE.name, "34" * 32)
    assert threads.stored_best(other, "fake", LoadOptions()) is None
    assert threads.stored_best(SOURCE, "fake", LoadOptions(spin=False)) is None


def test_an_explicit_count_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    model, choice = threads.load_tuned(SOURCE, "fake", LoadOptions(n_threads=1))
    assert (choice.threads, choice.source) == (1, "user")
    assert model.threads == 1 and model.forwards == 0  # type: ignore[attr-defined]
    assert capsys.readouterr().err == ""
    threads.load_tuned(SOURCE, "fake", LoadOptions())  # the probe stores the best: 3
    model, choice = threads.load_tuned(SOURCE, "fake", LoadOptions(n_threads=2))
    assert model.threads == 2 and choice.source == "user"  # type: ignore[attr-defined]


def test_a_model_that_cannot_change_threads_keeps_its_own() -> None:
    FakeBackend.tunable = False
    _, choice = threads.load_tuned(SOURCE, "fake", LoadOptions())
    assert (choice.threads, choice.source) == (None, "fixed")
    assert cost_curves.load_threads(threads.key_for(SOURCE, "fake", LoadOptions())) is None


def test_timing_one_count_stores_no_best() -> None:
    """An explicit count's timing serves backend choice but says nothing of the best."""
    model = FakeBackend.load(SOURCE, LoadOptions(n_threads=2))
    threads.tune(model, SOURCE, "fake", LoadOptions(n_threads=2))
    entry = cost_curves.load_threads(threads.key_for(SOURCE, "fake", LoadOptions()))
    assert entry is not None and "best" not in entry
    assert cost_curves.one_token_seconds(entry, 2) == pytest.approx(COST[2])
    assert threads.stored_best(SOURCE, "fake", LoadOptions()) is None


def test_calibrate_times_every_count_and_overrides_the_probe() -> None:
    threads.load_tuned(SOURCE, "fake", LoadOptions())
    rt: Any = type("RT", (), {})()
    rt.target, rt.source, rt.backend = FakeModel(FakeBackend.clock, 1), SOURCE, "fake"
    rt.options = LoadOptions(progress=False)
    choice = threads.calibrate(rt, reps=5)
    assert choice.threads == 3 and rt.target.threads == 3
    entry = cost_curves.load_threads(threads.key_for(SOURCE, "fake", LoadOptions()))
    assert entry is not None and (entry["source"], entry["reps"], entry["best"]) == (
        "calibrate",
        5,
        3,
    )


def test_candidate_counts() -> None:
    assert threads.candidate_counts(2) == [1, 2]
    assert threads.candidate_counts(12, every=True) == list(range(1, 13))
    assert threads.candidate_counts(12) == [1, 2, 4, 6, 8, 9, 12]


def test_a_probe_on_a_busy_machine_is_used_but_not_cached(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (4.0, 4.0, 4.0))  # 4 on 4 CPUs
    model, choice = threads.load_tuned(SOURCE, "fake", LoadOptions())
    assert (choice.threads, model.threads) == (3, 3)  # type: ignore[attr-defined]
    assert (
        "not cached: the machine was busy (load average 4.0 on 4 CPUs)" in capsys.readouterr().err
    )
    assert threads.stored_best(SOURCE, "fake", LoadOptions()) is None
    rt: Any = type("RT", (), {})()  # calibrate stores whatever the load
    rt.target, rt.source, rt.backend = model, SOURCE, "fake"
    rt.options = LoadOptions(progress=False)
    threads.calibrate(rt, reps=3)
    assert threads.stored_best(SOURCE, "fake", LoadOptions()) == 3


@pytest.mark.slow
@pytest.mark.backend
def test_llamacpp_changes_threads_on_the_live_context(smollm2_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    from edgespec.runtimes.llamacpp import LlamaCppModel, _lib

    with LlamaCppModel(smollm2_path, n_ctx=64, n_threads=1) as m:
        m.forward([1, 2], all_logits=False)
        before = m.forward([3], all_logits=False)  # one-token, as after the switch
        m.truncate(2)
        assert m.set_threads(2)
        lib = _lib()
        assert lib.llama_n_threads(m._ctx) == lib.llama_n_threads_batch(m._ctx) == 2
        assert m.n_past == 2  # the cache is kept
        after = m.forward([3], all_logits=False)
        assert int(np.argmax(after)) == int(np.argmax(before))
