"""``edgespec bench --compress`` on a fake runtime, and the shipped long-context workloads."""

from __future__ import annotations

import json

import pytest

from edgespec.bench import energy
from edgespec.bench.runner import Bench, BenchOptions, make_combos
from edgespec.bench.workloads import is_correct, load_workloads
from edgespec.errors import EdgespecError
from edgespec.runtime import Runtime
from edgespec.testing import FakeBaseline, fake_runtime

pytestmark = pytest.mark.unit

ALPHABET = "abcdefghijklmnop .\n"


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path / "home"))


def make_rt(backend: str | None = None) -> Runtime:
    rt: Runtime = fake_runtime(ALPHABET, progress=False)
    return rt


#: a context the tests' compressor can cut (sentences of made-up words)
CONTEXT = "abc def. ghi jkl. mno pab. cde fgh. ijk lmn. opa bcd. " * 4


def _opts(tmp_path, rows: list[dict], **kw) -> BenchOptions:
    """Bench options for one autoregressive run per prompt of the workload ``rows`` (written
    to a file under ``tmp_path``), no warm-up, no progress or plots; ``kw`` overrides."""
    w = tmp_path / "w.jsonl"
    w.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = dict(
        out=tmp_path / "out",
        strategies=["autoregressive"],
        runs=1,
        warmup=0,
        max_new_tokens=4,
        workloads=[str(w)],
        progress=False,
        plots=False,
    )
    return BenchOptions(**(base | kw))


def test_compress_configurations_run_beside_the_full_prompt(tmp_path):
    rows = [{"id": "w-0", "prompt": CONTEXT + "\n\nab cd", "answer": ["zz"]}]
    opts = _opts(tmp_path, rows, max_new_tokens=6, compress=["0.5", "budget=40"])
    doc = Bench(
        opts, loader=make_rt, baseline=FakeBaseline, meter=energy.EstimateMeter(4.0), argv=[]
    ).run()
    by = {r["label"]: r for r in doc["runs"]}
    assert set(by) >= {"autoregressive", "autoregressive+compress=0.5"}
    full, half = by["autoregressive"], by["autoregressive+compress=0.5"]
    assert not full["lossy"] and half["lossy"]
    n_prompt = len(CONTEXT) + len("\n\nab cd")
    assert half["compressed_from"] == n_prompt
    assert half["compressed_to"] == round(0.5 * len(CONTEXT)) + len("\n\nab cd")
    assert by["autoregressive+compress=budget=40"]["compressed_to"] == 40
    assert "compressed_from" not in full
    assert full["correct"] is False and half["correct"] is False  # "zz" is never generated
    assert half["ttft_s"] >= half["compress_s"] > 0
    assert half["cpu_s"] >= half["compress_cpu_s"] > 0
    report = (tmp_path / "out" / "report.md").read_text()  # right answers per configuration
    assert "## Answers" in report and "| autoregressive+compress=0.5 | 0/1 | 0/1 |" in report
    assert half["ttft_s"] <= half["wall_s"]  # the compressor counted once


@pytest.mark.parametrize("bad", ["1.5", "0", "budget=0", "budget=x", "half"])
def test_bad_compress_configuration_is_one_line(bad):
    with pytest.raises(EdgespecError, match="--compress|--context-budget"):
        make_combos(["autoregressive"], [None], [bad])


def test_shipped_long_workloads_have_answers_and_the_question_last():
    prompts = load_workloads(["long/needle", "long/multifact", "long/code_long"])
    kinds = {p.kind for p in prompts}
    assert kinds == {"needle", "multifact", "code-long"}
    for p in prompts:
        assert p.answer and not p.chat
        if p.kind == "needle" or "-4k-" in p.id:  # the answer is in the context, not in
            # the question (the older code_long prompts name their constant in both)
            context, _, question = p.prompt.rpartition("\n\n")
            assert all(a in context and a not in question for a in p.answer), p.id
    # the accuracy study's set: eight ~4k-token prompts per family
    for family in (
        "long/needle:needle-4k",
        "long/multifact:multifact-4k",
        "long/code_long:code-long-4k",
    ):
        assert len(load_workloads([family])) >= 8, family
    assert is_correct("Alice lives in Lima; Bob is a Judge", ("lima", "judge"))
    assert not is_correct("Alice lives in Lima", ("lima", "judge"))


def test_a_workload_prefix_selects_prompts_by_id():
    two_k = load_workloads(["long/needle:needle-2k"])
    assert [p.id for p in two_k] == ["needle-2k-25", "needle-2k-50", "needle-2k-75"]
    with pytest.raises(EdgespecError, match="no prompt id .* starts with 'needle-3k'"):
        load_workloads(["long/needle:needle-3k"])


def _count_full_prefills(rt: Runtime, n_prompt: int, calls: list[int]) -> Runtime:
    """Wrap the target's forward: record the length of every forward of >= n_prompt ids."""
    forward = rt.target.forward

    def counted(ids, *a, **kw):
        if len(ids) >= n_prompt:
            calls.append(len(ids))
        return forward(ids, *a, **kw)

    rt.target.forward = counted  # type: ignore[method-assign]
    return rt


