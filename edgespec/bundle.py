"""Reading edgespec bundles: the ``edgespec.json`` manifest, checksums, and artifact choice.

A bundle is a folder written by ``edgespec export``::

    edgespec.json                 the manifest (format_version, roles, tokenizer, ...)
    target/onnx-int4/model.onnx   one folder per artifact: <format>-<quantization>
    target/gguf-q8_0/model.gguf
    draft/...  compressor/...     the other roles, same layout
    tokenizer/                    tokenizer.json & co., or tokenizer.gguf (vocabulary only)

Every file an artifact or the tokenizer consists of is listed with its sha256 and size.
:func:`verify` re-checks them all; :func:`resolve_bundle` does so before handing the
runtime a :class:`~edgespec.runtimes.base.ModelSource`, so a tampered bundle never loads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgespec.errors import ChecksumError, EdgespecError, ModelLoadError
from edgespec.runtimes.base import ModelSource

MANIFEST = "edgespec.json"
FORMAT_VERSION = 1
ROLES = ("target", "draft", "compressor")
#: when the user names no backend: the first available one that the bundle holds wins
BACKEND_ORDER = ("llamacpp", "onnx", "numpy")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The parsed manifest of ``folder``; one-line errors for a missing or bad one."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"'{folder}' is not an edgespec bundle (no {MANIFEST})") from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"bundle manifest '{path}' is unreadable ({exc})") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != FORMAT_VERSION:
        raise ModelLoadError(
            f"bundle '{folder}' has format_version {version!r}; this edgespec reads "
            f"{FORMAT_VERSION}: re-export it"
        )
    return data


def file_entries(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every ``{path, sha256, size}`` the manifest pins (artifacts, tokenizer, and the
    sparsity layout of ``edgespec sparsify``)."""
    for role in manifest.get("roles", {}).values():
        for art in role.get("artifacts", []):
            yield from art.get("files", [])
    yield from manifest.get("tokenizer", {}).get("files", [])
    yield from (manifest.get("calibration") or {}).get("sparsity", {}).get("files", [])


def verify(folder: str | Path, *, progress: bool = False) -> int:
    """Re-check the size and sha256 of every pinned file; returns how many were checked.

    A sparsity layout (``calibration.sparsity``) must also fit the target's architecture
    (:func:`edgespec.sparse.layout.check_layout`).

    Raises:
        ChecksumError: one line naming the first missing, resized or altered file.
        EdgespecError: a sparsity layout for another shape of model (one line).
    """
    from edgespec.fileutil import sha256_file

    root = Path(folder)
    manifest = read_manifest(root)
    n = 0
    for entry in file_entries(manifest):
        rel = entry["path"]
        path = root / rel
        if ".." in Path(rel).parts or not path.is_file():
            raise ChecksumError(f"bundle '{root}': {rel} is missing; re-export the bundle")
        if path.stat().st_size != entry["size"]:
            raise ChecksumError(
                f"bundle '{root}': {rel} has {path.stat().st_size} bytes, the manifest says "
                f"{entry['size']}; the file was changed or truncated: re-export the bundle"
            )
        digest = sha256_file(path, progress=progress, desc=f"sha256 {path.name}")
        if digest != entry["sha256"]:
            raise ChecksumError(
                f"bundle '{root}': {rel} has sha256 {digest[:12]}…, the manifest says "
                f"{entry['sha256'][:12]}…; the file was changed: re-export the bundle"
            )
        n += 1
    if "sparsity" in (manifest.get("calibration") or {}):
        from edgespec.sparse.layout import check_layout

        check_layout(root, manifest)
    return n


def bundle_root(path: Path) -> Path | None:
    """The bundle that holds ``path`` (an artifact file or folder), or None."""
    for p in [path, *list(path.parents)[:3]]:
        if (p / MANIFEST).is_file():
            return p
    return None


