"""Resolve what the user typed (zoo name, path, bundle, hub id) to local files."""

from __future__ import annotations

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
        return ModelSource("gguf", zoo.pull(spec, progress=progress), spec)
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
