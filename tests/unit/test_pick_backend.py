"""Backend choice: the cheapest stored one-token forward wins; with none stored, the
installed backends that are cheap to load are timed once (cached, and the user is told)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from edgespec import threads
from edgespec.model import Model, ModelInfo
from edgespec.runtime import pick_backend, untimed_note
from edgespec.runtimes import BACKENDS, PREFERRED, Backend, LoadOptions, ModelSource
from edgespec.speculative import cost_curves

SOURCE = ModelSource("gguf", Path("/models/tiny.Q4_0.gguf"), "tiny", "ab" * 32)


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path))
    for name in BACKENDS.names():  # every backend counts as installed, none is probed
        monkeypatch.setattr(BACKENDS.get(name), "available", classmethod(lambda cls: True))
        monkeypatch.setattr(BACKENDS.get(name), "cheap_to_load", classmethod(lambda *a: False))


def _store(backend: str, one_token_s: float, *, variant: str = "", **extra: object) -> None:
    key = cost_curves.curve_key(backend, SOURCE.digest(), None, variant)
    cost_curves.save_curve(
        key, {"verify": {"1": one_token_s, "2": 2 * one_token_s}, "backend": backend, **extra}
    )


def test_no_profiles_keeps_the_preference_order() -> None:
    assert pick_backend(SOURCE, None, LoadOptions()) == PREFERRED["gguf"][0]
    _store("onnx", 0.001)  # one profile alone compares nothing
    assert pick_backend(SOURCE, None, LoadOptions()) == PREFERRED["gguf"][0]


@pytest.mark.parametrize(
    ("llamacpp_s", "onnx_s", "want"), [(0.0127, 0.0081, "onnx"), (0.0127, 0.0200, "llamacpp")]
)
def test_cheapest_one_token_forward_wins(llamacpp_s: float, onnx_s: float, want: str) -> None:
    _store("llamacpp", llamacpp_s)
    _store("onnx", onnx_s, variant="shared-gguf-exact", weights="auto")
    assert pick_backend(SOURCE, None, LoadOptions()) == want
    # the user's choice always stands, and other threads or weights have no profile
    assert pick_backend(SOURCE, "numpy", LoadOptions()) == "numpy"
    assert pick_backend(SOURCE, None, LoadOptions(n_threads=1)) == PREFERRED["gguf"][0]
    assert pick_backend(SOURCE, None, LoadOptions(weights="fp32")) == PREFERRED["gguf"][0]
    assert pick_backend(SOURCE, None, LoadOptions(spin=False)) == PREFERRED["gguf"][0]


@pytest.mark.parametrize(
    ("flags", "auto_is"), [({"avx512_vnni"}, "gguf-q8act"), (set(), "gguf-exact")]
)
def test_a_measurement_of_one_build_never_stands_for_another(
    flags: set[str], auto_is: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tvm's "auto" names a build that depends on the CPU (and changed between versions): its
    measurements are stored under the build's name, and a curve stored as "auto" (what
    calibrate wrote when "auto" was always gguf-exact) is not taken for today's build."""
    from edgespec.kernels import qlinear_q8

    monkeypatch.setattr(qlinear_q8, "_cpu_flags", lambda: frozenset(flags))
    _store("llamacpp", 0.02)
    _store("tvm", 0.01, variant="gguf-exact", weights="auto")  # stored by an older version
    assert pick_backend(SOURCE, None, LoadOptions()) == PREFERRED["gguf"][0]
    other = "gguf-exact" if auto_is == "gguf-q8act" else "gguf-q8act"
    _store("tvm", 0.01, variant=other, weights=other)  # another build of the same file
    assert pick_backend(SOURCE, None, LoadOptions()) == PREFERRED["gguf"][0]
    _store("tvm", 0.015, variant=auto_is, weights=auto_is)
    assert pick_backend(SOURCE, None, LoadOptions()) == "tvm"
    assert pick_backend(SOURCE, None, LoadOptions(weights=other)) == PREFERRED["gguf"][0]
    assert threads.key_for(SOURCE, "tvm", LoadOptions()).endswith(f"|weights={auto_is}|spin=1")
    assert threads.key_for(SOURCE, "llamacpp", LoadOptions()).endswith("|weights=auto|spin=1")