def _source(root: Path, role: str, art: dict[str, Any], name: str) -> ModelSource:
    from edgespec.sources import folder_digest

    # the manifest's checksums give the content digest cost curves are keyed by, unhashed
    files = {Path(f["path"]).as_posix(): f["sha256"] for f in art.get("files", [])}
    base = Path(art["path"]).as_posix()
    if list(files) == [base]:  # a single-file artifact: the file's own sha256
        digest = files[base]
    else:
        rel = {k[len(base) + 1 :] if k.startswith(base + "/") else k: v for k, v in files.items()}
        digest = folder_digest(rel) if rel else ""
    return ModelSource(art["source_kind"], (root / art["path"]).resolve(), f"{name}:{role}", digest)


def pick(
    root: Path,
    manifest: dict[str, Any],
    role: str,
    *,
    backend: str | None = None,
    kind: str | None = None,
    name: str = "",
) -> ModelSource | None:
    """The artifact of ``role`` to load: one that ``backend`` accepts, else one of ``kind``,
    else the first whose backend is installed (in :data:`BACKEND_ORDER`)."""
    from edgespec.runtimes import BACKENDS

    arts = manifest.get("roles", {}).get(role, {}).get("artifacts", [])
    if not arts:
        return None
    name = name or str(root)
    if backend:
        accepts = BACKENDS.get(backend).accepts
        # the artifact made for this backend (onnx: the exported graph), else any it loads
        for art in [a for a in arts if a.get("backend") == backend] + arts:
            if art["source_kind"] in accepts:
                return _source(root, role, art, name)
        held = ", ".join(sorted({a["format"] for a in arts}))
        raise EdgespecError(
            f"bundle '{root}' holds {held} artifacts for the {role}; backend '{backend}' "
            f"loads {', '.join(accepts)}: pick another --backend or re-export"
        )
    if kind:
        for art in arts:
            if art["source_kind"] == kind:
                return _source(root, role, art, name)
    for b in BACKEND_ORDER:
        if b in BACKENDS and BACKENDS.get(b).available():
            for art in arts:
                if art.get("backend") == b:
                    return _source(root, role, art, name)
    return _source(root, role, arts[0], name)


def resolve_bundle(folder: Path, spec: str, *, progress: bool = False) -> ModelSource:
    """Verify the bundle's checksums, then return its target artifact."""
    manifest = read_manifest(folder)
    verify(folder, progress=progress)
    source = pick(folder, manifest, "target", name=spec)
    if source is None:
        raise ModelLoadError(f"bundle '{folder}' has no target artifacts; re-export it")
    return source


def select(source: ModelSource, backend: str | None) -> ModelSource:
    """``source`` again, or the bundle's artifact of the same role that ``backend`` loads.

    A bundle resolved without a backend gives its default artifact (llama.cpp's GGUF first);
    with ``backend`` the artifact made for that backend wins (the onnx backend gets the
    exported ONNX graph, not a GGUF it could also convert). An artifact the user named by its
    own path is kept when the backend loads it."""
    root = bundle_root(source.path)
    if root is None or not backend:
        return source
    from edgespec.runtimes import BACKENDS

    name, _, role = source.name.rpartition(":")
    manifest = read_manifest(root)
    default = pick(root, manifest, role or "target", name=name)
    if source.kind in BACKENDS.get(backend).accepts and source != default:
        return source  # the user named this artifact: keep it
    picked = pick(root, manifest, role or "target", backend=backend, name=name)
    return picked or source


def role_source(source: ModelSource, role: str) -> ModelSource | None:
    """The bundle's ``role`` artifact (same kind as ``source`` when it has one), or None
    when ``source`` does not come from a bundle or the bundle has no such role."""
    root = bundle_root(source.path)
    if root is None:
        return None
    name = source.name.rpartition(":")[0] or str(root)
    return pick(root, read_manifest(root), role, kind=source.kind, name=name)


def onnx_tokenizer(folder: Path) -> Any:
    """The tokenizer beside an exported ONNX graph: tokenizer.json, else tokenizer.gguf."""
    from edgespec.tokenizer import HFTokenizer, LlamaCppTokenizer

    folder = Path(folder)
    if (folder / "tokenizer.json").exists():
        return HFTokenizer(folder)
    if (folder / "tokenizer.gguf").exists():
        return LlamaCppTokenizer(folder / "tokenizer.gguf")
    raise ModelLoadError(
        f"'{folder}' has no tokenizer (tokenizer.json or tokenizer.gguf); "
        "export from a source that has one, or pass token ids"
    )
