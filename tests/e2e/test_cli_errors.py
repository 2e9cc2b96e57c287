"""Bad input through the CLI: one clear line on stderr, exit status 2, no traceback."""

import shutil
import subprocess
import sys

import pytest

from edgespec.cli import main

pytestmark = pytest.mark.unit


def run(capsys, *args):
    code = main(list(args))
    err = capsys.readouterr().err
    return code, err


def run_process(*args):
    """The CLI in a real process (what a user sees on the terminal)."""
    p = subprocess.run([sys.executable, "-m", "edgespec", *args], capture_output=True, text=True)
    return p.returncode, p.stderr


def assert_one_line(code, err, *needles):
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("edgespec: error: ")
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_file(capsys, tmp_path):
    assert_one_line(
        *run(capsys, "generate", "hi", "--model", str(tmp_path / "x.gguf")), "does not exist"
    )


def test_unknown_model_lists_zoo(capsys):
    assert_one_line(
        *run(capsys, "generate", "hi", "--model", "smollm9"),
        "unknown model 'smollm9'",
        "smollm2-135m",
    )


def test_unknown_backend_lists_known(capsys):
    assert_one_line(
        *run(capsys, "generate", "hi", "--backend", "onx"),
        "unknown backend 'onx'; known: blockffn, llamacpp, numpy, onnx, tvm",
    )


def test_unknown_strategy_and_proposer(capsys):
    assert_one_line(*run(capsys, "generate", "hi", "--strategy", "fast"), "unknown strategy")
    assert_one_line(
        *run(capsys, "generate", "hi", "--strategy", "speculative", "--proposer", "ngarm"),
        "unknown proposer 'ngarm'",
    )


def test_unknown_draft_quant_before_loading(capsys, tmp_path):
    """Checked with the strategy's options, before the (absent) model is looked at."""
    assert_one_line(
        *run(
            capsys,
            *("generate", "hi", "--model", str(tmp_path / "x.gguf")),
            *("--strategy", "speculative", "--draft-quant", "q2_k"),
        ),
        "draft_quant must be one of file, none, q4_0",
    )


@pytest.mark.parametrize(
    "args,needle",
    [
        (["generate", ""], "prompt is empty"),
        (["generate", "hi", "-n", "0"], "max_new_tokens must be a positive integer"),
        (["generate", "hi", "-n", "-5"], "max_new_tokens"),
        (["generate", "hi", "--strategy", "speculative", "--k", "-1"], "--k must be >= 0"),
        (["generate", "hi", "--proposer", "draft", "--strategy", "speculative"], "--draft"),
        (["generate", "hi", "--temperature", "-1"], "temperature"),
        (["models", "pull"], "needs a model name"),
        (["export", "--format", "onnx"], "required: -m/--model/--target, -o/--out"),
    ],
)
def test_argument_errors(capsys, args, needle):
    assert_one_line(*run(capsys, *args), needle)


def test_offline_hub(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_one_line(
        *run(capsys, "generate", "hi", "--model", "someorg/somemodel"),
        "cannot reach the Hugging Face hub",
    )


@pytest.mark.backend
def test_truncated_and_corrupt_gguf(capsys, tmp_path, smollm2_path):
    trunc = tmp_path / "trunc.gguf"
    with open(smollm2_path, "rb") as src, open(trunc, "wb") as dst:
        dst.write(src.read(20_000_000))
    for backend in ("llamacpp", "numpy"):
        assert_one_line(
            *run(capsys, "generate", "hi", "--model", str(trunc), "--backend", backend),
            "trunc.gguf",
        )
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"NOPE" + b"\0" * 100)
    assert_one_line(*run(capsys, "generate", "hi", "--model", str(junk)), "not a valid GGUF")


@pytest.mark.backend
def test_wrong_checksum_in_cache(capsys, tmp_path, monkeypatch, smollm2_path):
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    bad = home / "models" / smollm2_path.name
    shutil.copy(smollm2_path, bad)
    with open(bad, "r+b") as f:
        f.seek(5_000_000)
        f.write(b"\xff" * 16)
    monkeypatch.setenv("EDGESPEC_HOME", str(home))
    assert_one_line(*run(capsys, "generate", "hi", "-q"), "corrupt", "edgespec models pull")
    assert_one_line(*run(capsys, "models", "verify", "smollm2-135m", "-q"), "corrupt")


@pytest.mark.backend
def test_draft_with_other_vocabulary(capsys, tmp_path, smollm2_path):
    """A draft whose vocabulary differs in one token is refused, naming the token."""
    import gguf

    from edgespec.speculative.layerskip import derive_gguf

    other = tmp_path / "other.gguf"
    derive_gguf(
        smollm2_path,
        list(range(30)),
        other,
        progress=False,
        metadata={"tokenizer.ggml.tokens": lambda toks: [*toks[:-1], "<edited>"]},
    )
    assert gguf.GGUFReader(other).fields["tokenizer.ggml.tokens"].contents()[-1] == "<edited>"
    assert_one_line(
        *run_process(
            "generate",
            "hi",
            "--model",
            str(smollm2_path),
            "--draft",
            str(other),
            "--strategy",
            "speculative",
            "--proposer",
            "draft",
            # backend and threads given: the first automatic pick on a device prints what
            # it measured, which is not part of the error
            "--backend",
            "llamacpp",
            "--threads",
            "1",
        ),
        "differ at token 49151",
    )


def test_no_traceback_from_the_installed_command(tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgespec",
            "generate",
            "hi",
            "--model",
            str(tmp_path / "nope.gguf"),
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr


def test_first_use_names_the_backends_it_did_not_time(capsys, tmp_path, monkeypatch, smollm2_path):
    """On a fresh ``$EDGESPEC_HOME`` the automatic choice times only what is cheap to load;
    once the model has loaded, one line names the installed backends it left out (here tvm
    and onnx, which compile or convert first) and the command that measures them, and a
    second run says nothing more; a run with ``-t`` (no probe) says nothing. A model that
    fails to load gets its one error line only (test_truncated_and_corrupt_gguf)."""
    from edgespec.runtimes import BACKENDS

    slow = [n for n in ("onnx", "tvm") if BACKENDS.get(n).available()]
    if not slow:
        pytest.skip("neither onnx nor tvm installed: nothing is left out")
    from edgespec import threads

    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path / "home"))
    # a quiet machine: on a busy one the probe is not cached, and the next run probes (and
    # says so) again
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.5, 0.5, 0.5))
    args = ("generate", "hi", "-m", str(smollm2_path), "-n", "2")
    code, err = run(capsys, *args, "-t", "1")  # threads given: nothing probed, nothing said
    assert code == 0 and "not timed" not in err, err
    code, err = run(capsys, *args)
    assert code == 0, err
    notes = [ln for ln in err.splitlines() if "not timed:" in ln]
    assert len(notes) == 1, err
    assert notes[0].startswith(f"edgespec: not timed: {', '.join(slow)} (")
    assert f"--backend {slow[-1]}` measures it once" in notes[0]  # a command to paste as is
    assert all(f"--backend {n}`" in notes[0] for n in slow) and "|" not in notes[0]
    code, err = run(capsys, *args)
    assert code == 0 and "not timed" not in err, err
