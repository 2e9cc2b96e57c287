"""``edgespec bench`` / ``report`` / ``profile`` on a fake runtime (no model files, < 10 s)."""

from __future__ import annotations

import json
import time

import jsonschema
import pytest

from edgespec import cli
from edgespec.bench import energy
from edgespec.bench.profiler import profile_generation, write_profile
from edgespec.bench.report import load_results, summarize
from edgespec.bench.runner import BaselineRun, Bench, BenchOptions, parse_strategy
from edgespec.bench.schema import SCHEMA, check, validate
from edgespec.errors import EdgespecError, ModelLoadError
from edgespec.runtime import Runtime
from edgespec.runtimes.base import LoadOptions
from edgespec.strategies import STRATEGIES
from edgespec.strategies.autoregressive import Autoregressive
from edgespec.testing import FakeBaseline, PrefixModel, fake_runtime

pytestmark = pytest.mark.unit

ALPHABET = "abcdefghijklmnop"
FILES = (
    "results.json",
    "results.csv",
    "report.md",
    "tok_s.png",
    "speed_energy.png",
    "acceptance.png",
    "k_trace.png",
)


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("edgespec.bench.cli",))


def make_rt(backend: str | None = None) -> Runtime:
    rt: Runtime = fake_runtime(ALPHABET)
    return rt


class WrongEveryThird(Autoregressive):
    """Plain decoding that changes every third token: deliberately not lossless."""

    name = "wrong"

    def steps(self, prompt_ids):
        for i, step in enumerate(super().steps(prompt_ids)):
            yield [(t + 1) % len(ALPHABET) if i % 3 == 2 else t for t in step]


class Lossy(WrongEveryThird):
    name = "lossy-fake"
    lossy = True


class FailsOnSecondRun(Autoregressive):
    name = "fails-later"
    calls = 0

    def steps(self, prompt_ids):
        FailsOnSecondRun.calls += 1
        if FailsOnSecondRun.calls > 2:  # warm-up, then the first measured prompt
            raise EdgespecError("simulated backend crash")
        yield from super().steps(prompt_ids)


def workload(tmp_path, name="w", prompts=("abcabcabcd", "abababab", "ponmlkjabc")):
    p = tmp_path / f"{name}.jsonl"
    p.write_text(
        "".join(
            json.dumps({"id": f"{name}-{i}", "kind": name, "prompt": t, "chat": False}) + "\n"
            for i, t in enumerate(prompts)
        )
    )
    return p


def bench(
    tmp_path, strategies, *, runs=2, loader=None, meter=None, workloads=None, plots=False, **kw
):
    opts = BenchOptions(
        out=tmp_path / "out",
        strategies=list(strategies),
        runs=runs,
        warmup=1,
        max_new_tokens=12,
        workloads=workloads or [str(workload(tmp_path))],
        progress=False,
        plots=plots,
        **kw,
    )
    return Bench(
        opts,
        loader=loader or make_rt,
        baseline=FakeBaseline,
        meter=meter or energy.EstimateMeter(4.0),
        argv=["--fake"],
    )


SPEC = "speculative:proposers=ngram:k=3"


