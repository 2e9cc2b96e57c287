"""Resolve what the user typed (zoo name, path, bundle, hub id) to local files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from pathlib import Path

from edgespec import zoo
from edgespec.errors import EdgespecError, ModelLoadError, OfflineError, missing_extra
from edgespec.runtimes.base import ModelSource

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
HF_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.txt"]


def resolve(spec: str | Path | None, *, progress: bool = True) -> ModelSource:
    """Turn a model spec into a :class:`ModelSource`.

    Accepted, in this order: a zoo name (pulled on first use), an existing ``.gguf`` file,
    an HF folder (``config.json``), an edgespec bundle folder (``edgespec.json``), or a hub
    id ``org/name[@revision]`` (downloaded with ``huggingface_hub``; needs network).
    """
    spec = str(spec) if spec is not None else zoo.DEFAULT_MODEL
    if not spec.strip():
        raise EdgespecError("the model name is empty; pass a zoo name, a path or a hub id")
    if spec in zoo.ZOO:
        return ModelSource("gguf", zoo.pull(spec, progress=progress), spec, zoo.ZOO[spec].sha256)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"'{path}' is not a .gguf file; pass a GGUF file or a folder")
        return ModelSource("gguf", path.resolve(), spec)
    if path.is_dir():
        return _resolve_dir(path.resolve(), spec)
    if HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return ModelSource("hf", hub_download(spec, progress=progress), spec)
    if path.suffix.lower() == ".gguf" or "/" in spec or spec.startswith("."):
        raise ModelLoadError(f"model file '{path}' does not exist; check the path")
    zoo.get_entry(spec)  # raises the "unknown model ... known zoo names" error
    raise AssertionError("unreachable")


def _resolve_dir(path: Path, spec: str) -> ModelSource:
    if (path / "edgespec.json").exists():
        from edgespec.bundle import resolve_bundle

        return resolve_bundle(path, spec)
    if (path / "config.json").exists():
        if not any(path.glob("*.safetensors")):
            raise ModelLoadError(f"HF folder '{path}' has no *.safetensors weights")
        return ModelSource("hf", path, spec)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource("gguf", ggufs[0], spec)
    raise ModelLoadError(
        f"'{path}' is neither an HF folder (config.json) nor holds exactly one .gguf file"
    )


def hub_download(spec: str, *, progress: bool = True) -> Path:
    """Download an HF model (config, safetensors, tokenizer) with ``huggingface_hub``.

    ``spec`` is ``org/name`` or ``org/name@revision``. Files are cached by huggingface_hub
    (``$HF_HOME``); an unreachable hub raises :class:`OfflineError` with the fix.
    """
    repo_id, _, revision = spec.partition("@")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    except ImportError:
        raise missing_extra("huggingface_hub", "export") from None
    (enable_progress_bars if progress else disable_progress_bars)()
    try:
        folder = snapshot_download(repo_id, revision=revision or None, allow_patterns=HF_PATTERNS)
    except Exception as exc:  # offline, 404, auth: huggingface_hub raises many types
        kind = type(exc).__name__
        if (
            "offline" in str(exc).lower()
            or "connect" in str(exc).lower()
            or kind
            in {
                "LocalEntryNotFoundError",
                "OfflineModeIsEnabled",
                "ConnectionError",
            }
        ):
            raise OfflineError(
                f"cannot reach the Hugging Face hub to fetch '{spec}' ({kind}); "
                "connect to the internet, or pass a local path or a zoo name "
                f"({', '.join(zoo.ZOO)})"
            ) from None
        raise EdgespecError(f"could not fetch '{spec}' from the hub: {kind}: {exc}") from None
    return Path(folder)


def _digest_cache() -> Path:
    from edgespec.home import edgespec_home

    return edgespec_home() / "digests.json"


def file_digest(path: Path, *, progress: bool = True) -> str:
    """The hex sha256 of one file, hashed once per (path, size, mtime).

    Reused from the zoo's verified stamp beside the file when it matches, else from
    ``$EDGESPEC_HOME/digests.json``, else computed (a progress bar for large files) and
    stored there, so a 1 GB model is not re-hashed on every load.
    """
    from edgespec.fileutil import atomic_path, sha256_file

    path = Path(path).expanduser().resolve()
    st = path.stat()
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        zoo_stamp = json.loads(path.with_name(path.name + ".verified.json").read_text())
        if {k: zoo_stamp[k] for k in stamp} == stamp:
            return str(zoo_stamp["sha256"])
    cache_file = _digest_cache()
    cache: dict[str, dict[str, object]] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(cache_file.read_text())
        cache = loaded if isinstance(loaded, dict) else {}
    hit = cache.get(str(path))
    if isinstance(hit, dict) and {k: hit.get(k) for k in stamp} == stamp:
        return str(hit["sha256"])
    digest = sha256_file(path, progress=progress and st.st_size > 2**26, desc=f"sha256 {path.name}")
    cache[str(path)] = {**stamp, "sha256": digest}
    with contextlib.suppress(OSError), atomic_path(cache_file) as tmp:
        tmp.write_text(json.dumps(cache, indent=1))
    return digest


def folder_digest(files: dict[str, str]) -> str:
    """One digest for a multi-file model: sha256 of its sorted ``"<relative path>:<sha256>"``
    lines. ``files`` maps each file's path inside the model folder to its sha256 (the same
    formula serves a folder on disk and a bundle artifact's manifest entries)."""
    lines = "".join(f"{rel}:{files[rel]}\n" for rel in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def content_digest(path: str | Path, *, progress: bool = True) -> str:
    """The content digest of a model file or folder (see :meth:`ModelSource.digest`).

    A folder (HF, converted ONNX) combines the digests of every file in it, hidden files
    excepted (:func:`folder_digest`); each file's digest is cached as in :func:`file_digest`.
    """
    path = Path(path).expanduser().resolve()
    if path.is_file():
        return file_digest(path, progress=progress)
    if not path.is_dir():
        raise ModelLoadError(f"model '{path}' does not exist; check the path")
    files = {
        f.relative_to(path).as_posix(): file_digest(f, progress=progress)
        for f in sorted(path.rglob("*"))
        if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts)
    }
    return folder_digest(files)
