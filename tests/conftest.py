"""Shared fixtures: tiny random-weight HF models (built locally, no hub) and zoo models.

Tiny models are saved once per session under a pytest temp folder. The zoo's default model
is pulled into ``$EDGESPEC_HOME`` (the install command already did this; pulling again is a
cheap checksum-stamp check).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _save_tiny(out: Path, arch: str, heads: tuple[int, int] = (4, 2), head_dim: int = 16) -> Path:
    """A tiny random model of ``arch`` with ``heads = (query heads, key/value heads)`` of
    ``head_dim`` features each."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = dict(
        vocab_size=256,
        hidden_size=head_dim * heads[0],
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=heads[0],
        num_key_value_heads=heads[1],
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    if arch == "llama":
        cfg = transformers.LlamaConfig(**common)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(**common, use_sliding_window=False)
        model = transformers.Qwen2ForCausalLM(cfg)
    # random init is small; scale up so logits are not all near-ties
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0) if p.dim() > 1 else None
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF folder (config.json + model.safetensors) of a 3-layer random LlamaForCausalLM."""
    return _save_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An HF folder of a 3-layer random Qwen2ForCausalLM (q/k/v biases)."""
    return _save_tiny(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2")


@pytest.fixture(scope="session")
def tiny_q4km_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-layer random qwen2 wide enough for K-quants (hidden 256: 4 heads of 64, 2 kv
    heads), quantized by llama.cpp's own quantizer to Q4_K_M: Q4_K matrices, Q6_K for the
    last layer's v (a fused QKV of both types) and the output, Q5_0 / Q8_0 for ffn_down
    (rows of 128, not a multiple of 256)."""
    pytest.importorskip("llama_cpp")
    from edgespec.export.gguf_export import llamacpp_quantize
    from edgespec.testing import write_tiny_gguf

    folder = tmp_path_factory.mktemp("tiny-q4km")
    hf = _save_tiny(folder / "hf", "qwen2", (4, 2), 64)
    return llamacpp_quantize(write_tiny_gguf(hf, folder / "f32.gguf"), folder / "q4km.gguf")


@pytest.fixture
def tiny_llama_with_heads(tmp_path: Path) -> Callable[..., Path]:
    """``make(n_head, n_head_kv, head_dim=16)``: an HF folder of a 3-layer random
    LlamaForCausalLM with those heads."""
    return lambda n_head, n_head_kv, head_dim=16: _save_tiny(
        tmp_path / f"tiny-llama-{n_head}-{n_head_kv}-{head_dim}",
        "llama",
        (n_head, n_head_kv),
        head_dim,
    )


#: zoo models the session's tests ran on: {name: (path, sha256)}, printed at the end
REAL_MODELS: dict[str, tuple[Path, str]] = {}


def real_model(name: str) -> Path:
    """A zoo model, pulled and checksummed, recorded for the end-of-run summary."""
    from edgespec import zoo

    path = zoo.pull(name, progress=False)
    REAL_MODELS[name] = (path, zoo.get_entry(name).sha256)
    return path


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The zoo's default GGUF (smollm2-135m, Q4_1), pulled and checksummed."""
    return real_model("smollm2-135m")


@pytest.fixture(scope="session")
def qwen15b_path() -> Path:
    """qwen2.5-coder-1.5b (Q4_K_M: Q4_K and Q6_K), pulled and checksummed (./install.sh
    pulls it, so CI runs the tests that need it instead of skipping them)."""
    return real_model("qwen2.5-coder-1.5b")


@pytest.fixture(scope="session")
def qwen05b_path() -> Path:
    """qwen2.5-coder-0.5b (Q4_K_M, mostly Q5_0/Q8_0), pulled and checksummed."""
    return real_model("qwen2.5-coder-0.5b")


@pytest.fixture(scope="session")
def opencl_device() -> object:
    """The first OpenCL device (PoCL here: ./install.sh installs it); skipped, with the one
    line saying what is missing, where no driver is registered."""
    pytest.importorskip("pyopencl")
    from edgespec.errors import EdgespecError
    from edgespec.kernels.opencl import cl_device

    try:
        return cl_device()
    except EdgespecError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def smollm2_near_tie_bound(smollm2_path: Path) -> float:
    """smollm2-135m's near-tie bound on llama.cpp, measured as ``edgespec calibrate`` does
    (``edgespec.losslessness.calibrate_near_tie_bound``: the largest change of the top-2 logit
    gap between one-token and verify-shaped forwards, chunks of up to 8 draft tokens)."""
    pytest.importorskip("llama_cpp")
    from edgespec.losslessness import calibrate_near_tie_bound
    from edgespec.runtimes import ModelSource
    from edgespec.runtimes.llamacpp import LlamaCppModel
    from edgespec.tokenizer import load_tokenizer

    tok = load_tokenizer(ModelSource("gguf", smollm2_path, "smollm2-135m"))
    with LlamaCppModel(smollm2_path, n_ctx=512) as m:
        return calibrate_near_tie_bound(m, tok)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--build-cpu",
        default=None,
        metavar="CPU",
        help="build every TVM kernel for this LLVM CPU instead of this machine's, e.g. "
        "znver3 (AVX2, no AVX-512) on an AVX-512 machine: that CPU's code, run here",
    )


def pytest_configure(config: pytest.Config) -> None:
    cpu = config.getoption("--build-cpu")
    if cpu:
        from edgespec.kernels import tuning

        tuning.build_for(cpu)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which real (pretrained) models the run used, so a green run on tiny random
    models alone is visible as such."""
    tr = terminalreporter
    tr.section("real models")
    if not REAL_MODELS:
        tr.write_line("none: only tiny random-weight models ran")
    for name, (path, sha) in sorted(REAL_MODELS.items()):
        tr.write_line(f"{name}: {path} (sha256 {sha[:16]}...)")
