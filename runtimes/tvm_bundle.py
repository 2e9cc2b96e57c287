"""A compiled TVM library shipped inside a bundle (``edgespec export --format tvm``).

A tvm artifact is a folder::

    target/tvm-fp32/model.gguf     the weights (the GGUF the backend loads; the tokenizer)
    target/tvm-fp32/lib.so         the library compiled for the exporting device's llvm target
    target/tvm-fp32/tvm.json       what the library is (see :func:`describe`)
    target/tvm-fp32/records/*.json MetaSchedule records of this model's shapes, if any

Every file is pinned by sha256 in ``edgespec.json`` like any artifact's. At load
(:func:`bundled_library`, called by :meth:`~edgespec.runtimes.tvm_backend.TvmBackend.load`)
the library is used when its TVM version, target string (with ``mcpu``), graph shapes and
graph code match what this device would compile; otherwise one warning line says why and the
backend compiles here (untuned schedules). A library whose sha256 differs from ``tvm.json``
is one ``ModelLoadError`` line (the CLI exits 2).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from edgespec.errors import ModelLoadError

#: the description of the library, beside it
META = "tvm.json"
#: the library's file name
LIB = "lib.so"
#: tuning records travel in this subfolder
RECORDS = "records"
#: bump when :data:`META`'s layout changes
META_FORMAT = 1
#: folders already warned about in this process (one warning per bundle, not per load)
_WARNED: set[Path] = set()


def graph_code_digest() -> str:
    """sha256 of the graph code (tvm_graph.py and the kernels it calls, kernels/qlinear.py,
    qlinear_q8.py, qlinear_q8k.py, expf.py): a library from other graph code is stale."""
    from edgespec.kernels import expf, qlinear, qlinear_q8, qlinear_q8k
    from edgespec.runtimes import tvm_graph

    h = hashlib.sha256()
    for mod in (tvm_graph, qlinear, qlinear_q8, qlinear_q8k, expf):
        h.update(Path(str(mod.__file__)).read_bytes())
    return h.hexdigest()


def _here(spec: Any, target: Any) -> dict[str, str]:
    """The facts a library must share with this device to be loaded instead of compiled."""
    import tvm

    return {
        "tvm_version": str(tvm.__version__),
        "target": str(target),
        "graph": repr(spec),
        "graph_code": graph_code_digest(),
    }


def describe(spec: Any, arch: str, target: Any, lib: Path, model_digest: str) -> dict[str, Any]:
    """The ``tvm.json`` of ``lib``: TVM version, target, device, architecture, digests."""
    from edgespec.fileutil import sha256_file
    from edgespec.speculative.cost_curves import device_description, device_fingerprint

    return {
        "format": META_FORMAT,
        **_here(spec, target),
        "device": device_fingerprint(),
        "device_description": device_description(),
        "architecture": arch,
        "model_digest": model_digest,
        "library": lib.name,
        "sha256": sha256_file(lib),
        "size": lib.stat().st_size,
    }


def record_keys_match(key: str, spec: Any) -> bool:
    """Whether a tuning record's key names a matrix shape of ``spec`` (``-n{N}-k{K}``)."""
    shapes = {s for s in spec.weight_shapes().values() if len(s) == 2}
    return any(f"-n{n}-k{k}" in key for k, n in shapes)


def copy_records(spec: Any, dest: Path) -> list[str]:
    """Copy this device's tuning records of ``spec``'s shapes into ``dest``; their names."""
    from edgespec.kernels.tuning import records_dir

    names = []
    src = records_dir()
    for path in sorted(src.glob("*.json")) if src.is_dir() else []:
        if record_keys_match(path.stem, spec):
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / path.name)
            names.append(path.name)
    return names


def read_meta(folder: Path) -> dict[str, Any] | None:
    """The ``tvm.json`` of an artifact folder, None when there is none.

    Raises:
        ModelLoadError: the file exists but is not a JSON object (one line).
    """
    path = folder / META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
            raise ValueError(f"format {meta.get('format') if isinstance(meta, dict) else None}")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"'{path}' is unreadable ({exc}); re-export the bundle") from None
    return meta


def bundled_library(model_path: Path, spec: Any, arch: str, target: Any) -> Any | None:
    """The runtime module shipped beside ``model_path``, or None to compile here.

    None, silently, when the folder has no :data:`META`. None after one warning line when the
    library was built for another target, TVM version or graph.

    Raises:
        ModelLoadError: the library is missing or its sha256 differs from :data:`META`'s.
    """
    from edgespec.fileutil import sha256_file
    from edgespec.kernels.tuning import warn

    folder = Path(model_path) if Path(model_path).is_dir() else Path(model_path).parent
    meta = read_meta(folder)
    if meta is None:
        return None
    lib = folder / str(meta.get("library", LIB))
    if not lib.is_file() or sha256_file(lib) != meta.get("sha256"):
        raise ModelLoadError(
            f"the TVM library '{lib}' is missing or its sha256 differs from {META}; "
            "the bundle is corrupt: re-export it"
        )
    here = _here(spec, target)
    shown = ("tvm_version", "target")  # the graph's facts are long: named, not printed
    diff = [
        f"{k} {meta.get(k)!r}, here {v!r}" if k in shown else f"other {k}"
        for k, v in here.items()
        if meta.get(k) != v
    ]
    if diff:
        if folder not in _WARNED:
            _WARNED.add(folder)
            what = "; ".join(diff)
            warn(
                f"the bundle's TVM library {lib} was built for another device or version "
                f"({what}); compiling here instead, with untuned schedules"
            )
        return None
    import tvm

    try:
        return tvm.runtime.load_module(str(lib))
    except Exception as exc:  # TVM raises its own error types
        raise ModelLoadError(
            f"TVM cannot load the bundle's library '{lib}' ({type(exc).__name__}); "
            "re-export the bundle on this device"
        ) from None
