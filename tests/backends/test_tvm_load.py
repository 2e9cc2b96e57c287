"""The tvm backend's quantized load: only what runs in float32 is dequantized, the packed
matrices are cached on disk, and both give the values of the full path bit for bit.

Tiny llama / qwen2 GGUF files with quantized matrices and one F16 fallback (the files of
tests/backends/test_tvm_quant.py); the Qwen 1.5B's load times are in docs/tvm.md
(benchmarks/tvm_load.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgespec.runtimes.base import LoadOptions, ModelSource

pytest.importorskip("tvm", reason="the tvm backend needs apache-tvm (pip install 'edgespec[tvm]')")
gguf = pytest.importorskip("gguf")
from edgespec.runtimes import numpy_weights, tvm_backend  # noqa: E402
from edgespec.runtimes.tvm_backend import TvmBackend  # noqa: E402

pytestmark = [pytest.mark.backend]

IDS = [1, 17, 200, 33, 5, 99, 142, 7]


#: GGUF type per tensor short name; the last layer's ffn_down is F16 (no kernel: float32)
TYPES = {"attn_q": "Q4_1", "attn_k": "Q4_1", "attn_v": "Q4_1", "attn_output": "Q4_0"}
TYPES |= {"ffn_gate": "Q5_0", "ffn_up": "Q5_0", "ffn_down": "Q8_0", "output": "Q8_0"}


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny_q(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ModelSource:
    import json

    from edgespec.testing import write_tiny_gguf

    hf: Path = request.getfixturevalue(f"tiny_{request.param}_dir")
    last = json.loads((hf / "config.json").read_text())["num_hidden_layers"] - 1

    def tensor_type(name: str, arr: np.ndarray) -> str | None:
        if arr.ndim != 2:
            return None
        return "F16" if name == f"blk.{last}.ffn_down.weight" else TYPES.get(name.split(".")[-2])

    out = tmp_path_factory.mktemp("tvm-load") / f"tiny-{request.param}.gguf"
    return ModelSource("gguf", write_tiny_gguf(hf, out, tensor_type=tensor_type), out.stem)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The packed-weights cache in a fresh folder of this test."""
    folder = tmp_path / "weights" / "w"
    monkeypatch.setattr(tvm_backend, "packed_cache_dir", lambda path, choice: folder)
    return folder


def _load(src: ModelSource, **kw: Any) -> Any:
    opts = LoadOptions(n_ctx=32, weights="gguf-exact", progress=False, **kw)
    return TvmBackend.load(src, opts)


def test_float_weights_are_the_references(tiny_q: ModelSource) -> None:
    """Norms, biases, the embedding's rows and the F16 fallback read one by one equal the
    full loader's (every tensor dequantized, then fused) bit for bit."""
    from edgespec.runtimes import numpy_ref

    path = Path(tiny_q.path)
    hp, weights, _ = numpy_ref._load_gguf(path, np.float32, False)
    want = tvm_backend.graph_weights(weights)
    hp2, _, spec, freq = tvm_backend.gguf_model(path)
    assert spec == tvm_backend.graph_spec(hp, weights) and hp2 == hp
    llama = hp.arch == "llama"
    packed, fallback = tvm_backend.gguf_matrices(path, spec, llama)
    assert fallback == ["F16"]
    floats = [n for n in spec.weight_names() if n not in packed]
    got = tvm_backend.gguf_float_weights(path, spec, floats, llama)
    assert set(got) == set(floats) and f"l{hp.n_layers - 1}.w_down" in got
    for name in floats:
        assert got[name].dtype == want[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert (freq is None) == (weights.freq_factors is None)
    embed = tvm_backend.gguf_embedding(path, spec)
    np.testing.assert_array_equal(embed.dense(), want["embed"])
    np.testing.assert_array_equal(embed.rows(np.array(IDS)), want["embed"][IDS])


def test_quantized_matrices_are_never_dequantized(
    tiny_q: ModelSource, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[str] = []
    real = numpy_weights.dequantize_tensor

    def spy(t: Any) -> np.ndarray:
        read.append(str(t.name))
        return real(t)

    monkeypatch.setattr(numpy_weights, "dequantize_tensor", spy)
    model = _load(tiny_q)
    assert model.info.extra["quantized_matrices"] == "12/13"
    n = model.info.n_layers
    quantized = [r for r in read if r.endswith(".weight") and "norm" not in r]
    assert quantized == [f"blk.{n - 1}.ffn_down.weight"]  # F16; the embedding's rows later


def test_second_load_reads_the_cache_bit_for_bit(
    tiny_q: ModelSource, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _load(tiny_q)
    assert (cache / "meta.json").is_file()
    want = first.forward(IDS)

    def unpack(*args: Any, **kw: Any) -> Any:
        raise AssertionError("the cached matrices were unpacked again")

    monkeypatch.setattr(tvm_backend, "gguf_matrices", unpack)
    second = _load(tiny_q)
    assert second.info.extra["quantized_matrices"] == "12/13"
    np.testing.assert_array_equal(second.forward(IDS), want)
    monkeypatch.undo()
    # a damaged cache is rebuilt, not trusted
    npy = sorted(cache.glob("*.npy"))[0]
    npy.write_bytes(npy.read_bytes()[:40])
    cache_dir = cache
    monkeypatch.setattr(tvm_backend, "packed_cache_dir", lambda path, choice: cache_dir)
    third = _load(tiny_q)
    np.testing.assert_array_equal(third.forward(IDS), want)
    assert tvm_backend._read_packed(cache) is not None


def test_stale_cache_folders_are_pruned(tiny_q: ModelSource, tmp_path: Path) -> None:
    root = tmp_path / "weights"
    gone = root / "gone-gguf-exact-0"
    gone.mkdir(parents=True)
    (gone / "meta.json").write_text('{"source": "/nonexistent/x.gguf"}')
    src = Path(tiny_q.path)
    older = root / f"{src.stem}-gguf-exact-1"
    older.mkdir()
    (older / "meta.json").write_text(f'{{"source": "{src.resolve()}"}}')
    other = root / f"{src.stem}-gguf-q8act-2"
    other.mkdir()
    (other / "meta.json").write_text(f'{{"source": "{src.resolve()}"}}')
    tvm_backend._write_packed(root / f"{src.stem}-gguf-exact-3", {}, [], src)
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [other.name, f"{src.stem}-gguf-exact-3"]
    )


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"])
def test_regrouped_dequantize_is_gguf_py_bit_for_bit(qtype: str) -> None:
    """edgespec.gguf_file.dequantize (blocks regrouped into long rows) == gguf.quants's, on
    random blocks (one block a row, as QBlocks.from_gguf passes them, and whole rows)."""
    from gguf import GGMLQuantizationType, quants
    from gguf.constants import GGML_QUANT_SIZES

    from edgespec.gguf_file import dequantize

    t = GGMLQuantizationType[qtype]
    block, size = GGML_QUANT_SIZES[t]
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (96, 3 * size), dtype=np.uint8)
    raw.reshape(-1, size)[:, :2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    for data in (raw, raw.reshape(-1, size)):
        with np.errstate(invalid="ignore", over="ignore"):  # random scales: some NaN / inf
            want = np.asarray(quants.dequantize(data, t), np.float32)
            got = dequantize(data, t)
        assert got.shape == want.shape == (*data.shape[:-1], data.shape[-1] // size * block)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