class CountingBaseline(FakeBaseline):
    runs: list[int] = []

    def run(self, ids, n):
        CountingBaseline.runs.append(len(ids))
        return super().run(ids, n)

    def extras(self):  # a default-threads row, as the llama.cpp baseline has at -t 2
        return [("default threads", CountingBaseline(make_rt()))]


@pytest.mark.parametrize("compress_only", [False, True])
def test_compress_only_costs_one_full_and_one_compressed_run_per_prompt(tmp_path, compress_only):
    prompts = [CONTEXT + "\n\nab cd", CONTEXT[::-1] + "\n\ncd ab"]
    rows = [{"id": f"w-{i}", "prompt": t} for i, t in enumerate(prompts)]
    n_prompt = len(prompts[0])
    prefills: list[int] = []
    CountingBaseline.runs = []
    opts = _opts(tmp_path, rows, compress=["0.25"], compress_only=compress_only)
    doc = Bench(
        opts,
        loader=lambda b=None, **kw: _count_full_prefills(make_rt(), n_prompt, prefills),
        baseline=CountingBaseline,
        meter=energy.EstimateMeter(4.0),
        argv=[],
    ).run()
    labels = [r["label"] for r in doc["runs"]]
    if not compress_only:  # reference + full row on the target, baseline + default threads
        assert len(prefills) == 2 * 2 and len(CountingBaseline.runs) == 2 * 2
        return
    # per prompt: the baseline (full context) and the compressed row, nothing else
    assert labels == ["baseline", "autoregressive+compress=0.25"] * 2
    assert prefills == [] and CountingBaseline.runs == [n_prompt] * 2
    assert all(r["agree_plain"] is None for r in doc["runs"])
    assert "first_divergence" not in doc["runs"][1]
    assert doc["runs"][1]["lossy"] and doc["runs"][1]["compressed_to"] < n_prompt


def test_compress_only_without_a_compress_configuration_is_one_line():
    with pytest.raises(EdgespecError, match="--compress-only needs --compress"):
        make_combos(["autoregressive"], [None], [], compress_only=True)


def _accuracy_script():
    from edgespec.testing import load_script

    return load_script("compress_accuracy.py")


def test_the_accuracy_summary_pairs_full_and_compressed_rows(tmp_path):
    acc = _accuracy_script()
    rows = [
        {"id": f"w-{i}", "kind": k, "prompt": CONTEXT + "\n\nab cd", "answer": [a]}
        for i, (k, a) in enumerate([("x", "zz"), ("y", ""), ("y", "zz")])
    ]
    opts = _opts(tmp_path, rows, compress=["0.5"], compress_only=True)
    doc = Bench(
        opts, loader=make_rt, baseline=FakeBaseline, meter=energy.EstimateMeter(4.0), argv=[]
    ).run()
    doc["runs"] = doc["runs"][:-1]  # a partial run: the last prompt's compressed row missing
    pairs = acc.pairs(doc)
    assert [p["prompt"] for p in pairs] == ["w-0", "w-1"]
    assert [(p["full_correct"], p["compressed_correct"]) for p in pairs] == [
        (False, False),
        (True, True),  # "" is in every answer
    ]
    assert all(p["tokens_compressed"] < p["tokens_full"] for p in pairs)
    table = acc.summary(pairs)
    assert "| **all** | 2 | 1/2 (50 %) | 1/2 (50 %) | +0.0 |" in table
    # no discordant prompt in 2: the difference is bounded by 1 - 0.05 ** (1 / 2) = 78 %
    assert "0/2 here, at most 78 %" in table
    assert acc.upper_bound(0, 12) == pytest.approx(1 - 0.05 ** (1 / 12), abs=1e-9)
    assert acc.sign_test(0, 3) == pytest.approx(0.25)


def test_the_accuracy_summary_times_only_the_pairs_of_one_run():
    # --pairs: a compressed arm from `generate` (another run) beside bench pairs; only the
    # pairs whose two rows ran one after the other in one process give time ratios
    acc = _accuracy_script()
    base = {"family": "x", "full_correct": True, "compressed_correct": False}
    rows = [
        {**base, "prompt": "a", "ttft_ratio": 0.3, "cpu_ratio": 0.4, "same_run": True},
        {**base, "prompt": "b", "ttft_ratio": 2.0, "cpu_ratio": 1.5, "same_run": False},
    ]
    table = acc.summary(rows)
    assert "| -100.0 | 0 / 2 / 0 / 0 | 0.30 (0.30-0.30, n = 1) | 0.40 (0.40-0.40, n = 1) |" in table
    one_run = acc.summary([{**r, "same_run": True} for r in rows])
    assert "| 1.15 (0.30-2.00) | 0.95 (0.40-1.50) |" in one_run
