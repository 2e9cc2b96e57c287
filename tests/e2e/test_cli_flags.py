"""The flag spellings users bring (llama.cpp's -m/-md/-t/-c/-f, --temp), prompts from a file
or stdin, the one --quant vocabulary, one --max-new-tokens default, and --help that reads."""

import argparse
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgespec import cli
from edgespec.cli import DEFAULT_MAX_NEW_TOKENS, build_parser, main
from edgespec.errors import EdgespecError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

#: each command with the arguments it needs to parse, and whether it takes the load flags
COMMANDS = {
    "generate": ["hi"],
    "profile": ["hi"],
    "calibrate": [],
    "calibrate-switch": ["--workload", "code", "--min-quality", "0.9"],
    "bench": ["--out", "o"],
}


def parse(*args: str) -> argparse.Namespace:
    return build_parser().parse_args(list(args))


def one_line_error(capsys, *args: str) -> str:
    code = main(list(args))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("edgespec: error: "), err
    return lines[0]


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path / "home"))


# --------------------------------------------------------------------------- aliases


@pytest.mark.parametrize("command", list(COMMANDS))
def test_llama_cpp_spellings_parse_to_the_same_values(command):
    base = [command, *COMMANDS[command]]
    long = parse(*base, "--model", "m.gguf", "--draft", "d.gguf", "--threads", "3")
    for spelling in (
        ["-m", "m.gguf", "-md", "d.gguf", "-t", "3", "-c", "512"],
        ["--model", "m.gguf", "--model-draft", "d.gguf", "--threads", "3", "--ctx-size", "512"],
        ["-m", "m.gguf", "--draft", "d.gguf", "-t", "3", "--n-ctx", "512"],
    ):
        a = parse(*base, *spelling)
        assert (a.model, a.draft, a.threads, a.n_ctx) == ("m.gguf", "d.gguf", 3, 512)
    assert (long.model, long.draft, long.threads, long.n_ctx) == ("m.gguf", "d.gguf", 3, 2048)


def test_md_is_the_draft_not_m_with_value_d():
    a = parse("generate", "hi", "-md", "small.gguf")
    assert a.draft == "small.gguf" and a.model is None
    a = parse("generate", "hi", "-mbig.gguf")  # -m with an attached value still works
    assert a.model == "big.gguf" and a.draft is None


@pytest.mark.parametrize("command", ["generate", "profile"])
def test_temperature_is_temp_and_t_is_threads(command, capsys):
    assert parse(command, "hi", "--temp", "0.7").temperature == 0.7
    assert parse(command, "hi", "--temperature", "0.7").temperature == 0.7
    assert parse(command, "hi", "-t", "4").threads == 4
    # -t 0.7 is a thread count now, so a temperature there is refused, not misread
    assert "invalid int value: '0.7'" in one_line_error(capsys, command, "hi", "-t", "0.7")


def test_export_takes_model_and_model_draft():
    for spelling in (
        ["--target", "t.gguf", "--draft", "d.gguf"],
        ["-m", "t.gguf", "-md", "d.gguf"],
        ["--model", "t.gguf", "--model-draft", "d.gguf"],
    ):
        a = parse("export", *spelling, "-o", "out")
        assert (a.target, a.draft, a.out) == ("t.gguf", "d.gguf", "out")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_one_max_new_tokens_default(command):
    from edgespec.sampling import GenerationParams

    a = parse(command, *COMMANDS[command])
    if command == "calibrate":
        assert not hasattr(a, "max_new_tokens")  # times forwards, generates nothing
        return
    assert a.max_new_tokens == DEFAULT_MAX_NEW_TOKENS == GenerationParams().max_new_tokens


@pytest.mark.parametrize("command", ["bench", "profile"])
def test_no_plot_in_bench_and_profile(command):
    base = [command, *COMMANDS[command]]
    assert parse(*base).no_plot is False
    assert parse(*base, "--no-plot").no_plot is True
    assert parse(*base, "--no-plots").no_plot is True  # the old bench spelling


def test_bench_records_the_new_spellings():
    from edgespec.bench.cli import canonical_argv, options_from_args

    a = parse("bench", "--out", "o", "-c", "512", "-t", "2", "--no-plots", "-md", "d.gguf")
    argv = canonical_argv(options_from_args(a))
    assert argv[argv.index("--ctx-size") + 1] == "512" and "--no-plot" in argv
    again = parse("bench", *argv)  # the recorded command parses back to the same options
    assert options_from_args(again) == options_from_args(a)


