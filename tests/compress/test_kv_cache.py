"""``--kv-cache`` on llama.cpp: the cache's type and size reach the stats; bad input is one
line with exit status 2."""

import json

import pytest

from edgespec.cli import main

pytestmark = pytest.mark.unit


def run(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(code, err, needle):
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgespec: error: "), err
    assert needle in lines[0], lines[0]


def test_unknown_kv_cache_type_is_one_line(capsys, smollm2_path):  # before any load
    code, _, err = run(capsys, "generate", "hi", "-m", str(smollm2_path), "--kv-cache", "q5")
    one_line(code, err, "unknown KV-cache type 'q5'; known: f32, f16, q8, q4, gear4")


def test_backend_without_the_kv_type_refuses(capsys, smollm2_path):
    pytest.importorskip("tvm")
    args = ["generate", "hi", "-m", str(smollm2_path), "-b", "tvm", "--kv-cache", "q8"]
    code, _, err = run(capsys, *args)
    one_line(code, err, "backend 'tvm' has no q8 KV cache; drop --kv-cache or use ")
    assert "--backend llamacpp, numpy (tvm takes f32, f16)" in err


def test_gear4_is_numpy_only(capsys, smollm2_path):
    pytest.importorskip("llama_cpp")
    args = ["generate", "hi", "-m", str(smollm2_path), "-b", "llamacpp", "--kv-cache", "gear4"]
    code, _, err = run(capsys, *args)
    one_line(code, err, "backend 'llamacpp' has no gear4 KV cache; drop --kv-cache or use ")
    assert "--backend numpy (llamacpp takes f32, f16, q8, q4)" in err


def test_onnx_takes_no_kv_type(capsys, smollm2_path):  # refused before any load or conversion
    pytest.importorskip("onnxruntime")
    args = ["generate", "hi", "-m", str(smollm2_path), "-b", "onnx", "--kv-cache", "gear4"]
    code, _, err = run(capsys, *args)
    one_line(code, err, "backend 'onnx' has no gear4 KV cache; drop --kv-cache or use ")
    assert "--backend numpy (onnx takes no --kv-cache type)" in err


@pytest.mark.slow
def test_q8_cache_is_smaller_and_labelled(capsys, smollm2_path):
    pytest.importorskip("llama_cpp")
    base = ["generate", "The capital of France is", "-m", str(smollm2_path), "-b", "llamacpp"]
    base += ["-t", "2", "-n", "4", "-c", "512", "--json", "-q"]
    stats = {}
    for kv in ("f16", "q8", "q4"):
        code, out, err = run(capsys, *base, "--kv-cache", kv)
        assert code == 0, err
        stats[kv] = json.loads(out)["stats"]
    assert stats["f16"]["kv_cache"] == "f16" and not stats["f16"]["lossy"]
    assert stats["q8"]["lossy"] and stats["q4"]["lossy"]
    # bytes per element: q8_0 34/32, q4_0 18/32, f16 2 (the same cells and layers)
    f16 = stats["f16"]["kv_cache_mb"]
    assert stats["q8"]["kv_cache_mb"] == pytest.approx(f16 * 17 / 32, rel=1e-6)
    assert stats["q4"]["kv_cache_mb"] == pytest.approx(f16 * 9 / 32, rel=1e-6)
    assert stats["q8"]["kv_cache_f16_mb"] == pytest.approx(f16)