def test_bench_writes_every_file_and_validates(tmp_path):
    doc = bench(tmp_path, ["autoregressive", SPEC], plots=True).run()
    out = tmp_path / "out"
    for f in FILES:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    on_disk = json.loads((out / "results.json").read_text())
    jsonschema.validate(on_disk, SCHEMA)
    validate(on_disk)
    assert on_disk == json.loads(json.dumps(doc))
    assert on_disk["complete"] and on_disk["error"] is None
    assert on_disk["command"] == ["edgespec", "bench", "--fake"]
    assert on_disk["machine"]["fingerprint"] and on_disk["versions"]["edgespec"]
    # 2 runs x 3 prompts x (baseline + 2 strategies), interleaved: baseline first each time
    runs = on_disk["runs"]
    assert len(runs) == 2 * 3 * 3
    assert [r["label"] for r in runs[:3]] == ["baseline", "autoregressive", SPEC]
    assert all(r["new_tokens"] == 12 for r in runs)
    spec = [r for r in runs if r["label"] == SPEC]
    assert all(r["accept_hist"] and r["k_trace"] for r in spec)
    for r in spec:  # who drafted each step, and what it got accepted, in step with k_trace
        assert len(r["proposer_trace"]) == len(r["accepted_trace"]) == len(r["k_trace"])
        assert {n for n, k in zip(r["proposer_trace"], r["k_trace"], strict=True) if k} <= {"ngram"}
        assert sum(r["accepted_trace"]) == r["accepted_draft_tokens"]
    # ratios are run by run against the baseline beside them
    for i in range(0, len(runs), 3):
        b, a = runs[i], runs[i + 1]
        assert a["ratio"] == pytest.approx(a["tok_s"] / b["tok_s"])
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(runs)
    report = (out / "report.md").read_text()
    assert "estimated: CPU-s x 4.0 W" in report and "(an estimate, not a measurement)" in report
    assert "![tokens/s" in report and "INCOMPLETE" not in report


def test_lossless_strategies_agree_exactly(tmp_path):
    doc = bench(tmp_path, ["autoregressive", SPEC, "auto"], runs=1).run()
    ov = summarize(doc)["overall"]
    for label in ("autoregressive", SPEC, "auto"):
        assert ov[label]["agree_baseline_min"] == 1.0
        assert ov[label]["agree_plain_min"] == 1.0
        assert ov[label]["status"] == "exact"
    assert summarize(doc)["flags"] == []


def test_lossy_and_broken_configurations_are_flagged(tmp_path, monkeypatch):
    monkeypatch.setitem(STRATEGIES._loaded, "wrong", WrongEveryThird)
    monkeypatch.setitem(STRATEGIES._loaded, "lossy-fake", Lossy)
    doc = bench(tmp_path, ["autoregressive", "wrong", "lossy-fake"], runs=1).run()
    ov = summarize(doc)["overall"]
    assert ov["autoregressive"]["status"] == "exact"
    assert ov["wrong"]["status"] == "NOT LOSSLESS" and ov["wrong"]["agree_plain_min"] < 1
    assert ov["lossy-fake"]["status"] == "lossy" and ov["lossy-fake"]["agree_baseline_min"] < 1
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| lossy-fake (lossy) |" in report
    assert "at a position that was not a near-tie" in report
    assert "`lossy-fake` is lossy" in report
    assert all(r["near_tie"] is False for r in doc["runs"] if r["label"] == "wrong")


def test_divergence_within_the_measured_bound_is_a_near_tie_not_a_bug(tmp_path, monkeypatch):
    """Leaving plain decoding where its top candidates are within the near-tie bound stored
    by `edgespec calibrate` is allowed; with no stored bound the bench measures one (0 for
    this exact fake), and then any divergence is a bug."""
    from edgespec.speculative import cost_curves

    monkeypatch.setitem(STRATEGIES._loaded, "wrong", WrongEveryThird)
    rt = make_rt()
    key = cost_curves.curve_key("fake", rt.source.digest(), None)
    cost_curves.save_curve(key, {"verify": {"1": 0.01}, "near_tie_bound": 1e9})
    doc = bench(tmp_path, ["wrong"], runs=1).run()
    ov = summarize(doc)["overall"]
    assert ov["wrong"]["status"] == "exact up to near-ties"
    rows = [r for r in doc["runs"] if r["label"] == "wrong"]
    assert all(r["near_tie"] and r["divergence_gap"] >= 0 for r in rows)
    assert {(r["near_tie_bound"], r["near_tie_bound_source"]) for r in rows} == {(1e9, "calibrate")}
    cost_curves.save_curve(key, {"verify": {"1": 0.01}})  # no bound stored
    (tmp_path / "again").mkdir()
    doc = bench(tmp_path / "again", ["wrong"], runs=1).run()
    assert summarize(doc)["overall"]["wrong"]["status"] == "NOT LOSSLESS"
    rows = [r for r in doc["runs"] if r["label"] == "wrong"]
    assert {(r["near_tie_bound"], r["near_tie_bound_source"]) for r in rows} == {(0.0, "measured")}
    assert "(bound 0 logits, measured)" in (tmp_path / "again" / "out" / "report.md").read_text()