def test_bench_weights_reach_the_loader(monkeypatch):
    """``bench --weights`` is recorded in the command and passed to every runtime load."""
    import edgespec.runtime
    from edgespec.bench.cli import canonical_argv, options_from_args
    from edgespec.bench.runner import default_loader

    a = parse("bench", "--out", "o", "--backends", "tvm", "--weights", "gguf-q8act")
    opts = options_from_args(a)
    argv = canonical_argv(opts)
    assert argv[argv.index("--weights") + 1] == "gguf-q8act"
    assert options_from_args(parse("bench", *argv)) == opts
    assert "--weights" not in canonical_argv(options_from_args(parse("bench", "--out", "o")))
    seen: dict = {}
    monkeypatch.setattr(edgespec.runtime, "load", lambda *args, **kw: seen.update(kw))
    default_loader(opts)("tvm")
    assert seen["weights"] == "gguf-q8act" and seen["backend"] == "tvm"


# --------------------------------------------------------------------------- prompts


def prompt_of(monkeypatch, *args: str, stdin: str | None = None, tty: bool = False) -> str:
    fake = io.StringIO(stdin or "")
    fake.isatty = lambda: tty  # type: ignore[method-assign]
    monkeypatch.setattr(sys, "stdin", fake)
    a = parse(*args)
    cli.params_from_args(a)
    return a.prompt


