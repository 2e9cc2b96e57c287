"""MetaSchedule tuning records (kernels/tuning.py): one tiny tuning run (4 trials, one small
qmatmul shape), then what loading does with good, corrupt and foreign records."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tvm")

from edgespec.errors import EdgespecError  # noqa: E402
from edgespec.kernels import reference, tuning  # noqa: E402
from edgespec.kernels.qmatmul import (  # noqa: E402
    FORMATS,
    QMatmul,
    QWeight,
    cpu_scheduler,
    qmatmul_func,
    qmatmul_key,
)

FMT = FORMATS["Q4_0"]
M, N, K = 2, 64, 64
KEY = qmatmul_key(FMT, M, N, K)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuning.TuningRecord]:
    """A real tuning run with a budget of 4 trials (about a minute on a loaded 2-core VM)."""
    folder = tmp_path_factory.mktemp("records")
    record = tuning.tune(
        qmatmul_func(FMT, M, N, K),
        KEY,
        cpu_scheduler,
        trials=4,
        directory=folder,
        progress=False,
        number=5,
        repeat=2,
    )
    return folder, record


def _weight() -> tuple[np.ndarray, QWeight]:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (N, K // 32, FMT.type_size), dtype=np.uint8)
    raw[:, :, 0:2] = (
        (rng.standard_normal((N, K // 32)) * 0.01).astype(np.float16)[..., None].view(np.uint8)
    )
    raw = raw.reshape(N, -1)
    return raw, QWeight.from_gguf(raw, "Q4_0")


@pytest.mark.slow
def test_tune_writes_a_record_whose_schedule_is_correct(
    tuned: tuple[Path, tuning.TuningRecord],
) -> None:
    folder, record = tuned
    data = json.loads((folder / f"{KEY}.json").read_text())
    assert data["key"] == KEY and data["trials"] == 4 and data["device"] == record.device
    assert record.best_us > 0 and record.untuned_us > 0 and record.tuning_seconds > 0
    assert tuning.load_record(folder / f"{KEY}.json") == record
    # the stored trace replays onto a fresh function and computes the same product
    raw, weight = _weight()

    def replay(func, target, key):  # type: ignore[no-untyped-def]
        return tuning.apply_record(func, record)

    x = np.random.default_rng(1).standard_normal((M, K)).astype(np.float32)
    y = QMatmul(weight, scheduler=replay, buckets=(M,))(x)
    ref = reference.qmatmul(x, raw, "Q4_0")
    bound = (
        (K + 1)
        * 2.0**-24
        * (np.abs(x) @ np.abs(QMatmul(weight, buckets=(M,)).weight.d.repeat(32, 1) * 8).T)
    )
    assert (np.abs(y - ref) <= bound).all()


@pytest.mark.slow
def test_bad_records_warn_once_and_fall_back(
    tuned: tuple[Path, tuning.TuningRecord], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, record = tuned
    cases = {
        "corrupt": None,
        "another device": replace(record, device="0" * 16, device_description="Cortex-A76 | 8"),
        "with TVM 0.1": replace(record, tvm_version="0.1"),
    }
    for expected, bad in cases.items():
        path = tmp_path / f"{KEY}.json"
        if bad is None:
            path.write_text('{"format": 1, "key": ')
        else:
            bad.save(path)
        assert tuning.load_record(path) is None
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected.split()[-1] in err[0] and "untuned" in err[0], err
        # the kernel still runs (untuned) from that folder
        raw, weight = _weight()
        x = np.ones((M, K), np.float32)
        sched = tuning.tuned_scheduler(cpu_scheduler, tmp_path)
        y = QMatmul(weight, scheduler=sched, buckets=(M,))(x)
        assert (
            np.abs(y - reference.qmatmul(x, raw, "Q4_0")) <= reference.qmatmul_bound(x, raw, "Q4_0")
        ).all()
        capsys.readouterr()


def test_records_dir_is_keyed_by_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgespec.speculative.cost_curves import device_fingerprint

    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path))
    assert tuning.records_dir() == tmp_path / "tvm" / device_fingerprint()
    assert tuning.load_record(tuning.records_dir() / "missing.json") is None
    target = tuning.host_target(2)
    assert target.attrs["mcpu"] == tuning.host_cpu() and int(target.attrs["num-cores"]) == 2
    with pytest.raises(EdgespecError, match="at least 1"):
        tuning.tune(qmatmul_func(FMT, M, N, K), KEY, cpu_scheduler, trials=0)
