"""MetaSchedule tuning of the sparse FFN kernel at a fixed union: valid row arguments, a record
whose untuned and tuned times come from the same run, and refusal of a dynamic shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgespec.errors import EdgespecError

pytestmark = pytest.mark.unit


def test_row_arguments_are_whole_valid_blocks() -> None:
    tvm = pytest.importorskip("tvm")
    from edgespec.kernels.sparse_ffn import block_rows_maker

    make = block_rows_maker(f=256, block=16)
    rng = np.random.default_rng(0)
    for n_rows in (16, 48, 40):  # 40: the last block cut short
        rows = make(["TENSOR", "int64", [n_rows]], rng, tvm.cpu(0)).numpy()
        assert rows.shape == (n_rows,) and rows.dtype == np.int64
        assert rows.min() >= 0 and rows.max() < 256
        assert (np.diff(rows) > 0).all()  # ascending, no repeats
        starts = rows[::16]
        assert (starts % 16 == 0).all()  # each group of 16 starts a block
    x = make(["TENSOR", "float32", [2, 8]], rng, tvm.cpu(0)).numpy()
    assert x.dtype == np.float32 and x.shape == (2, 8) and x.std() > 0


def test_tune_needs_a_fixed_union() -> None:
    from edgespec.kernels.sparse_ffn import FFNShape, tune_sparse

    with pytest.raises(EdgespecError, match="fixed n_rows"):
        tune_sparse(FFNShape(1, 64, 256))


@pytest.mark.slow
def test_tuned_record_replays_on_the_dynamic_kernel(tmp_path: Path, monkeypatch) -> None:
    """One trial at a fixed A: the record names A and holds both times, a copy under the
    dynamic key replays on the kernel that runs (any A), and that kernel stays within the
    float32 error bound of the float64 reference (the kernel tests' tolerance)."""
    pytest.importorskip("tvm")
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path))
    from edgespec.kernels import reference, tuning
    from edgespec.kernels.sparse_ffn import (
        FFNKernels,
        FFNShape,
        aligned_zeros,
        cpu_scheduler,
        ffn_bound,
        tune_sparse,
    )

    rec = tune_sparse(FFNShape(2, 64, 256, n_rows=64), block=16, trials=1, progress=False)
    assert rec.key == "sparse_ffn-silu-gated-m2-d64-f256-a64"
    assert rec.best_us > 0 and rec.untuned_us > 0 and rec.trials == 1
    dynamic = tuning.records_dir() / "sparse_ffn-silu-gated-m2-d64-f256.json"
    assert tuning.TuningRecord.read(dynamic).trace == rec.trace

    applied: list[str] = []
    real_apply = tuning.apply_record
    monkeypatch.setattr(
        tuning, "apply_record", lambda f, r: applied.append(r.key) or real_apply(f, r)
    )
    # force the record's use whatever the trial measured (a slower one is skipped)
    forced = tuning.TuningRecord.read(dynamic)
    object.__setattr__(forced, "best_us", 0.0)
    forced.save(dynamic)
    kern = FFNKernels(scheduler=tuning.tuned_scheduler(cpu_scheduler), buckets=(2,))
    rng = np.random.default_rng(0)
    gate, up, down_t = (aligned_zeros((256, 64), np.float32) for _ in range(3))
    for w in (gate, up, down_t):
        w[...] = rng.standard_normal((256, 64)) * 0.125
    x = rng.standard_normal((2, 64)).astype(np.float32)
    for n_rows in (16, 64, 200):
        rows = np.sort(rng.choice(256, n_rows, replace=False))
        y = kern.run(x, rows, gate, up, down_t.T, act="silu", scale=None)
        f64 = [a.astype(np.float64) for a in (x, gate, up, down_t.T)]
        exact = reference.sparse_ffn(f64[0], rows, f64[1], f64[2], f64[3])
        assert (np.abs(y - exact) <= ffn_bound(x, rows, gate, up, down_t.T)).all()
    assert applied == ["sparse_ffn-silu-gated-m2-d64-f256"]


@pytest.mark.slow
def test_tune_command_tunes_the_kernel_the_backend_runs(
    blockffn_dir: Path, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``edgespec tune`` on a BlockFFN folder writes a record under the key the blockffn
    backend's TVM kernel looks up: a forward of that chunk size replays it."""
    pytest.importorskip("tvm")
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path))
    import json

    from edgespec.cli import main
    from edgespec.kernels import sparse_ffn, tuning
    from edgespec.sparse.blockffn import load_blockffn

    rc = main(["tune", "-m", str(blockffn_dir), "--rows", "2", "--trials", "1", "--json", "-q"])
    out = capsys.readouterr().out
    assert rc == 0
    (entry,) = json.loads(out)
    assert entry["rows"] == 2 and entry["union_rows"] > 0
    assert entry["used"] == (entry["tuned_us"] < entry["untuned_us"])
    path = tuning.records_dir() / f"{entry['key']}.json"
    forced = tuning.TuningRecord.read(path)  # used whatever the one trial measured
    object.__setattr__(forced, "best_us", 0.0)
    forced.save(path)

    applied: list[str] = []
    real_apply = tuning.apply_record
    monkeypatch.setattr(
        tuning, "apply_record", lambda f, r: applied.append(r.key) or real_apply(f, r)
    )
    monkeypatch.setattr(sparse_ffn, "_DEFAULT", {})  # kernels built afresh in this home
    model = load_blockffn(blockffn_dir, n_ctx=16, kernel="tvm")
    model.forward([1, 2], all_logits=True)
    assert entry["key"] in applied


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["--trials", "0"], "--trials must be at least 1"),
        (["--union", "1.5"], "--union must be in"),
        (["--rows", "17"], "--rows must lie in 1..16"),
        (["--sparse-kernel", "numpy"], "--sparse-kernel numpy is not tuned here"),
    ],
)
def test_tune_command_bad_input_is_one_line(
    blockffn_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str], msg: str
) -> None:
    from edgespec.cli import main

    assert main(["tune", "-m", str(blockffn_dir), *args]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1


def test_tune_command_needs_a_model(capsys: pytest.CaptureFixture[str]) -> None:
    """Without -m it does not fall back to the default zoo model (not a BlockFFN)."""
    from edgespec.cli import main

    assert main(["tune", "--rows", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "edgespec: error: tune needs -m: a BlockFFN HF folder or hub id"
    )


def test_tune_command_refuses_a_model_that_is_not_blockffn(
    tiny_llama_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tvm")
    from edgespec.cli import main

    assert main(["tune", "-m", str(tiny_llama_dir), "--rows", "1"]) == 2
    err = capsys.readouterr().err
    assert "is not a BlockFFN model" in err and len(err.strip().splitlines()) == 1
