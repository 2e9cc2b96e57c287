"""``--kv-cache`` on the NumPy reference: the stores inside a real forward (tiny random
models), exactness where nothing is compressed, and the stats of a generation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgespec.cli import main
from edgespec.kvcache import KV_STORES
from edgespec.runtimes import LoadOptions, ModelSource
from edgespec.runtimes.numpy_ref import NumpyBackend, NumpyModel

pytestmark = pytest.mark.unit

IDS = [int(i) for i in np.random.default_rng(0).integers(3, 256, size=300)]


def load(folder: Path, kv: str | None, n_ctx: int = 400, dtype: str = "float64") -> NumpyModel:
    opts = LoadOptions(n_ctx=n_ctx, dtype=dtype, progress=False, kv_cache=kv)
    return NumpyBackend.load(ModelSource("hf", folder, "tiny"), opts)


def test_f32_store_equals_the_plain_path_exactly(tiny_llama_dir):
    plain, store = load(tiny_llama_dir, None), load(tiny_llama_dir, "f32")
    assert store.kv_store is not None and plain.kv_store is None
    for chunk in (IDS[:100], IDS[100:101], IDS[101:180]):
        np.testing.assert_array_equal(store.forward(chunk), plain.forward(chunk))
    store.truncate(150), plain.truncate(150)
    a, b = store.fork(), plain.fork()
    np.testing.assert_array_equal(a.forward(IDS[150:200]), b.forward(IDS[150:200]))
    parents = [-1, 0, 0, 1, 3]
    np.testing.assert_array_equal(
        store.forward_tree(IDS[200:205], parents), plain.forward_tree(IDS[200:205], parents)
    )
    store.commit_tree_path(150, [0, 1, 3]), plain.commit_tree_path(150, [0, 1, 3])
    np.testing.assert_array_equal(store.forward(IDS[5:9]), plain.forward(IDS[5:9]))


def test_gear4_is_exact_until_a_block_is_compressed(tiny_llama_dir):
    # window 64 + block 64: the tail is compressed only once it holds 128 tokens
    plain, gear = load(tiny_llama_dir, None), load(tiny_llama_dir, "gear4")
    np.testing.assert_array_equal(gear.forward(IDS[:100]), plain.forward(IDS[:100]))
    for t in IDS[100:128]:
        np.testing.assert_array_equal(gear.forward([t]), plain.forward([t]))
    assert gear.kv_store.nblk == [0] * 3
    gear.forward([IDS[128]])
    assert gear.kv_store.nblk == [1] * 3


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_lossy_stores_rank_q8_gear4_q4(request, arch):
    # 300 tokens in chunks of 32 (gear4 compresses between chunks), float32
    folder = request.getfixturevalue(f"tiny_{arch}_dir")

    def logits(name: str | None) -> np.ndarray:
        m = load(folder, name, dtype="float32")
        return np.concatenate([m.forward(IDS[i : i + 32]) for i in range(0, 300, 32)])

    ref = logits(None)
    e = {kv: float(np.abs(logits(kv) - ref).max()) for kv in ("q8", "gear4", "q4")}
    # measured max |logit - f32| / std(f32 logits), llama / qwen2: q8 0.039 / 0.033, gear4
    # 0.122 / 0.137, q4 0.585 / 0.630 (this test's e divided by ref.std(), printed)
    assert 0 < e["q8"] < e["gear4"] < 0.5 * e["q4"]


def test_gear4_tree_and_fork_follow_the_linear_path(tiny_llama_dir):
    m = load(tiny_llama_dir, "gear4")
    m.forward(IDS[:200])
    lin = m.fork()
    want = lin.forward(IDS[200:203])  # the path 0 -> 1 -> 3 of the tree below
    tree = m.forward_tree([IDS[200], IDS[201], 7, IDS[202]], [-1, 0, 0, 1])
    np.testing.assert_allclose(tree[[0, 1, 3]], want, atol=1e-10)
    m.commit_tree_path(200, [0, 1, 3])
    np.testing.assert_allclose(m.forward(IDS[203:210]), lin.forward(IDS[203:210]), atol=1e-10)


def test_gear4_rollback_into_a_block_then_continue(tiny_llama_dir):
    m = load(tiny_llama_dir, "gear4")
    for i in range(0, 260, 20):
        m.forward(IDS[i : i + 20])
    m.truncate(100)  # inside block 1 (64..127): its rows 64..99 come back decompressed
    out = m.forward(IDS[100:140])
    assert m.n_past == 140 and np.isfinite(out).all()
    assert m.kv_store.nblk[0] * 64 + m.kv_store.tlen[0] == 140


@pytest.fixture(scope="module")
def tiny_tok_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("tokenizers")
    from edgespec.testing import add_byte_tokenizer

    out = tmp_path_factory.mktemp("tiny-tok") / "model"
    shutil.copytree(tiny_llama_dir, out)
    add_byte_tokenizer(out)
    return out


def test_generate_reports_the_stores_bytes_and_lossy(capsys, tiny_tok_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path / "home"))
    base = ["generate", "the quick brown fox", "-m", str(tiny_tok_dir), "-b", "numpy"]
    base += ["-t", "1", "-n", "4", "-c", "256", "--json", "-q"]
    stats = {}
    for kv in ("f32", "gear4"):
        assert main([*base, "--kv-cache", kv]) == 0
        stats[kv] = json.loads(capsys.readouterr().out)["stats"]
    assert not stats["f32"]["lossy"] and stats["gear4"]["lossy"]
    # tiny llama: 3 layers, 2 KV heads, head_dim 16, float32
    for kv, s in stats.items():
        want = KV_STORES.get(kv).layout_bytes(3, 2, 256, 16, 4, NumpyModel.max_chunk)
        assert s["kv_cache"] == kv and s["kv_cache_mb"] == pytest.approx(want / 1e6)
        assert s["kv_cache_f16_mb"] == pytest.approx(2 * 3 * 2 * 256 * 16 * 2 / 1e6)
        # the saving is against numpy's own default, f32, not llama.cpp's f16
        assert s["kv_cache_default"] == "f32"
        assert s["kv_cache_default_mb"] == pytest.approx(2 * 3 * 2 * 256 * 16 * 4 / 1e6)


def test_stats_line_compares_with_numpy_default_f32(capsys, tiny_tok_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path / "home"))
    args = ["generate", "the quick brown fox", "-m", str(tiny_tok_dir), "-b", "numpy"]
    args += ["-t", "1", "-n", "2", "-c", "256", "-q", "--stats", "--kv-cache", "q8"]
    assert main(args) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("KV cache")]
    # tiny llama: 3 layers, 2 KV heads, head_dim 16; q8_0 is 34 bytes per 32 values
    q8 = KV_STORES.get("q8").layout_bytes(3, 2, 256, 16, 4, NumpyModel.max_chunk) / 1e6
    f32 = 2 * 3 * 2 * 256 * 16 * 4 / 1e6
    assert lines == [
        f"KV cache q8 (lossy): {q8:.1f} MB for the context ({q8 / f32:.2f}x of f32, the "
        f"default, {f32 - q8:.1f} MB saved)"
    ]


def test_bench_runs_kv_types_side_by_side(tmp_path, tiny_tok_dir, monkeypatch):
    from edgespec.bench import energy
    from edgespec.bench.cli import canonical_argv
    from edgespec.bench.runner import Bench, BenchOptions
    from edgespec.testing import FakeBaseline

    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path / "home"))
    w = tmp_path / "w.jsonl"
    w.write_text(json.dumps({"id": "w-0", "prompt": "the quick brown fox " * 8}) + "\n")
    opts = BenchOptions(
        out=tmp_path / "out", model=str(tiny_tok_dir), strategies=["autoregressive"],
        backends=["numpy"], runs=1, warmup=0, max_new_tokens=4, n_ctx=1024, threads=1,
        workloads=[str(w)], progress=False, plots=False, kv_cache=["f32", "gear4"],
    )  # fmt: skip
    doc = Bench(opts, baseline=FakeBaseline, meter=energy.EstimateMeter(4.0), argv=[]).run()
    by = {r["label"]: r for r in doc["runs"]}
    f32, gear = by["autoregressive@numpy+kv=f32"], by["autoregressive@numpy+kv=gear4"]
    assert not f32["lossy"] and gear["lossy"]
    assert (f32["kv_cache"], gear["kv_cache"]) == ("f32", "gear4")
    assert f32["kv_cache_default"] == gear["kv_cache_default"] == "f32"
    assert f32["kv_cache_saved_mb"] == 0.0
    assert gear["kv_cache_saved_mb"] == pytest.approx(f32["kv_cache_mb"] - gear["kv_cache_mb"])
    # at 1024 cells gear4's blocks and its float32 tail (383 tokens) hold 0.69x of f32
    # (head_dim 16); at 256 cells the tail alone is as large as f32
    want = KV_STORES.get("gear4").layout_bytes(3, 2, 1024, 16, 4, NumpyModel.max_chunk)
    assert gear["kv_cache_mb"] == pytest.approx(want / 1e6) and want < f32["kv_cache_mb"] * 1e6
    lossy = {c["label"]: c["lossy"] for c in doc["configs"]}
    assert lossy["autoregressive@numpy+kv=gear4"] and not lossy["autoregressive@numpy+kv=f32"]
    assert canonical_argv(opts)[-2:] == ["--kv-cache", "f32,gear4"]


def test_bench_unknown_kv_type_is_one_line():
    from edgespec.bench.runner import make_combos
    from edgespec.errors import EdgespecError

    with pytest.raises(EdgespecError, match=r"^--kv-cache: unknown KV-cache type 'q5'; known: "):
        make_combos(["autoregressive"], ["numpy"], kv_cache=["f32", "q5"])
