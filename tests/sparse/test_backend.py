"""The ``blockffn`` backend: generate/stats through the engine, losslessness, kernel choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgespec.cli import main
from edgespec.errors import EdgespecError, ModelLoadError

pytestmark = pytest.mark.unit

PROMPT = "the quick brown fox jumps over the lazy dog"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private $EDGESPEC_HOME: cost curves and thread choices never leak between tests."""
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _generate(model_dir: Path, capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    argv = ["generate", "-m", str(model_dir), "-b", "blockffn", "-t", "1", "-q", "--json"]
    assert main([*argv, "-n", "12", "--ignore-eos", *args, PROMPT]) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_reports_sparsity_per_layer_and_chunk(model_dir, capsys, blockffn_target):
    out = _generate(model_dir, capsys)
    sp = out["stats"]["sparsity"]
    by = sp["by_chunk"]
    n_prompt = out["stats"]["prompt_tokens"]
    assert sp["unit"] == "block" and sp["lossy"] is False and sp["n_layers"] == 3
    assert out["stats"]["lossy"] is False  # the routers are the model's own: not lossy
    # plain decoding: one prefill of the prompt, then one-token forwards
    assert set(by) == {"1", str(n_prompt)} and by[str(n_prompt)]["forwards"] == 1
    assert by["1"]["forwards"] == out["stats"]["target_forwards"] - 1
    one = by["1"]
    # a single token's union is its own active set; the routers were fitted to
    # blockffn_target on random tokens (measured 0.786-0.80 per layer on held-out ones)
    assert one["chunk_sparsity"] == pytest.approx(one["token_sparsity"])
    assert abs(one["token_sparsity"] - blockffn_target) < 0.1
    assert len(one["chunk_sparsity_per_layer"]) == 3
    assert one["blocks_per_forward"] == pytest.approx(3 * 32 * (1 - one["chunk_sparsity"]))
    long = by[str(n_prompt)]  # the prompt's union covers more blocks than one token's
    assert long["chunk_sparsity"] < one["chunk_sparsity"]


def test_stats_prints_sparsity_lines(model_dir, capsys):
    argv = ["generate", "-m", str(model_dir), "-b", "blockffn", "-t", "1", "-q", "--stats"]
    assert main([*argv, "-n", "4", "--ignore-eos", PROMPT]) == 0
    err = capsys.readouterr().err
    assert "backend=blockffn" in err
    lines = [ln for ln in err.splitlines() if ln.startswith("FFN sparsity T=")]
    assert [ln.split()[2] for ln in lines][:1] == ["T=1"] and len(lines) == 2
    assert "blocks per forward; chunk per layer [" in lines[0]


def test_speculation_equals_plain_greedy_and_records_verify_chunks(model_dir, capsys):
    """Lossless on the sparse backend: prompt lookup on a repetitive prompt verifies chunks
    of several tokens, and the tokens equal plain greedy decoding's."""
    prompt = "abcabcabcabcabcabcabcabc"
    base = ["generate", "-m", str(model_dir), "-b", "blockffn", "-t", "1", "-q", "--json"]
    common = ["-n", "16", "--ignore-eos", prompt]
    assert main([*base, *common]) == 0
    plain = json.loads(capsys.readouterr().out)
    spec = ["--strategy", "speculative", "--proposer", "ngram", "--k", "3", "--no-tree"]
    assert main([*base, *spec, *common]) == 0
    fast = json.loads(capsys.readouterr().out)
    assert fast["token_ids"] == plain["token_ids"]
    verify_sizes = {int(T) for T in fast["stats"]["sparsity"]["by_chunk"]} - {1}
    assert 4 in verify_sizes  # k = 3 drafts verified as chunks of 4


def test_sparse_backend_equals_dense_evaluation(model_dir):
    """Greedy tokens of the backend (sparse FFN) equal the dense evaluation's."""
    import edgespec

    with edgespec.load(model_dir, backend="blockffn", n_threads=1, progress=False) as rt:
        sparse = rt.generate(PROMPT, max_new_tokens=10, ignore_eos=True).token_ids
        rt.target.ffn_mode = "dense"
        dense = rt.generate(PROMPT, max_new_tokens=10, ignore_eos=True).token_ids
        assert rt.target.info.extra["variant"] == "sparse-numpy"
    assert sparse == dense


def test_fork_keeps_its_own_cache_and_counts(blockffn_dir):
    from edgespec.sparse.blockffn import load_blockffn

    m = load_blockffn(blockffn_dir, dtype="float64")
    m.forward([5, 6, 7])
    f = m.fork()
    a = m.forward([9])
    np.testing.assert_array_equal(f.forward([9]), a)  # same cache, same logits
    f.truncate(2)
    f.forward([1, 2])  # overwrites the fork's positions 2 and 3 only
    m.truncate(3)
    np.testing.assert_array_equal(m.forward([9]), a)
    assert dict(f.sparsity.forwards) == {1: 1, 2: 1}
    assert dict(m.sparsity.forwards) == {3: 1, 1: 2}


def test_unknown_sparse_kernel_is_one_line(model_dir, capsys):
    argv = ["generate", "-m", str(model_dir), "-b", "blockffn", "-t", "1", "-q"]
    assert main([*argv, "--sparse-kernel", "cuda", "-n", "2", PROMPT]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown sparse kernel 'cuda'; known: " in err and "numpy" in err


def test_dense_folder_on_blockffn_backend_is_refused(tiny_llama_dir):
    from edgespec.runtimes.base import LoadOptions, ModelSource
    from edgespec.sparse.backend import BlockFFNBackend

    with pytest.raises(ModelLoadError, match="not a BlockFFN checkpoint"):
        BlockFFNBackend.load(ModelSource("hf", tiny_llama_dir, "tiny"), LoadOptions())


def test_kernel_comes_from_the_registry(blockffn_dir, monkeypatch):
    """The model calls KERNELS["sparse_ffn:<impl>"], so a compiled kernel plugs in by name."""
    from edgespec.kernels import KERNELS
    from edgespec.kernels.reference import dense_ffn, sparse_ffn
    from edgespec.sparse import kernel as kmod
    from edgespec.sparse.blockffn import load_blockffn

    calls: list[int] = []

    def counting(x, rows, *a, **kw):
        calls.append(int(rows.size))
        return sparse_ffn(x, rows, *a, **kw)

    def counting_dense(x, *a, **kw):
        calls.append(-1)
        return dense_ffn(x, *a, **kw)

    monkeypatch.setitem(KERNELS._loaded, "sparse_ffn:counting", counting)  # noqa: SLF001
    kmod.sparse_kernel.cache_clear()
    try:
        m = load_blockffn(blockffn_dir, dtype="float64", kernel="counting")
        ref = load_blockffn(blockffn_dir, dtype="float64")
        np.testing.assert_array_equal(m.forward([3, 4]), ref.forward([3, 4]))
        assert len(calls) == 3 and m.info.extra["variant"] == "sparse-counting"
        # the dense mode runs the same backend's dense_ffn when it has one
        monkeypatch.setitem(KERNELS._loaded, "dense_ffn:counting", counting_dense)  # noqa: SLF001
        m = load_blockffn(blockffn_dir, dtype="float64", kernel="counting")
        m.ffn_mode = "dense"
        m.forward([3, 4])
        assert calls[3:] == [-1, -1, -1]
    finally:
        kmod.sparse_kernel.cache_clear()
    with pytest.raises(EdgespecError, match="unknown sparse kernel 'cuda'; known: .*numpy"):
        kmod.sparse_kernel("cuda")


def test_unknown_sparse_kernel_fails_for_dense_models_too(tiny_llama_dir, capsys):
    """A typo in --sparse-kernel is an error before anything loads, whatever the model."""
    argv = ["generate", "-m", str(tiny_llama_dir), "-b", "numpy", "-t", "1", "-q"]
    assert main([*argv, "--sparse-kernel", "tvmm", "-n", "1", PROMPT]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown sparse kernel 'tvmm'" in err


@pytest.mark.slow
def test_tvm_kernel_runs_the_model_like_the_numpy_one(blockffn_dir):
    """--sparse-kernel tvm: the compiled sparse_ffn (float32) runs the whole model, prompt
    forwards longer than its 16-row bucket included, as accurately as the float32 NumPy
    reference (both against float64; measured max errors 6.8e-6 and 5.8e-6 here, a ratio of
    1.2: rerun this test's body to see them). About 20 s, mostly compiling."""
    pytest.importorskip("tvm")
    from edgespec.sparse.blockffn import load_blockffn

    ids = np.random.default_rng(5).integers(0, 256, 21).tolist()
    out = {}
    for name, kw in (("f64", {"dtype": "float64"}), ("np32", {}), ("tvm", {"kernel": "tvm"})):
        m = load_blockffn(blockffn_dir, **kw)
        logits = np.concatenate([m.forward(ids[:20]), m.forward(ids[20:])])
        out[name] = logits.astype(np.float64)
        if name == "tvm":
            assert m.max_rows == 16 and dict(m.sparsity.forwards) == {20: 1, 1: 1}
    err = {k: float(np.abs(out[k] - out["f64"]).max()) for k in ("np32", "tvm")}
    assert err["tvm"] <= 4 * err["np32"]  # float32 rounding of the same sums, either kernel
    np.testing.assert_array_equal(out["tvm"].argmax(-1), out["f64"].argmax(-1))


@pytest.mark.slow
def test_q8_kernel_runs_the_model_on_its_quantized_weights(blockffn_dir):
    """--sparse-kernel tvm-q8: the whole model equals the model whose expert weights are
    gguf-py's Q8_0 round trip (float64), as closely as the float32 NumPy reference of that
    same model does (the measured errors are printed with ``-s``), greedy tokens the same;
    its output is labelled lossy, the float32 kernel's is not."""
    pytest.importorskip("tvm")
    pytest.importorskip("gguf")
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    from edgespec.kernels.sparse_ffn import QuantizedWeight
    from edgespec.sparse.blockffn import load_blockffn

    q8 = GGMLQuantizationType.Q8_0

    def round_trip(model):
        for layer in model.w.layers:
            f = layer.ffn
            for name in ("up", "down_t"):
                a = getattr(f, name)
                setattr(f, name, dequantize(quantize(a.astype(np.float32), q8), q8).astype(a.dtype))
        return model

    ids = np.random.default_rng(6).integers(0, 256, 21).tolist()
    models = {
        "f64": round_trip(load_blockffn(blockffn_dir, dtype="float64")),
        "np32": round_trip(load_blockffn(blockffn_dir)),
        "tvm-q8": load_blockffn(blockffn_dir, kernel="tvm-q8"),
    }
    out = {}
    for name, m in models.items():
        logits = np.concatenate([m.forward(ids[:20]), m.forward(ids[20:])])
        out[name] = logits.astype(np.float64)
    err = {k: float(np.abs(out[k] - out["f64"]).max()) for k in ("np32", "tvm-q8")}
    print("max |logit error| against float64:", err)
    assert err["tvm-q8"] <= 4 * err["np32"]  # float32 rounding of the same sums
    np.testing.assert_array_equal(out["tvm-q8"].argmax(-1), out["f64"].argmax(-1))
    assert models["tvm-q8"].sparsity.lossy and models["tvm-q8"].sparsity.to_dict()["lossy"]
    assert not models["np32"].sparsity.lossy
    assert models["tvm-q8"].fork().sparsity.lossy
    # the model keeps only the quantized expert weights, exactly gguf-py's round trip
    f64 = models["f64"].w.layers[0].ffn
    held = models["tvm-q8"].w.layers[0].ffn
    assert isinstance(held.up, QuantizedWeight) and isinstance(held.down_t, QuantizedWeight)
    np.testing.assert_array_equal(held.up.dequantize(), f64.up)
    np.testing.assert_array_equal(held.down.dequantize(), f64.down)
    assert held.down is held.down  # one view object: the kernel finds it by object