@pytest.mark.parametrize("command", ["generate", "profile"])
def test_prompt_from_text_file_and_stdin(command, monkeypatch, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("def fib(n):\n    ", encoding="utf-8")
    assert prompt_of(monkeypatch, command, "some text") == "some text"
    assert prompt_of(monkeypatch, command, "-f", str(f)) == "def fib(n):\n    "
    assert prompt_of(monkeypatch, command, "--file", str(f)) == "def fib(n):\n    "
    assert prompt_of(monkeypatch, command, "-f", "-", stdin="piped") == "piped"
    assert prompt_of(monkeypatch, command, "-", stdin="dash") == "dash"
    assert prompt_of(monkeypatch, command, stdin="no prompt, a pipe") == "no prompt, a pipe"


@pytest.mark.parametrize(
    "args,stdin,tty,needle",
    [
        (["-f", "{missing}"], None, False, "prompt file '{missing}' does not exist"),
        (["-f", "{empty}"], None, False, "the prompt in '{empty}' is empty"),
        (["-f", "-"], "  \n", False, "the prompt on stdin is empty"),
        ([], None, True, "no prompt; pass it as text, with -f FILE, or on stdin"),
        (["text", "-f", "{empty}"], None, False, "not both"),
        ([""], None, False, "the prompt is empty"),
    ],
)
def test_prompt_errors_are_one_line(capsys, monkeypatch, tmp_path, args, stdin, tty, needle):
    names = {"missing": str(tmp_path / "nope.txt"), "empty": str(tmp_path / "empty.txt")}
    (tmp_path / "empty.txt").write_text("\n")
    fake = io.StringIO(stdin or "")
    fake.isatty = lambda: tty  # type: ignore[method-assign]
    monkeypatch.setattr(sys, "stdin", fake)
    line = one_line_error(capsys, "generate", *[x.format(**names) for x in args])
    assert needle.format(**names) in line


def test_generate_reads_a_piped_prompt_end_to_end(monkeypatch, capsys):
    """The whole generate command with stdin as the prompt, on the deterministic fake."""
    from edgespec.runtime import Runtime
    from edgespec.runtimes.base import LoadOptions, ModelSource
    from edgespec.testing import CharTokenizer, PrefixModel

    seen = []

    def fake_load(a, draft_quant=None):
        rt = Runtime(
            tokenizer=CharTokenizer("abcdefgh"),
            target=PrefixModel(vocab_size=8),
            backend="fake",
            source=ModelSource("gguf", Path(__file__), "fake"),  # type: ignore[arg-type]
            options=LoadOptions(progress=False),
        )
        orig = rt.encode_prompt
        rt.encode_prompt = lambda p, **kw: seen.append(p) or orig(p, **kw)  # type: ignore
        return rt

    monkeypatch.setattr(cli, "load_from_args", fake_load)
    fake = io.StringIO("abcabc")
    fake.isatty = lambda: False  # type: ignore[method-assign]
    monkeypatch.setattr(sys, "stdin", fake)
    assert main(["generate", "-n", "5", "--ignore-eos", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert seen == ["abcabc"] and len(out["token_ids"]) == 5


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        ((), None),  # edgespec.load's default: "auto"
        (("--strategy", "speculative", "--draft-quant", "q4_0"), "q4_0"),
        (("--strategy", "auto", "--draft-quant", "none"), "none"),
        (("--strategy", "speculative", "--draft-quant", "file"), "file"),
        (("--strategy", "entropy-switch", "-md", "small.gguf"), "file"),  # lossy: the file's
    ],
)
def test_generate_loads_the_draft_as_draft_quant_asks(monkeypatch, flags, want):
    """``--draft-quant`` reaches ``edgespec.load`` (it decides which draft is loaded), and a
    lossy strategy, whose output depends on the small model, loads the file's types."""
    seen = []

    def fake_load(a, draft_quant=None):
        seen.append(draft_quant)
        raise SystemExit(0)

    monkeypatch.setattr(cli, "load_from_args", fake_load)
    with pytest.raises(SystemExit):
        main(["generate", "hi", *flags])
    assert seen == [want]


# --------------------------------------------------------------------------- --quant


def plan(tmp_path, formats, quants):
    from edgespec.export.pipeline import ExportOptions, make_plan

    o = ExportOptions(target="x", out=str(tmp_path / "b"), formats=formats, quants=quants)
    return make_plan(o).artifacts


def test_one_quant_name_for_every_format(tmp_path):
    both = ("onnx", "gguf")
    assert plan(tmp_path, both, ("fp32",)) == [("onnx", "fp32"), ("gguf", "f32")]
    assert plan(tmp_path, both, ("f32",)) == [("onnx", "fp32"), ("gguf", "f32")]
    assert plan(tmp_path, both, ("int8", "int4")) == [
        ("onnx", "int8"),
        ("onnx", "int4"),
        ("gguf", "q8_0"),
        ("gguf", "q4_0"),
    ]
    assert plan(tmp_path, both, ("q8_0",)) == [("onnx", "int8"), ("gguf", "q8_0")]
    # a name one format lacks goes to the formats that have it
    assert plan(tmp_path, both, ("fp16", "gguf-exact")) == [
        ("onnx", "gguf-exact"),
        ("gguf", "f16"),
    ]
    # FORMAT:NAME limits a name to one format
    assert plan(tmp_path, both, ("onnx:int4", "gguf:int8")) == [("onnx", "int4"), ("gguf", "q8_0")]
    assert plan(tmp_path, both, ()) == [("onnx", "fp32"), ("gguf", "f16")]


def role_plan(tmp_path, formats, quants, **roles):
    from edgespec.export.pipeline import ExportOptions, make_plan

    o = ExportOptions(target="x", out=str(tmp_path / "b"), formats=formats, quants=quants, **roles)
    p = make_plan(o)
    return {role: p.for_role(role) for role in p.roles}


def test_role_quant_replaces_the_rest_for_that_role_and_format(tmp_path):
    both = ("onnx", "gguf")
    got = role_plan(tmp_path, ("gguf",), ("q4_k_m", "draft:int4"), draft="d")
    assert got == {"target": [("gguf", "q4_k_m")], "draft": [("gguf", "q4_0")]}
    # a format the role's names do not reach keeps the names without a role
    got = role_plan(tmp_path, both, ("int8", "draft:gguf:q4_0"), draft="d")
    assert got["target"] == [("onnx", "int8"), ("gguf", "q8_0")]
    assert got["draft"] == [("onnx", "int8"), ("gguf", "q4_0")]
    # a role's name alone: the other roles take each format's default
    got = role_plan(tmp_path, both, ("compressor:int8",), draft="d", compressor="c")
    assert got["target"] == got["draft"] == [("onnx", "fp32"), ("gguf", "f16")]
    assert got["compressor"] == [("onnx", "int8"), ("gguf", "q8_0")]
    got = role_plan(tmp_path, both, ("target:fp16",), draft="d")
    assert got["target"] == [("onnx", "fp32"), ("gguf", "f16")]


@pytest.mark.parametrize(
    "quant,needle",
    [
        ("compressor:int8", "--quant compressor:int8 names the compressor, but no --compressor"),
        ("foo:int4", "names format 'foo', which is not in --format onnx,gguf (nor is it a role"),
        ("gguf:draft:int4", "--quant gguf:draft:int4: write [ROLE:][FORMAT:]NAME"),
        ("draft:onnx:fp16", "--quant draft:onnx:fp16: onnx has no fp16"),
        ("draft:fp16", "--quant draft:fp16 applies to none of the formats onnx"),
    ],
)
def test_wrong_role_quant_is_one_line(capsys, tmp_path, quant, needle):
    formats = "onnx" if quant == "draft:fp16" else "onnx,gguf"
    line = one_line_error(
        capsys, "export", "-m", "x", "-md", "d", "-o", str(tmp_path / "b"),
        "--format", formats, "--quant", quant, "--dry-run",
    )  # fmt: skip
    assert needle in line


@pytest.mark.parametrize(
    "formats,quant,needle",
    [
        (
            "onnx",
            "int3",
            "unknown --quant 'int3'; known: fp32, fp16, int8, int4, q4_k_m, gguf-exact",
        ),
        ("onnx", "fp16", "none of --quant fp16 applies to onnx; onnx takes fp32, int8, int4"),
        ("onnx,gguf", "onnx:fp16", "onnx has no fp16"),
        ("onnx", "gguf:int8", "names format 'gguf', which is not in --format onnx"),
    ],
)
def test_wrong_quant_is_one_line_with_the_vocabulary(capsys, tmp_path, formats, quant, needle):
    line = one_line_error(
        capsys, "export", "-m", "x", "-o", str(tmp_path / "b"), "--format", formats,
        "--quant", quant, "--dry-run",
    )  # fmt: skip
    assert needle in line


def test_mixed_format_fp32_is_accepted(capsys, tmp_path):
    args = ["export", "-m", "x", "-o", str(tmp_path / "b"), "--format", "onnx,gguf"]
    assert main([*args, "--quant", "fp32", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "artifact: onnx fp32" in out and "artifact: gguf f32" in out


def test_quant_table_matches_the_exporters():
    """Every name in the vocabulary is a quantization its format's exporter writes, and
    every quantization an exporter writes has a name."""
    from edgespec.export.base import EXPORTERS, QUANT_ALIASES, QUANTS, quant_table

    for fmt in EXPORTERS.names():
        offered = set(EXPORTERS.get(fmt).quants)
        named = {row[fmt] for row in QUANTS.values() if fmt in row}
        assert named == offered, fmt
    assert set(QUANT_ALIASES.values()) <= set(QUANTS)
    table = quant_table()
    for name, row in QUANTS.items():
        line = next(ln for ln in table.splitlines() if ln.startswith(name + " "))
        assert all(own in line for own in row.values()), line


# --------------------------------------------------------------------------- --help


@pytest.mark.parametrize(
    "command,needles",
    [
        ("generate", ["-t N, --threads N", "-c TOKENS, --ctx-size TOKENS", "-md DRAFT", "-f FILE"]),
        ("profile", ["--threads", "--n-ctx", "--file", "--no-plot", "--temp"]),
        ("calibrate", ["--model", "--threads", "--ctx-size"]),
        ("calibrate-switch", ["-md", "--threads", "shipped workload"]),
        ("bench", ["--no-plot", "--threads", "--ctx-size", "-md", "code, summarize"]),
        (
            "export",
            ["-m MODEL, --model MODEL, --target MODEL", "f32", "q8_0", "FORMAT:NAME", "ROLE:NAME"],
        ),
    ],
)
def test_help_reads(command, needles, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    flat = " ".join(out.split())  # argparse wraps help text at the terminal width
    for n in needles:
        assert n in flat, (n, out)


# --------------------------------------------------------------------------- workloads


def test_workloads_are_package_data_and_benchmarks_links_to_them():
    from importlib import resources

    from edgespec.bench.workloads import default_workloads, load_workloads

    shipped = resources.files("edgespec.bench") / "data"
    names = sorted(p.name for p in shipped.iterdir() if p.name.endswith(".jsonl"))
    assert names == ["chat.jsonl", "code.jsonl", "json.jsonl", "summarize.jsonl"]
    assert [p.name for p in default_workloads()] == names
    assert len(load_workloads(["code"])) >= 1
    link = ROOT / "benchmarks" / "workloads"
    assert link.resolve() == Path(str(shipped)).resolve()


@pytest.mark.slow
def test_wheel_ships_the_workloads(tmp_path):
    """pip builds the wheel the way a user installs it; the workloads must be inside.
    Built from a copy of the sources, so no build/ folder is left in the checkout (4.8 s
    here: pytest tests/e2e/test_cli_flags.py --durations=3)."""
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "edgespec", "runtimes", "export", "kernels"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name, **({"symlinks": True} if copy is shutil.copytree else {}))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "."]
        + ["-w", str(tmp_path / "dist")],
        cwd=src,
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("edgespec-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for kind in ("chat", "code", "json", "summarize"):
        assert f"edgespec/bench/data/{kind}.jsonl" in names


# --------------------------------------------------------------------------- progress


def test_child_output_streams_into_a_progress_bar(capsys):
    from edgespec.export.hf_onnx import run_child

    script = (
        "import sys\n"
        "print('Reading decoder layer 0')\n"  # both spellings the builder has used
        "for i in (1, 2): print(f'Reading layer {i}')\n"
        "print('boom', file=sys.stderr)\n"
        "sys.exit(3)\n"
    )
    code, lines = run_child(
        [sys.executable, "-c", script], total=3, desc="ONNX graph", progress=True
    )
    assert code == 3
    assert lines == ["Reading decoder layer 0", "Reading layer 1", "Reading layer 2", "boom"]
    err = capsys.readouterr().err
    assert "ONNX graph" in err and "3/3" in err
    code, _ = run_child([sys.executable, "-c", "print(1)"], total=1, desc="x", progress=False)
    assert code == 0 and capsys.readouterr().err == ""


def test_verify_curve_shows_a_bar(capsys):
    from edgespec.speculative.cost_curves import measure_verify_curve
    from edgespec.testing import PrefixModel

    curve = measure_verify_curve(PrefixModel(), [1, 2, 3], context=4, reps=1, progress=True)
    assert set(curve) >= {1, 2, 3}
    err = capsys.readouterr().err
    assert "cost curve" in err and "0/3" in err and "3 tokens" in err
    measure_verify_curve(PrefixModel(), [1, 2], context=4, reps=1)
    assert capsys.readouterr().err == ""


def test_first_probe_is_counted_in_the_stats():
    """No stored cost curve: the first speculative generation pays for the probe and says
    so in probe_s; the next one reuses the session and reports 0."""
    from edgespec.runtime import Runtime
    from edgespec.runtimes.base import LoadOptions, ModelSource
    from edgespec.speculative.config import SpecConfig
    from edgespec.testing import CharTokenizer, PrefixModel

    rt = Runtime(
        tokenizer=CharTokenizer("abcdefgh"),
        target=PrefixModel(vocab_size=8),
        backend="fake",
        source=ModelSource("gguf", Path(__file__), "fake"),  # type: ignore[arg-type]
        options=LoadOptions(progress=False),
    )
    cfg = SpecConfig(proposers=("ngram",))
    first = rt.generate([1, 2, 3, 1, 2], max_new_tokens=4, strategy="auto", config=cfg)
    assert first.stats.probe_s > 0
    assert "probe" in first.stats.summary() and first.stats.to_dict()["probe_s"] > 0
    again = rt.generate([1, 2, 3, 1, 2], max_new_tokens=4, strategy="auto", config=cfg)
    assert again.stats.probe_s == 0.0 and "probe" not in again.stats.summary()
    plain = rt.generate([1, 2, 3], max_new_tokens=2)
    assert plain.stats.probe_s == 0.0


def test_quant_name_error_is_an_edgespec_error():
    from edgespec.export.base import quant_name

    assert quant_name("Q4_0") == "int4" and quant_name("float32") == "fp32"
    with pytest.raises(EdgespecError, match="known: fp32"):
        quant_name("nf4")
