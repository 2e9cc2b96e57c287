"""Context compression through the CLI and on a real model (smollm2-135m)."""

import json
import subprocess
import sys

import pytest

from edgespec.cli import main

pytestmark = pytest.mark.unit


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line(code, err, *needles):
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("edgespec: error: ")
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("ratio", ["0", "1.5", "-0.2"])
def test_ratio_outside_unit_interval(capsys, tmp_path, ratio):
    # a missing model file would fail later: the ratio must fail first, before any load
    code, _, err = run(
        capsys, "generate", "a\n\nb", "-m", str(tmp_path / "none.gguf"), "--compress", ratio
    )
    assert_one_line(code, err, "--compress must be in (0, 1]")


def test_budget_and_ratio_together_and_stray_flags(capsys, tmp_path):
    missing = str(tmp_path / "none.gguf")
    code, _, err = run(
        capsys, "generate", "x", "-m", missing, "--compress", "0.5", "--context-budget", "9"
    )
    assert_one_line(code, err, "not both")
    code, _, err = run(capsys, "generate", "x", "-m", missing, "--keep-last", "4")
    assert_one_line(code, err, "--keep-last applies only with --compress")
    code, _, err = run(capsys, "generate", "x", "-m", missing, "--compress", "half")
    assert_one_line(code, err, "not a number")


@pytest.fixture(scope="module")
def smollm2_prompt():
    facts = " ".join(
        f"The {c} house on the hill has a {d} door and a small garden with {n} apple trees."
        for c, d, n in [("red", "green", 3), ("blue", "white", 5), ("old", "black", 2)] * 6
    )
    return facts + " The secret code for the vault is 4721.\n\nWhat is the secret code?"


@pytest.mark.slow
def test_real_model_generate_compressed(capsys, smollm2_path, smollm2_prompt):
    pytest.importorskip("llama_cpp")
    args = ["generate", smollm2_prompt, "-m", str(smollm2_path), "-b", "llamacpp", "-t", "2"]
    args += ["-n", "4", "-q", "--json"]
    code, out, err = run(capsys, *args, "--context-budget", "60")
    assert code == 0, err
    d = json.loads(out)
    s = d["stats"]
    assert s["lossy"] and s["compressor"] == "target"
    assert s["compressed_to"] == len(d["prompt_token_ids"]) == s["prompt_tokens"]
    # same vocabulary: the budget is met exactly in the target's tokens
    assert s["compressed_to"] == 60 < s["compressed_from"]
    from edgespec.runtimes import ModelSource
    from edgespec.tokenizer import load_tokenizer

    tok = load_tokenizer(ModelSource("gguf", smollm2_path, "smollm2-135m"))
    question = tok.encode("\n\nWhat is the secret code?")
    question = question[1:] if question[0] == tok.bos_id else question
    assert d["prompt_token_ids"][-len(question) :] == question  # kept whole, at the end
    code, out, err = run(capsys, *args, "--compress", "0.5")
    assert code == 0, err
    s = json.loads(out)["stats"]
    assert s["compressed_from"] > s["compressed_to"] and s["compress_s"] > 0
    assert s["cpu_s"] >= s["compress_cpu_s"] > 0
    # a budget smaller than the question: one line, exit 2 (in a process: what a user sees)
    p = subprocess.run(
        [sys.executable, "-m", "edgespec", *args, "--context-budget", "3"],
        capture_output=True,
        text=True,
    )
    assert_one_line(p.returncode, p.stderr, "cannot hold the question")