def make_pair_rt(backend: str | None = None) -> Runtime:
    """The fake target as the large model, with a different fake as the small one."""
    rt = make_rt(backend)
    rt.draft = PrefixModel(vocab_size=len(ALPHABET), seed=7, scale=3.0)
    return rt


def test_two_model_runs_are_compared_with_the_large_model_alone(tmp_path):
    small_only, large_only = "entropy-switch:tau=inf:spec_k=0", "entropy-switch:tau=-inf"
    doc = bench(tmp_path, ["autoregressive", small_only, large_only], loader=make_pair_rt).run()
    validate(json.loads((tmp_path / "out" / "results.json").read_text()))
    runs = doc["runs"]
    by = {lb: [r for r in runs if r["label"] == lb] for lb in ("baseline", small_only, large_only)}
    assert all(r["large_share"] is None and r["switches"] is None for r in by["baseline"])
    assert all(r["large_share"] == 0.0 and r["switches"] == 0 for r in by[small_only])
    assert all(r["large_share"] == 1.0 and r["agree_baseline"] == 1.0 for r in by[large_only])
    for i in range(0, len(runs), 4):  # baseline, then each config, per prompt and run
        b = runs[i]
        for r in runs[i + 1 : i + 4]:
            assert r["ratio"] == pytest.approx(r["tok_s"] / b["tok_s"])
            assert r["cpu_ratio"] == pytest.approx(r["cpu_s_per_token"] / b["cpu_s_per_token"])
    report = (tmp_path / "out" / "report.md").read_text()
    section = report.split("## Two-model strategies against the large model alone")[1]
    section = section.split("\n## ")[0]
    assert "fake greedy baseline" in section
    table = [line for line in section.splitlines() if line.startswith("| entropy-switch")]
    assert [line.split(" | ")[0] for line in table] == [
        f"| {small_only} (lossy)",
        f"| {large_only} (lossy)",
    ]
    assert table[0].split(" | ")[5] == "0%" and table[1].split(" | ")[5] == "100%"
    ov = summarize(doc)["overall"]
    assert f"{ov[small_only]['ratio']['median']:.2f}x" in table[0]
    header = (tmp_path / "out" / "results.csv").read_text().splitlines()[0].split(",")
    assert {"large_share", "switches", "ratio", "cpu_ratio"} <= set(header)
    assert "notes" not in header


def test_csv_columns_and_required_fields_come_from_one_list():
    from edgespec.bench.report import CSV_FIELDS
    from edgespec.bench.schema import RUN, RUN_OPTIONAL, RUN_PROPERTIES

    assert list(CSV_FIELDS) == [f for f in RUN_PROPERTIES if f != "notes"]
    assert RUN["required"] == [f for f in RUN_PROPERTIES if f not in RUN_OPTIONAL]
    assert RUN_OPTIONAL < set(RUN_PROPERTIES)


def test_single_model_reports_have_no_two_model_section(tmp_path):
    bench(tmp_path, ["autoregressive"], runs=1).run()
    assert "large model alone" not in (tmp_path / "out" / "report.md").read_text()


def test_report_rerenders_identically(tmp_path, capsys):
    bench(tmp_path, ["autoregressive", SPEC], plots=True).run()
    out = tmp_path / "out"
    before = {f: (out / f).read_bytes() for f in FILES if f != "results.json"}
    for f in before:
        (out / f).unlink()
    assert cli.main(["report", str(out)]) == 0
    after = {f: (out / f).read_bytes() for f in before}
    assert after == before


