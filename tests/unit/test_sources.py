"""Model-spec resolution: paths, folders, hub ids (offline), clear errors."""

import pytest

from edgespec import sources
from edgespec.errors import EdgespecError, ModelLoadError, OfflineError

pytestmark = pytest.mark.unit


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        sources.resolve(tmp_path / "nope.gguf")


def test_not_gguf_file(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"xxxx")
    with pytest.raises(ModelLoadError, match="not a .gguf file"):
        sources.resolve(f)


def test_gguf_file_and_folder(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert sources.resolve(f).kind == "gguf"
    assert sources.resolve(tmp_path).path == f.resolve()


def test_hf_folder_needs_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="safetensors"):
        sources.resolve(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert sources.resolve(tmp_path).kind == "hf"


def test_unknown_name_lists_zoo():
    with pytest.raises(EdgespecError, match="known zoo names"):
        sources.resolve("not-a-model")


def test_hub_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytest.importorskip("huggingface_hub")
    with pytest.raises(OfflineError, match="cannot reach the Hugging Face hub") as e:
        sources.resolve("HuggingFaceTB/SmolLM2-135M-Instruct@main", progress=False)
    assert "\n" not in str(e.value)


def test_hub_path_uses_snapshot_download(monkeypatch, tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    seen = {}

    def fake_snapshot(repo_id, revision=None, allow_patterns=None):
        seen.update(repo_id=repo_id, revision=revision, patterns=allow_patterns)
        return str(tmp_path)

    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot)
    src = sources.resolve("org/model@v1", progress=False)
    assert src.kind == "hf" and src.path == tmp_path
    assert seen["repo_id"] == "org/model" and seen["revision"] == "v1"
    assert "*.safetensors" in seen["patterns"]
