"""benchmarks/core_latency.py: the core-to-core round trip that labels the host's placement."""

from __future__ import annotations

import math
import os
import shutil
import time

import pytest

from edgespec.testing import load_script

pytestmark = [
    pytest.mark.skipif(shutil.which("cc") is None, reason="the probe compiles with cc"),
    pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the probe needs two CPUs"),
]


@pytest.fixture(scope="module")
def probe():
    return load_script("core_latency.py")


def test_round_trip_is_timed_within_the_call(probe) -> None:
    """n round trips of ns each fit in the call's own wall time (the division is per trip),
    and the caller's affinity is left as it was."""
    before = os.sched_getaffinity(0)
    n = 20_000
    t0 = time.perf_counter()
    ns = probe.round_trip_ns(n=n)
    wall = time.perf_counter() - t0
    assert math.isfinite(ns) and ns > 0
    assert n * ns * 1e-9 <= wall
    assert os.sched_getaffinity(0) == before


def test_bad_cpus_are_one_line(probe) -> None:
    cpu = min(os.sched_getaffinity(0))
    with pytest.raises(SystemExit, match="two different CPUs"):
        probe.round_trip_ns((cpu, cpu))
    outside = max(os.sched_getaffinity(0)) + 1
    with pytest.raises(SystemExit, match="may run on"):
        probe.round_trip_ns((cpu, outside))