def test_other_models_do_not_count() -> None:
    _store("llamacpp", 0.02)
    key = cost_curves.curve_key("onnx", "cd" * 32, None)
    cost_curves.save_curve(key, {"verify": {"1": 0.001}, "backend": "onnx"})
    assert pick_backend(SOURCE, None, LoadOptions()) == PREFERRED["gguf"][0]


def test_curves_are_keyed_by_content_not_file_name(tmp_path: Path) -> None:
    """Bug 2: two different files called model.gguf (two bundles) must not share a curve,
    and one file under two names must."""
    a, b = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
    for path, body in ((a, b"GGUF one"), (b, b"GGUF two")):
        path.parent.mkdir()
        path.write_bytes(body)
    copy = tmp_path / "renamed.gguf"
    copy.write_bytes(a.read_bytes())
    sa, sb, sc = (ModelSource("gguf", p, p.name) for p in (a, b, copy))
    assert sa.digest() != sb.digest()
    assert sa.digest() == sc.digest()
    for backend, s in (("llamacpp", 0.02), ("onnx", 0.01)):
        key = cost_curves.curve_key(backend, sa.digest(), None)
        cost_curves.save_curve(key, {"verify": {"1": s}, "backend": backend})
    assert pick_backend(sa, None, LoadOptions()) == "onnx"
    assert pick_backend(sc, None, LoadOptions()) == "onnx"  # same content, other name
    assert pick_backend(sb, None, LoadOptions()) == PREFERRED["gguf"][0]  # same name only


class _Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


CLOCK = _Clock()


def _fake_backend(name: str, per_token_s: dict[int, float]) -> type[Backend]:
    """A backend whose one-token forward costs ``per_token_s[threads]`` on a fake clock."""

    class FakeModel(Model):
        backend = name

        def __init__(self, n_threads: int | None) -> None:
            self.info = ModelInfo("llama", 1, 8, 50, 4096, name)
            self.threads, self._n = n_threads or 1, 0

        @property
        def n_past(self) -> int:
            return self._n

        def forward(self, tokens: Sequence[int], *, all_logits: bool = True) -> np.ndarray:
            CLOCK.now += per_token_s[self.threads] * len(tokens)
            self._n += len(tokens)
            return np.zeros((len(tokens) if all_logits else 1, 50), np.float32)

        def truncate(self, length: int) -> None:
            self._n = length

        def set_threads(self, n: int) -> bool:
            self.threads = n
            return True

    class FakeBackend(Backend):
        accepts = ("gguf",)
        loads: ClassVar[int] = 0

        @classmethod
        def load(cls, source: ModelSource, options: LoadOptions) -> Model:
            cls.loads += 1
            return FakeModel(options.n_threads)

    FakeBackend.name = name
    return FakeBackend


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> dict[str, type[Backend]]:
    """'halfcores' (preferred, fastest at 1 thread: 20 ms) and 'other' (12 ms at 2 threads,
    slower than 'halfcores' at 1 thread), on a 2-CPU device."""
    made = {
        "halfcores": _fake_backend("halfcores", {1: 0.020, 2: 0.025}),
        "other": _fake_backend("other", {1: 0.030, 2: 0.012}),
    }
    for name, cls in made.items():
        monkeypatch.setitem(BACKENDS._loaded, name, cls)
    monkeypatch.setattr(BACKENDS, "names", lambda: sorted(made))
    monkeypatch.setitem(PREFERRED, "gguf", ("halfcores",))
    monkeypatch.setattr(time, "perf_counter", CLOCK)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.5, 0.5, 0.5))  # a quiet machine
    return made


