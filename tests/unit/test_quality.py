"""Quality measures for lossy strategies, and the code-task harness (pass rate)."""

import math
from pathlib import Path

import numpy as np
import pytest

from edgespec.quality import (
    NLL_CHUNK,
    agreement,
    edit_distance,
    edit_similarity,
    exact_prefix,
    mean_nll,
)
from edgespec.testing import PrefixModel

pytestmark = pytest.mark.unit


def naive_edit(a, b):
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(
                d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1])
            )
    return d[-1][-1]


def test_exact_prefix():
    assert exact_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert exact_prefix([1, 2], [1, 2, 3]) == 2
    assert exact_prefix([], [1]) == 0
    assert exact_prefix([5], [1]) == 0


def test_edit_distance_matches_the_textbook_dp():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = list(rng.integers(0, 4, size=rng.integers(0, 12)))
        b = list(rng.integers(0, 4, size=rng.integers(0, 12)))
        assert edit_distance(a, b) == naive_edit(a, b), (a, b)
    assert edit_distance([1, 2, 3], [2, 3]) == 1  # one deletion, not three substitutions
    assert edit_distance([2, 3], [1, 2, 3]) == 1


def test_edit_similarity_range():
    assert edit_similarity([], []) == 1.0
    assert edit_similarity([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert edit_similarity([1, 2, 3, 4], [5, 6, 7, 8]) == 0.0
    assert edit_similarity([1, 2, 3, 4], [1, 9, 3, 4]) == 0.75


@pytest.mark.parametrize("n", [1, 5, NLL_CHUNK + 7])
def test_mean_nll_equals_the_direct_sum(n):
    m = PrefixModel(16, seed=3, scale=2.0)
    prompt = [1, 2, 3]
    out = [int(x) for x in np.random.default_rng(n).integers(0, 16, size=n)]
    want = 0.0
    for i, t in enumerate(out):
        z = m.logits_for(prompt + out[:i]).astype(np.float64)
        want -= z[t] - z.max() - math.log(np.exp(z - z.max()).sum())
    assert mean_nll(m, prompt, out) == pytest.approx(want / n, rel=1e-9)
    assert m.n_past == 0
    # greedy output is the likeliest token at every step: lower NLL than random output
    assert mean_nll(m, prompt, m.greedy(prompt, n)) < mean_nll(m, prompt, out)


def test_agreement_bundle():
    m = PrefixModel(16, seed=3)
    ref = m.greedy([1, 2], 10)
    a = agreement(ref[:5] + [(t + 1) % 16 for t in ref[5:]], ref, model=m, prompt=[1, 2])
    assert (a.prefix, a.prefix_frac, a.edit_similarity) == (5, 0.5, 0.5)
    assert a.nll is not None and a.nll > 0
    assert agreement(ref, ref).to_dict()["edit_similarity"] == 1.0


# --- code tasks -----------------------------------------------------------------------

TASKS = Path(__file__).resolve().parents[2] / "benchmarks" / "code_tasks"


def _harness():
    from edgespec.testing import load_script

    return load_script(TASKS / "harness.py", "code_tasks_harness")


def test_code_tasks_reference_solutions_pass_and_wrong_ones_fail():
    h = _harness()
    tasks = h.load_tasks()
    assert len(tasks) >= 20
    assert len({t["id"] for t in tasks}) == len(tasks)
    results = h.check_many([(t, t["solution"]) for t in tasks], timeout=10.0)
    assert all(r.passed for r in results), [r for r in results if not r.passed]
    bad = h.check(tasks[0], "    return None\n", timeout=10.0)
    assert not bad.passed and bad.reason == "fail"


def test_code_task_timeout_and_completion_cut():
    h = _harness()
    task = h.load_tasks()[0]
    slow = h.check(task, "    while True:\n        pass\n", timeout=1.0)
    assert not slow.passed and slow.reason == "timeout"
    body = "    return 1\n\n\ndef other():\n    pass\n"
    assert h.cut_completion(body) == "    return 1\n"
