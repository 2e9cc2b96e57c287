"""``--device npu`` on the onnx backend: ONNX Runtime's NPU execution providers (QNN, NNAPI,
CoreML) when the installed onnxruntime has one, else one line; never a CPU run called NPU.

This machine's onnxruntime has no NPU provider, so the tests that build a session monkeypatch
``onnxruntime.get_available_providers`` and ``onnxruntime.InferenceSession`` (which records
the ``providers`` it is given): they check what edgespec asks ORT for, not an NPU's numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

ort = pytest.importorskip("onnxruntime")

from edgespec.cli import main  # noqa: E402
from edgespec.errors import EdgespecError, ModelLoadError  # noqa: E402
from edgespec.runtimes import BACKENDS, LoadOptions  # noqa: E402
from edgespec.runtimes import ort as ort_backend  # noqa: E402
from edgespec.runtimes.ort import (  # noqa: E402
    CPU_PROVIDER,
    NPU_PROVIDERS,
    _make_session,
    load_onnx_dir,
    npu_provider,
)

pytestmark = [pytest.mark.backend]

QNN = NPU_PROVIDERS[0]


class FakeSession:
    """Stands in for ``InferenceSession``: records its ``providers`` and keeps the ones
    named in ``FakeSession.keeps`` (what a real ORT would have started)."""

    calls: list[list[Any]] = []
    keeps: set[str] = set()

    def __init__(self, path: str, sess_options: Any = None, providers: Any = None) -> None:
        self.providers = list(providers)
        FakeSession.calls.append(self.providers)

    def get_providers(self) -> list[str]:
        names = [p if isinstance(p, str) else p[0] for p in self.providers]
        return [n for n in names if n in FakeSession.keeps]


@pytest.fixture
def fake_ort(monkeypatch: pytest.MonkeyPatch) -> type[FakeSession]:
    """ORT with every NPU provider of the table plus the CPU one, sessions faked."""
    have = [p.name for p in NPU_PROVIDERS] + [CPU_PROVIDER]
    monkeypatch.setattr(ort, "get_available_providers", lambda: have)
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    monkeypatch.setattr(FakeSession, "calls", [])
    monkeypatch.setattr(FakeSession, "keeps", set(have))
    return FakeSession


def test_onnx_lists_npu_and_no_other_backend_does() -> None:
    assert "npu" in BACKENDS.get("onnx").devices
    assert [n for n in BACKENDS.names() if "npu" in BACKENDS.get(n).devices] == ["onnx"]


def test_cli_without_npu_provider_is_one_line(
    smollm2_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    have = ort.get_available_providers()
    if any(p.name in have for p in NPU_PROVIDERS):
        pytest.skip(f"this onnxruntime has an NPU provider ({', '.join(have)})")
    argv = ["generate", "--backend", "onnx", "--device", "npu", "-m", str(smollm2_path), "hi"]
    assert main(argv) == 2
    out = capsys.readouterr().err
    assert "Traceback" not in out
    # llama.cpp may log to stderr while the tokenizer loads; edgespec says one line
    (err,) = [line for line in out.splitlines() if line.startswith("edgespec")]
    assert "no NPU execution provider" in err and f"it has {', '.join(have)}" in err
    for p in NPU_PROVIDERS:
        assert f"{p.name}: install {p.install}" in err


@pytest.mark.parametrize("first", range(len(NPU_PROVIDERS)))
def test_preference_order_is_the_tables(monkeypatch: pytest.MonkeyPatch, first: int) -> None:
    # ORT lists them in its own order (reversed here): the table's order decides
    have = [CPU_PROVIDER] + [p.name for p in reversed(NPU_PROVIDERS[first:])]
    monkeypatch.setattr(ort, "get_available_providers", lambda: have)
    assert npu_provider() is NPU_PROVIDERS[first]


def test_npu_session_gets_the_provider_then_cpu(
    fake_ort: type[FakeSession], tmp_path: Path
) -> None:
    session = _make_session(tmp_path / "model.onnx", 2, True, ort_backend._npu_providers()[1])
    want = [(QNN.name, QNN.options), CPU_PROVIDER]
    assert fake_ort.calls == [want]
    assert session.get_providers() == [QNN.name, CPU_PROVIDER]
    assert "backend_path" in QNN.options and "Htp" in QNN.options["backend_path"]


def test_load_onnx_dir_builds_the_npu_session(
    fake_ort: type[FakeSession], tmp_path: Path, tiny_llama_dir: Path
) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "config.json").write_text((tiny_llama_dir / "config.json").read_text())
    # the fake session has no graph: OnnxModel refuses it after the session is built
    with pytest.raises(AttributeError):
        load_onnx_dir(tmp_path, LoadOptions(device="npu", progress=False))
    assert fake_ort.calls == [[(QNN.name, QNN.options), CPU_PROVIDER]]
    fake_ort.calls.clear()
    with pytest.raises(AttributeError):
        load_onnx_dir(tmp_path, LoadOptions(device="cpu", progress=False))
    assert fake_ort.calls == [[CPU_PROVIDER]]


def test_a_provider_ort_drops_is_an_error_not_a_cpu_run(
    fake_ort: type[FakeSession], tmp_path: Path
) -> None:
    fake_ort.keeps = {CPU_PROVIDER}  # ORT could not start QNN (no driver) and fell back
    with pytest.raises(ModelLoadError, match=f"could not start {QNN.name}") as err:
        _make_session(tmp_path / "model.onnx", 2, True, ort_backend._npu_providers()[1])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "name", [n for n in BACKENDS.names() if "npu" not in BACKENDS.get(n).devices]
)
def test_other_backends_refuse_npu(name: str, smollm2_path: Path, tiny_llama_dir: Path) -> None:
    from edgespec.runtime import load

    source = smollm2_path if "gguf" in BACKENDS.get(name).accepts else tiny_llama_dir
    with pytest.raises(EdgespecError, match="cannot run on --device npu; use --backend onnx"):
        load(str(source), backend=name, device="npu", progress=False)


def test_without_backend_a_device_picks_a_backend_that_runs_there(tiny_llama_dir) -> None:
    """--device npu without --backend goes to the backend that lists npu (onnx), not to the
    preferred CPU backend that would then refuse it."""
    from edgespec.runtime import pick_backend
    from edgespec.runtimes.base import LoadOptions, ModelSource

    src = ModelSource("hf", tiny_llama_dir, "tiny")
    assert pick_backend(src, None, LoadOptions(device="npu")) == "onnx"
    assert pick_backend(src, None, LoadOptions(device="vulkan")) == "tvm"
    with pytest.raises(EdgespecError, match="no installed backend runs a hf model on --device tpu"):
        pick_backend(src, None, LoadOptions(device="tpu"))