def test_without_measurements_the_cheap_backends_are_timed_once(
    fakes: dict[str, type[Backend]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert pick_backend(SOURCE, None, LoadOptions()) == "other"  # each at its best threads
    err = capsys.readouterr().err
    assert "edgespec: other decodes tiny fastest" in err and "2 threads" in err
    assert len(err.strip().splitlines()) == 1
    loads = {n: c.loads for n, c in fakes.items()}  # type: ignore[attr-defined]
    assert pick_backend(SOURCE, None, LoadOptions()) == "other"  # cached: nothing reloaded
    assert {n: c.loads for n, c in fakes.items()} == loads  # type: ignore[attr-defined]
    assert capsys.readouterr().err == ""
    # with one thread asked for, the preferred backend is the faster one
    assert pick_backend(SOURCE, None, LoadOptions(n_threads=1, progress=False)) == "halfcores"


def test_backends_that_are_slow_to_load_are_not_timed(
    fakes: dict[str, type[Backend]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Nothing is compared; the note that ``load`` prints once the chosen backend has loaded
    names the backend left out and the command that measures it (a fresh machine otherwise
    kept llama.cpp without a word, where tvm decodes SmolLM2 2.3x faster once measured)."""
    monkeypatch.setattr(fakes["other"], "cheap_to_load", classmethod(lambda *a: False))
    assert pick_backend(SOURCE, None, LoadOptions()) == "halfcores"  # nothing compared
    assert fakes["other"].loads == 0  # type: ignore[attr-defined]
    assert capsys.readouterr().err == ""  # nothing before the model has loaded
    note = untimed_note(SOURCE, LoadOptions())
    assert note == (
        "edgespec: not timed: other (a first load compiles or converts the model); "
        "`edgespec calibrate -m tiny --backend other` measures it once, and later runs "
        "choose among the measured"
    )
    # once "other" is measured (a --backend run stores its thread probe), nothing to say
    key = threads.key_for(SOURCE, "other", LoadOptions())
    cost_curves.save_threads(key, {"one_token_s": {"2": 0.030}, "best": 2})
    assert untimed_note(SOURCE, LoadOptions()) is None
    cost_curves.save_threads(key, {})
    # with a third backend that is cheap, the choice's own line carries the note (and a
    # reference backend, slow to load, is never suggested: it never wins on speed)
    third = _fake_backend("third", {1: 0.040, 2: 0.050})
    ref = _fake_backend("ref", {1: 0.500, 2: 0.400})
    monkeypatch.setattr(ref, "reference", True)
    monkeypatch.setattr(ref, "cheap_to_load", classmethod(lambda *a: False))
    monkeypatch.setitem(BACKENDS._loaded, "third", third)
    monkeypatch.setitem(BACKENDS._loaded, "ref", ref)
    monkeypatch.setattr(BACKENDS, "names", lambda: sorted([*fakes, "third", "ref"]))
    assert pick_backend(SOURCE, None, LoadOptions()) == "halfcores"
    err = capsys.readouterr().err
    assert "halfcores decodes tiny fastest" in err and "; not timed: other (" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("stored_s", "want"), [(0.012, "other"), (0.030, "halfcores")])
def test_a_stored_measurement_of_a_slow_to_load_backend_is_compared(
    fakes: dict[str, type[Backend]], monkeypatch: pytest.MonkeyPatch, stored_s: float, want: str
) -> None:
    """A backend that is slow to load but was measured before (a ``--backend tvm`` run stores
    its thread probe) is set against the cheap ones, which are timed; it used to count only
    once every candidate had a measurement, so a fresh machine kept the preferred backend
    after tvm had been measured faster."""
    monkeypatch.setattr(fakes["other"], "cheap_to_load", classmethod(lambda *a: False))
    key = threads.key_for(SOURCE, "other", LoadOptions())
    cost_curves.save_threads(key, {"one_token_s": {"2": stored_s}, "best": 2})
    assert pick_backend(SOURCE, None, LoadOptions(progress=False)) == want
    assert fakes["other"].loads == 0  # type: ignore[attr-defined]
    assert fakes["halfcores"].loads == 1  # type: ignore[attr-defined]


def test_bundle_artifacts_take_their_digest_from_the_manifest(tmp_path: Path) -> None:
    """A bundle's checksums give the same digest as hashing the files, without hashing."""
    from edgespec.bundle import _source
    from edgespec.fileutil import sha256_file
    from edgespec.sources import content_digest

    gguf = tmp_path / "target" / "gguf-q8_0" / "model.gguf"
    onnx = tmp_path / "target" / "onnx-int4"
    gguf.parent.mkdir(parents=True)
    (onnx / "sub").mkdir(parents=True)
    gguf.write_bytes(b"GGUF weights")
    for rel, body in (("model.onnx", b"graph"), ("sub/model.onnx.data", b"tensors")):
        (onnx / rel).write_bytes(body)

    def art(path: Path, kind: str) -> dict[str, object]:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        entries = [
            {"path": f.relative_to(tmp_path).as_posix(), "sha256": sha256_file(f)} for f in files
        ]
        return {
            "source_kind": kind,
            "path": path.relative_to(tmp_path).as_posix(),
            "files": entries,
        }

    sources = {
        p: _source(tmp_path, "target", art(p, k), "b") for p, k in ((gguf, "gguf"), (onnx, "onnx"))
    }
    assert not (tmp_path / "digests.json").exists()  # $EDGESPEC_HOME: nothing was hashed
    for path, source in sources.items():
        assert source.digest() == content_digest(path)  # which does hash, and caches
    assert (tmp_path / "digests.json").exists()


def test_on_a_busy_machine_the_probe_still_decides(
    fakes: dict[str, type[Backend]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    assert pick_backend(SOURCE, None, LoadOptions(progress=False)) == "other"
    assert cost_curves.load_threads(threads.key_for(SOURCE, "other", LoadOptions())) is None


def test_a_cpu_measurement_says_nothing_of_another_device() -> None:
    digest = SOURCE.digest()
    _store("llamacpp", 0.02)
    _store("onnx", 0.01)
    assert cost_curves.fastest_backend(digest, ["llamacpp", "onnx"], None) == ("onnx", 0.01)
    assert cost_curves.fastest_backend(digest, ["llamacpp", "onnx"], None, device="npu") is None
    for backend, one in (("llamacpp", 0.005), ("onnx", 0.03)):
        key = cost_curves.curve_key(backend, digest, None, device="npu")
        cost_curves.save_curve(key, {"verify": {"1": one}, "backend": backend})
    assert cost_curves.fastest_backend(digest, ["llamacpp", "onnx"], None, device="npu") == (
        "llamacpp",
        0.005,
    )
    # CPU keys are unchanged (curves stored before the device was part of the key still count)
    assert cost_curves.curve_key("onnx", digest, 2) == f"onnx|{digest[:16]}|threads=2"
    assert cost_curves.threads_key("onnx", digest, device="npu").endswith("|device=npu")


@pytest.mark.parametrize("backend", ["llamacpp", "numpy"])
def test_weights_for_a_backend_without_them_is_one_line(backend: str, tmp_path: Path) -> None:
    """--weights used to be ignored in silence by the backends that run the file as it is."""
    from edgespec.bench.runner import Bench, BenchOptions
    from edgespec.errors import EdgespecError

    assert pick_backend(SOURCE, backend, LoadOptions()) == backend
    with pytest.raises(EdgespecError, match=f"backend '{backend}' takes no --weights"):
        pick_backend(SOURCE, backend, LoadOptions(weights="fp32"))
    for able in ("onnx", "tvm"):
        assert pick_backend(SOURCE, able, LoadOptions(weights="fp32")) == able
    opts = BenchOptions(out=tmp_path, backends=["tvm", backend], weights="gguf-q8act")
    with pytest.raises(EdgespecError, match="drop --weights gguf-q8act or use --backend"):
        Bench(opts)  # before any backend runs
