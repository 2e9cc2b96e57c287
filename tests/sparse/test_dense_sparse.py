"""A dense model in a bundle with ``calibration.sparsity`` runs chunk-sparse on the NumPy
backend (lossy): equal to the dense FFN of the masked neurons, union rows only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgespec.cli import main
from edgespec.runtimes.base import LoadOptions, ModelSource
from edgespec.sparse.layout import sparsity_entry, write_sparsity
from edgespec.sparse.neuron import fit_thresholds

pytestmark = pytest.mark.unit

TARGET = 0.5


def _ids(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(3, 256, n).tolist()


@pytest.fixture(scope="module")
def bundle(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hand-made bundle: the tiny llama as an HF artifact, sparsified at TARGET."""
    pytest.importorskip("tokenizers")
    from edgespec.fileutil import sha256_file
    from edgespec.runtimes.numpy_ref import NumpyBackend
    from edgespec.testing import add_byte_tokenizer

    root = tmp_path_factory.mktemp("sparse-bundle") / "b"
    art = root / "target" / "hf"
    shutil.copytree(tiny_llama_dir, art)
    add_byte_tokenizer(art)
    files = [
        {"path": f"target/hf/{p.name}", "sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(art.iterdir())
    ]
    manifest = {
        "format_version": 1,
        "roles": {
            "target": {
                "architecture": {"layers": 3, "intermediate_size": 128},
                "artifacts": [
                    {
                        "format": "hf",
                        "quantization": "fp32",
                        "source_kind": "hf",
                        "backend": "numpy",
                        "path": "target/hf",
                        "files": files,
                    }
                ],
            }
        },
        "calibration": {},
    }
    (root / "edgespec.json").write_text(json.dumps(manifest))
    m = NumpyBackend.load(ModelSource("hf", art, "tiny"), LoadOptions(n_ctx=512, dtype="float64"))
    th = fit_thresholds(m, _ids(300, 0), TARGET)
    entry = sparsity_entry(th, n_layers=3, model={"name": "tiny", "sha256": "0" * 64}, quality={})
    write_sparsity(root, th, entry)
    return root


def test_sparse_model_equals_the_masked_dense_ffn_and_computes_the_union(bundle):
    import edgespec
    from edgespec.kernels.reference import sparse_ffn
    from edgespec.runtimes.numpy_ref import NumpyBackend
    from edgespec.sparse.dense import SparseNumpyModel

    rows_seen: list[int] = []

    def counting(x, rows, *a, **kw):
        rows_seen.append(int(rows.size))
        return sparse_ffn(x, rows, *a, **kw)

    with edgespec.load(bundle, backend="numpy", dtype="float64", n_threads=1, progress=False) as rt:
        sparse = rt.target
        assert isinstance(sparse, SparseNumpyModel)
        th = sparse.thresholds
        sparse.kernel = counting
        ids = _ids(40, 1)
        got = np.concatenate([sparse.forward(ids[:30]), sparse.forward(ids[30:31])])
    src = ModelSource("hf", bundle / "target" / "hf", "tiny")
    dense = NumpyBackend.load(src, LoadOptions(n_ctx=512, dtype="float64"))
    dense.ffn_hook = th.hook()
    want = np.concatenate([dense.forward(ids[:30]), dense.forward(ids[30:31])])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)  # summation order only
    # one token needs only its own on neurons: about (1 - TARGET) of 128
    assert len(rows_seen) == 6 and max(rows_seen[3:]) < 128
    by = sparse.sparsity.to_dict()["by_chunk"]
    assert by["1"]["blocks_per_forward"] == sum(rows_seen[3:])
    assert by["30"]["blocks_per_forward"] == sum(rows_seen[:3])


def test_generate_on_the_bundle_is_lossy_and_reports_neuron_sparsity(
    bundle, capsys, tmp_path, monkeypatch
):
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path / "home"))
    argv = ["generate", "-m", str(bundle), "-b", "numpy", "-t", "1", "-q", "--json"]
    assert main([*argv, "-n", "6", "--ignore-eos", "hello sparse world"]) == 0
    stats = json.loads(capsys.readouterr().out)["stats"]
    sp = stats["sparsity"]
    assert stats["lossy"] is True and sp["lossy"] is True and sp["unit"] == "neuron"
    assert sp["n_blocks"] == 128 and sp["n_layers"] == 3
    prompt = sp["by_chunk"][str(stats["prompt_tokens"])]
    # a chunk's union holds every token's neurons: never sparser than its tokens
    assert prompt["chunk_sparsity"] <= prompt["token_sparsity"]
    assert sp["by_chunk"]["1"]["forwards"] == stats["target_forwards"] - 1


def test_other_backends_run_the_bundle_dense_and_say_so(bundle, capsys):
    from edgespec.sparse.dense import apply_bundle_sparsity
    from edgespec.testing import PrefixModel

    src = ModelSource("hf", bundle / "target" / "hf", "b:target")
    m = PrefixModel(vocab_size=8, seed=0)
    assert apply_bundle_sparsity(src, m, LoadOptions()) is m
    assert "sparsity layout is not applied" in capsys.readouterr().err
