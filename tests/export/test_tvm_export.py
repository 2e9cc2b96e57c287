"""``export --format tvm``: the compiled library in the bundle, loaded instead of compiling.

A tiny random llama (tests' builder) compiles in about 10 s here, so the module exports one
bundle and copies it for the tampering tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgespec.errors import ChecksumError, EdgespecError, ModelLoadError
from edgespec.fileutil import sha256_file
from edgespec.testing import add_byte_tokenizer

pytestmark = pytest.mark.backend
pytest.importorskip("tvm", reason="export --format tvm needs apache-tvm (edgespec[tvm])")
pytest.importorskip("transformers", reason="the export's verification runs HF transformers")

from edgespec.runtimes import tvm_backend, tvm_bundle  # noqa: E402

PROMPT, N_NEW = [1, 17, 99, 4, 250, 33], 12
ART = Path("target/tvm-fp32")


@pytest.fixture(scope="module")
def tiny_tok_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-llama-tok") / "m"
    shutil.copytree(tiny_llama_dir, out)
    add_byte_tokenizer(out)
    return out


@pytest.fixture(scope="module")
def bundle(tiny_tok_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgespec.export.pipeline import ExportOptions, run_export

    out = tmp_path_factory.mktemp("bundles") / "tvm"
    run_export(ExportOptions(target=str(tiny_tok_dir), out=str(out), formats=("tvm",)))
    return out


def _greedy(model: Any) -> list[int]:
    model.truncate(0)
    logits = model.forward(PROMPT)
    out: list[int] = []
    for _ in range(N_NEW):
        out.append(int(np.argmax(logits[-1])))
        logits = model.forward([out[-1]])
    return out


@pytest.fixture(scope="module")
def want(tiny_tok_dir: Path) -> list[int]:
    """Greedy tokens of the tvm backend compiling the source itself (HF folder)."""
    from edgespec.runtimes.base import LoadOptions, ModelSource

    src = ModelSource("hf", tiny_tok_dir, "tiny")
    return _greedy(tvm_backend.TvmBackend.load(src, LoadOptions(n_ctx=64, progress=False)))


def _copy(bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "b"
    shutil.copytree(bundle, out)
    return out


def _repin(root: Path, rel: Path) -> None:
    """Rewrite ``rel``'s sha256 and size in the manifest, as a bundle made elsewhere has."""
    manifest = json.loads((root / "edgespec.json").read_text())
    for art in manifest["roles"]["target"]["artifacts"]:
        for f in art["files"]:
            if f["path"] == rel.as_posix():
                f["sha256"], f["size"] = sha256_file(root / rel), (root / rel).stat().st_size
    (root / "edgespec.json").write_text(json.dumps(manifest))


def _no_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*a: Any, **k: Any) -> Any:
        raise AssertionError("the tvm backend compiled (or used its cache) instead of the bundle")

    monkeypatch.setattr(tvm_backend, "compile_library", fail)
    monkeypatch.setattr(tvm_backend, "load_library", fail)


def test_manifest_and_files(bundle: Path) -> None:
    import tvm

    from edgespec.bundle import read_manifest, verify

    m = read_manifest(bundle)
    (art,) = m["roles"]["target"]["artifacts"]
    assert (art["format"], art["quantization"], art["backend"]) == ("tvm", "fp32", "tvm")
    pinned = {f["path"]: f for f in art["files"]}
    assert set(pinned) == {f"{ART}/{n}" for n in ("model.gguf", "lib.so", "tvm.json")}
    for rel, f in pinned.items():
        assert f["sha256"] == sha256_file(bundle / rel) and f["size"] > 0
    meta = json.loads((bundle / ART / "tvm.json").read_text())
    assert meta["sha256"] == sha256_file(bundle / ART / "lib.so")
    assert meta["model_digest"] == sha256_file(bundle / ART / "model.gguf")
    assert meta["tvm_version"] == tvm.__version__ and meta["architecture"] == "llama"
    target = tvm_backend.get_device("cpu").tvm_target(None)
    assert meta["target"] == str(target) and '"mcpu"' in meta["target"]
    assert art["tvm"]["target"] == meta["target"] and meta["records"] == []
    assert art["verification"]["greedy_agreement"] == 1.0
    assert verify(bundle) == len(pinned) + len(m["tokenizer"]["files"])


def test_records_of_the_models_shapes_travel(monkeypatch, tmp_path: Path) -> None:
    from edgespec.runtimes.tvm_graph import GraphSpec

    spec = GraphSpec(3, 64, 4, 2, 16, 128, 256, 1e-6, 0.25, False)
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path / "home"))
    from edgespec.kernels.tuning import records_dir

    records_dir().mkdir(parents=True)
    for key in ("qmatmul-Q8_0-m1-n128-k64", "qmatmul-Q8_0-m1-n64-k128", "qmatmul-Q8_0-m1-n65-k64"):
        (records_dir() / f"{key}.json").write_text("{}")
    got = tvm_bundle.copy_records(spec, tmp_path / "records")
    assert got == ["qmatmul-Q8_0-m1-n128-k64.json", "qmatmul-Q8_0-m1-n64-k128.json"]
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == got


def test_load_uses_the_bundled_library(bundle: Path, want: list[int], monkeypatch) -> None:
    import edgespec

    _no_compile(monkeypatch)
    with edgespec.load(str(bundle), backend="tvm", n_ctx=64, progress=False) as rt:
        assert rt.backend == "tvm"
        assert _greedy(rt.target) == want


@pytest.mark.parametrize("field", ["target", "tvm_version"])
def test_foreign_library_warns_once_and_compiles(
    bundle: Path, want: list[int], field: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    import edgespec

    root = _copy(bundle, tmp_path)
    meta_path = root / ART / "tvm.json"
    meta = json.loads(meta_path.read_text())
    meta[field] = {"target": '{"kind":"llvm","mcpu":"cortex-a76"}', "tvm_version": "0.19.0"}[field]
    meta_path.write_text(json.dumps(meta))
    _repin(root, ART / "tvm.json")
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path / "home"))  # an empty compile cache
    compiled = []
    real = tvm_backend.compile_library
    monkeypatch.setattr(tvm_backend, "compile_library", lambda *a: compiled.append(1) or real(*a))
    for _ in range(2):
        with edgespec.load(str(root), backend="tvm", n_ctx=64, progress=False) as rt:
            assert _greedy(rt.target) == want
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and field in warnings[0] and "untuned" in warnings[0]
    assert compiled == [1]  # compiled here once, then from this device's cache


def test_flipped_byte_in_library(bundle: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import edgespec
    from edgespec import cli
    from edgespec.runtimes.base import LoadOptions, ModelSource

    root = _copy(bundle, tmp_path)
    lib = root / ART / "lib.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("edgespec.export.cli",))
    assert cli.main(["bundle", "verify", str(root), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{ART}/lib.so" in err
    _no_compile(monkeypatch)
    with pytest.raises(ChecksumError, match="lib.so"):
        edgespec.load(str(root), backend="tvm", progress=False)
    # the artifact named by its own path skips the bundle's check; the library's own catches it
    src = ModelSource("gguf", root / ART / "model.gguf", "tiny")
    with pytest.raises(ModelLoadError, match="sha256") as e:
        tvm_backend.TvmBackend.load(src, LoadOptions(n_ctx=64, progress=False))
    assert "\n" not in str(e.value) and isinstance(e.value, EdgespecError)