def test_report_rejects_a_broken_results_file(tmp_path, capsys):
    out = tmp_path / "out"
    bench(tmp_path, ["autoregressive"], runs=1).run()
    doc = json.loads((out / "results.json").read_text())
    doc["runs"][0]["energy_kind"] = "guessed"
    (out / "results.json").write_text(json.dumps(doc))
    assert cli.main(["report", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgespec: error: results.json does not match the schema")
    assert len(err.splitlines()) == 1
    assert check(doc, SCHEMA)  # the built-in checker (used without jsonschema) agrees


def test_estimated_and_measured_energy_never_mix(tmp_path):
    rapl = fake_powercap(tmp_path / "pc", [1000])
    doc = bench(tmp_path, ["autoregressive"], runs=1, meter=energy.RaplMeter(rapl)).run()
    assert {r["energy_kind"] for r in doc["runs"]} == {"measured"}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "measured: rapl" in report and "estimated" not in report


# -- energy readers --------------------------------------------------------------------


def fake_powercap(root, values, max_range=2**32):
    for i, v in enumerate(values):
        z = root / f"intel-rapl:{i}"
        z.mkdir(parents=True)
        (z / "energy_uj").write_text(f"{v}\n")
        (z / "max_energy_range_uj").write_text(f"{max_range}\n")
        (z / "name").write_text(f"package-{i}\n")
        sub = root / f"intel-rapl:{i}:0"  # a sub-zone (core): must not be counted twice
        sub.mkdir()
        (sub / "energy_uj").write_text("5\n")
    return root


def test_rapl_reader_measures_with_a_fake_powercap_tree(tmp_path):
    root = fake_powercap(tmp_path, [1_000_000, 2_000_000])
    meter, notes = energy.open_meter(
        "auto", powercap_root=root, power_supply_root=tmp_path / "none"
    )
    assert isinstance(meter, energy.RaplMeter) and meter.kind == "measured"
    assert meter.describe()["zones"] == ["package-0", "package-1"]
    tok = meter.start()
    (root / "intel-rapl:0" / "energy_uj").write_text("1500000\n")
    (root / "intel-rapl:1" / "energy_uj").write_text("2250000\n")
    e = meter.stop(tok, cpu_s=1.0, wall_s=1.0)
    assert e == energy.Energy(0.75, "measured", "rapl")


def test_rapl_counter_wraparound(tmp_path):
    root = fake_powercap(tmp_path, [999_000], max_range=1_000_000)
    meter = energy.RaplMeter(root)
    tok = meter.start()
    (root / "intel-rapl:0" / "energy_uj").write_text("4000\n")
    assert meter.stop(tok, cpu_s=0, wall_s=0).joules == pytest.approx(0.005)
    assert energy.counter_delta(10, 30, 100) == 20


def test_estimate_without_any_energy_source(tmp_path):
    meter, notes = energy.open_meter(
        "auto", watts=3.0, powercap_root=tmp_path / "a", power_supply_root=tmp_path / "b"
    )
    assert isinstance(meter, energy.EstimateMeter) and meter.kind == "estimated"
    assert len(notes) == 3  # why RAPL, the battery and powermetrics were not used
    e = meter.stop(meter.start(), cpu_s=2.0, wall_s=5.0)
    assert e == energy.Energy(6.0, "estimated", "estimate")
    with pytest.raises(EdgespecError, match="no RAPL"):
        energy.open_meter("rapl", powercap_root=tmp_path / "a")


def test_battery_reader_integrates_current_times_voltage(tmp_path):
    bat = tmp_path / "battery"
    bat.mkdir()
    (bat / "type").write_text("Battery\n")
    (bat / "current_now").write_text("-500000\n")  # 0.5 A discharging
    (bat / "voltage_now").write_text("4000000\n")  # 4 V
    ac = tmp_path / "ac"
    ac.mkdir()
    (ac / "type").write_text("Mains\n")
    meter, _ = energy.open_meter(
        "auto", powercap_root=tmp_path / "none", power_supply_root=tmp_path
    )
    assert isinstance(meter, energy.BatteryMeter) and meter.kind == "measured"
    tok = meter.start()
    t = time.perf_counter()
    time.sleep(0.12)
    e = meter.stop(tok, cpu_s=0.0, wall_s=0.0)
    assert e.joules == pytest.approx(2.0 * (time.perf_counter() - t), rel=0.2)


def test_powermetrics_output_parsing():
    text = "**** Processor usage ****\nCPU Power: 1500 mW\nGPU Power: 3 mW\nCPU Power: 500 mW\n"
    assert energy.parse_powermetrics(text) == pytest.approx(1.0)
    with pytest.raises(EdgespecError):
        energy.parse_powermetrics("nothing here")


# -- bad input -------------------------------------------------------------------------


def run_cli(argv, capsys):
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip()
    return rc, err


def test_unknown_workload_file_is_one_clear_line(tmp_path, capsys):
    rc, err = run_cli(
        [
            "bench",
            "--workloads",
            str(tmp_path / "nope.jsonl"),
            "--out",
            str(tmp_path / "o"),
            "--energy",
            "estimate",
        ],
        capsys,
    )
    assert rc == 2 and len(err.splitlines()) == 1
    assert "workload file" in err and "not found" in err
    assert not (tmp_path / "o").exists()  # nothing gathered, nothing written


def test_empty_workload_is_one_clear_line(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    rc, err = run_cli(["bench", "--workloads", str(empty), "--out", str(tmp_path / "o")], capsys)
    assert (
        rc == 2
        and err == f"edgespec: error: workload file {empty} is empty; it needs at least one prompt"
    )


def test_unknown_strategy_is_one_clear_line(tmp_path, capsys):
    rc, err = run_cli(["bench", "--strategies", "autoregresive", "--out", str(tmp_path)], capsys)
    assert rc == 2 and "unknown strategy 'autoregresive'; known:" in err


def test_model_that_fails_to_load_keeps_incomplete_results(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_text("garbage")
    out = tmp_path / "o"
    rc, err = run_cli(
        [
            "bench",
            "--model",
            str(bad),
            "--workloads",
            str(workload(tmp_path)),
            "--out",
            str(out),
            "--energy",
            "estimate",
            "-q",
        ],
        capsys,
    )
    assert rc == 2 and len(err.splitlines()) == 1
    assert "not a valid GGUF model" in err and "marked incomplete" in err
    doc = load_results(out)  # validates
    assert doc["complete"] is False and "not a valid GGUF" in doc["error"]
    assert doc["runs"] == []
    assert "INCOMPLETE" in (out / "report.md").read_text()


def test_failure_mid_run_keeps_partial_results(tmp_path, monkeypatch):
    monkeypatch.setitem(STRATEGIES._loaded, "fails-later", FailsOnSecondRun)
    FailsOnSecondRun.calls = 0
    b = bench(tmp_path, ["fails-later"], runs=2)
    with pytest.raises(EdgespecError, match="simulated backend crash.*marked incomplete"):
        b.run()
    doc = load_results(tmp_path / "out")
    assert doc["complete"] is False and doc["error"] == "simulated backend crash"
    assert len(doc["runs"]) == 2  # baseline + the strategy on the first prompt
    assert "INCOMPLETE" in (tmp_path / "out" / "report.md").read_text()


def test_loader_failure_via_the_api(tmp_path):
    def loader(backend):
        raise ModelLoadError("model file 'x.gguf' does not exist; check the path")

    with pytest.raises(EdgespecError, match="does not exist.*marked incomplete"):
        bench(tmp_path, ["autoregressive"], loader=loader).run()
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    jsonschema.validate(doc, SCHEMA)
    assert doc["complete"] is False


def test_strategy_specs():
    assert parse_strategy("auto") == ("auto", None)
    assert parse_strategy("speculative:proposers=ngram+recycle:k=4:tree=false") == (
        "speculative",
        {"proposers": ["ngram", "recycle"], "k": 4, "tree": False},
    )
    with pytest.raises(EdgespecError, match="unknown speculative option"):
        parse_strategy("speculative:kk=4")
    with pytest.raises(EdgespecError, match="not key=value"):
        parse_strategy("speculative:k4")
    # each strategy validates its own options
    assert parse_strategy("entropy-switch:tau=0.04:window=2:spec_k=auto") == (
        "entropy-switch",
        {"tau": 0.04, "window": 2, "spec_k": "auto"},
    )
    assert parse_strategy("sentence-lead:lead_tokens=3:spec_k=0")[1] == {
        "lead_tokens": 3,
        "spec_k": 0,
    }
    with pytest.raises(EdgespecError, match="unknown entropy-switch option"):
        parse_strategy("entropy-switch:k=3")
    with pytest.raises(EdgespecError, match="spec_k must be an integer >= 0 or 'auto'"):
        parse_strategy("entropy-switch:spec_k=fast")
    with pytest.raises(EdgespecError, match="strategy 'autoregressive' takes no options"):
        parse_strategy("autoregressive:k=4")


# -- profile ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy,config,expect",
    [
        (
            "autoregressive",
            None,
            {"tokenize", "setup", "prefill", "decode", "sample", "detokenize"},
        ),
        (
            "speculative",
            {"proposers": ["ngram"], "k": 3},
            {"tokenize", "setup", "prefill", "draft", "verify", "rollback", "sample", "detokenize"},
        ),
    ],
)
def test_profile_timeline(tmp_path, strategy, config, expect):
    rt = make_rt()
    prof = profile_generation(
        rt, "abcabcabcabc", strategy=strategy, config=config, max_new_tokens=20, ignore_eos=True
    )
    names = {r["phase"] for r in prof["table"]}
    assert expect <= names and "other" in names
    assert sum(r["share"] for r in prof["table"]) == pytest.approx(1.0)
    starts = [s for _, s, _ in prof["phases"]]
    assert all(0 <= s <= prof["total_s"] for s in starts)
    (tmp_path / "entropy.png").write_bytes(b"from an earlier profile")
    files = write_profile(prof, tmp_path, "fake")
    assert {f.name for f in files} == {"profile.json", "profile.png"}
    assert not (tmp_path / "entropy.png").exists()  # no trace: no (stale) entropy plot
    # tracing is off by default: a normal generation records no phases
    gen = rt.start([1, 2, 3], max_new_tokens=4)
    gen.run()
    assert gen.ctx.rec.phases == []


def test_profile_plots_the_entropy_trace_of_a_two_model_strategy(tmp_path, capsys):
    from edgespec.bench import plots

    rt = make_pair_rt()
    cfg = {"tau": 2.0, "window": 2, "min_run": 2, "spec_k": 0}
    prof = profile_generation(
        rt,
        "abcabcabcabc",
        strategy="entropy-switch",
        config=cfg,
        max_new_tokens=24,
        ignore_eos=True,
    )
    stats = prof["stats"]
    assert prof["options"]["tau"] == 2.0 and prof["options"]["window"] == 2
    assert len(stats["entropy_trace"]) == len(stats["model_trace"]) == 24
    assert set(stats["model_trace"]) == {"d", "t"}  # both models wrote: shading of both
    names = {r["phase"] for r in prof["table"]}
    assert {"prefill", "small", "large", "sample"} <= names
    files = write_profile(prof, tmp_path, "fake: where the time goes")
    assert {f.name for f in files} == {"profile.json", "profile.png", "entropy.png"}
    png = (tmp_path / "entropy.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    # the plot follows the trace: another trace gives another picture
    other = dict(prof, stats=dict(stats, model_trace="d" * 24))
    write_profile(other, tmp_path / "other", "fake: where the time goes")
    assert (tmp_path / "other" / "entropy.png").read_bytes() != png
    assert json.loads((tmp_path / "profile.json").read_text())["options"]["tau"] == 2.0
    assert plots.available()


def test_role_spans_and_rolling_mean():
    from edgespec.bench.plots import role_spans, rolling_mean

    assert role_spans("ddtttd") == [("d", 0, 2), ("t", 2, 5), ("d", 5, 6)]
    assert role_spans("") == []
    assert rolling_mean([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert rolling_mean([2.0, 4.0], 5) == [2.0, 3.0]


class TunedBaseline(FakeBaseline):
    """A baseline at its best thread count, with a slower default-threads row beside it."""

    description = "fake greedy baseline, 2 thread(s)"
    info = {"threads": 2, "threads_source": "stored"}
    DEFAULT = "llama-cpp-python default threads (1 for one-token decodes)"

    def __init__(self, rt: Runtime, slowdown: float = 0.0) -> None:
        super().__init__(rt)
        self.slowdown = slowdown

    def run(self, ids: list[int], n: int) -> BaselineRun:
        out = super().run(ids, n)
        time.sleep(self.slowdown)
        return BaselineRun(out.tokens, out.wall_s + self.slowdown, out.ttft_s)

    def extras(self):
        return [(self.DEFAULT, TunedBaseline(make_rt(), slowdown=0.02))]


def test_the_baseline_says_its_threads_and_keeps_the_default_threads_row(tmp_path):
    b = bench(tmp_path, ["autoregressive"], runs=2)
    b.make_baseline = TunedBaseline
    doc = b.run()
    assert doc["baseline"]["threads"] == 2 and doc["baseline"]["threads_source"] == "stored"
    assert [c["label"] for c in doc["configs"]] == [TunedBaseline.DEFAULT, "autoregressive"]
    validate(json.loads((tmp_path / "out" / "results.json").read_text()))
    rows = [r for r in doc["runs"] if r["label"] == TunedBaseline.DEFAULT]
    assert len(rows) == 2 * 3  # every run and prompt, beside the baseline
    base = {(r["run"], r["prompt"]): r for r in doc["runs"] if r["label"] == "baseline"}
    for r in rows:  # a ratio against the baseline measured beside it, same run and prompt
        b = base[(r["run"], r["prompt"])]
        assert r["ratio"] == pytest.approx(r["tok_s"] / b["tok_s"])
        assert r["agree_baseline"] == 1.0 and r["wall_s"] >= 0.02  # it ran, with its delay
    report = (tmp_path / "out" / "report.md").read_text()
    assert "- baseline: fake greedy baseline, 2 thread(s)" in report
    assert f"- baseline threads: 2 (stored); also measured: `{TunedBaseline.DEFAULT}`" in report
    assert f"| {TunedBaseline.DEFAULT} |" in report  # its own row in the summary table


def test_llamacpp_baseline_runs_at_the_stored_best_or_the_given_threads(tmp_path, monkeypatch):
    from edgespec.bench import runner
    from edgespec.speculative import cost_curves
    from edgespec.threads import key_for

    made = []
    monkeypatch.setattr(runner, "LlamaCppBaseline", lambda *a: made.append(a) or a)
    rt = make_rt()
    key = key_for(rt.source, "llamacpp", LoadOptions())
    entry = {"one_token_s": {"1": 0.02, "2": 0.012}, "best": 2, "source": "calibrate"}
    cost_curves.save_threads(key, entry)
    runner.llamacpp_baseline(rt)
    path, n_ctx, threads, info = made[-1]
    assert (threads, info["threads_source"]) == (2, "stored by calibrate")
    assert "1: 20.0, 2: 12.0" in info["why"]
    rt.options = LoadOptions(n_ctx=512, n_threads=1)
    runner.llamacpp_baseline(rt)
    assert made[-1][2] == 1 and made[-1][3]["threads_source"] == "user"
