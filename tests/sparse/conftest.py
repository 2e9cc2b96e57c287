"""Tiny BlockFFN models in the authors' HF format (config.json + model.safetensors), built
once per session with router offsets fitted to a target token-level sparsity."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edgespec.runtimes.base import LoadOptions, ModelSource
from edgespec.sparse.tiny import ChunkLocalRouter, make_tiny_blockffn

#: the token-level sparsity the tiny models' routers are fitted to
TARGET = 0.8


@pytest.fixture(scope="session")
def blockffn_target() -> float:
    """The token-level sparsity the tiny models' routers are fitted to."""
    return TARGET


@pytest.fixture(scope="session")
def blockffn_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Vanilla (GQA) attention, ``ffn_type`` "block" (up [E, S, D], down [E, D, S])."""
    out = tmp_path_factory.mktemp("blockffn") / "vanilla-block"
    return make_tiny_blockffn(out, target_sparsity=TARGET, seed=0, dtype="float64")


@pytest.fixture(scope="session")
def blockffn_mla_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MLA attention, ``ffn_type`` "block_linear" ([E*S, D], [D, E*S]), as the published
    checkpoints use MLA."""
    out = tmp_path_factory.mktemp("blockffn") / "mla-linear"
    return make_tiny_blockffn(
        out,
        target_sparsity=TARGET,
        seed=1,
        dtype="float64",
        attention_type="mla",
        ffn_type="block_linear",
        num_key_value_heads=4,
    )


@pytest.fixture(scope="session")
def blockffn_local_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Vanilla attention, "block" FFN, routers built to have chunk-level sparsity
    (:class:`~edgespec.sparse.tiny.ChunkLocalRouter` defaults)."""
    out = tmp_path_factory.mktemp("blockffn") / "chunk-local"
    return make_tiny_blockffn(
        out, target_sparsity=TARGET, seed=0, dtype="float64", chunk_local=ChunkLocalRouter()
    )


@pytest.fixture(scope="session")
def model_dir(blockffn_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BlockFFN folder with a byte-level tokenizer.json beside it (loadable by
    ``edgespec.load`` and the CLI; tests only read it)."""
    pytest.importorskip("tokenizers")
    from edgespec.testing import add_byte_tokenizer

    out = tmp_path_factory.mktemp("blockffn-tok") / "model"
    shutil.copytree(blockffn_dir, out)
    add_byte_tokenizer(out)
    return out


@pytest.fixture(scope="session")
def local_model_dir(blockffn_local_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chunk-local tiny BlockFFN folder with a byte-level tokenizer.json beside it."""
    pytest.importorskip("tokenizers")
    from edgespec.testing import add_byte_tokenizer

    out = tmp_path_factory.mktemp("blockffn-tok") / "chunk-local"
    shutil.copytree(blockffn_local_dir, out)
    add_byte_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir: Path):
    """The tiny random llama on the NumPy reference in float64 (training-free sparsity's
    tests: fitting thresholds, masked FFNs, quality), one per test module."""
    from edgespec.runtimes.numpy_ref import NumpyBackend

    src = ModelSource("hf", tiny_llama_dir, "tiny-llama")
    return NumpyBackend.load(src, LoadOptions(n_ctx=512, dtype="float64"))
