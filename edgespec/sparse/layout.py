"""The sparsity layout in a bundle: ``calibration.sparsity`` of ``edgespec.json`` plus its file.

``edgespec sparsify --out DIR`` writes::

    DIR/edgespec.json                         format_version 1; calibration.sparsity = {
                                                method, lossy: true, target_sparsity,
                                                layout: {granularity, n_layers, n_ff},
                                                model: {name, sha256}, quality, files: [...]}
    DIR/sparsity/neuron-thresholds.json       {"thresholds": [t_0, ..., t_{L-1}]}
                                              (methods with several sites per layer:
                                              [[t_0 per site], ...], "sites": [...])

into a new folder (built under a temporary name and renamed), or into an existing bundle
(the file and the manifest each replaced atomically). Every file is listed with its sha256
and size; :func:`read_sparsity` checks them and that the layout fits the model, and
``edgespec bundle verify`` (:func:`edgespec.bundle.verify`) checks them with the bundle's
other files and the layout against the target's architecture (:func:`check_layout`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgespec.errors import ChecksumError, EdgespecError, ModelLoadError
from edgespec.sparse.neuron import NeuronThresholds

MANIFEST = "edgespec.json"
THRESHOLDS = "sparsity/neuron-thresholds.json"


def _entry(root: Path, rel: str) -> dict[str, Any]:
    from edgespec.fileutil import sha256_file

    p = root / rel
    return {"path": rel, "sha256": sha256_file(p), "size": p.stat().st_size}


def sparsity_entry(
    th: NeuronThresholds, *, n_layers: int, model: dict[str, str], quality: dict[str, Any]
) -> dict[str, Any]:
    """The ``calibration.sparsity`` manifest entry, without ``files``."""
    return {
        "method": th.ffn_method.bundle_name,
        "lossy": True,
        "target_sparsity": th.target_sparsity,
        "layout": {"granularity": "neuron", "n_layers": n_layers, "n_ff": th.n_ff},
        "model": model,
        "quality": quality,
    }


def _thresholds_body(th: NeuronThresholds) -> dict[str, Any]:
    """The thresholds file's content: one number per layer for one-site methods (the
    original format), a list per layer and the site names otherwise."""
    t = th.thresholds
    if t.shape[1] == 1:
        return {"thresholds": [float(v) for v in t[:, 0]]}
    return {
        "sites": [s.name for s in th.ffn_method.sites],
        "thresholds": [[float(v) for v in row] for row in t],
    }


def write_sparsity(out: Path, th: NeuronThresholds, entry: dict[str, Any]) -> Path:
    """Write the thresholds and the manifest entry into ``out`` (new folder or a bundle).

    Raises:
        EdgespecError: ``out`` exists and is neither an edgespec bundle nor empty.
    """
    from edgespec.fileutil import atomic_dir, atomic_path

    body = json.dumps(_thresholds_body(th), indent=1) + "\n"
    out = Path(out)
    if (out / MANIFEST).is_file():
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        with atomic_path(out / THRESHOLDS) as tmp:
            tmp.write_text(body, encoding="utf-8")
        manifest.setdefault("calibration", {})["sparsity"] = {
            **entry,
            "files": [_entry(out, THRESHOLDS)],
        }
        with atomic_path(out / MANIFEST) as tmp:
            tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EdgespecError(
            f"--out '{out}' exists and is not an edgespec bundle; pass a new folder or a bundle"
        )
    with atomic_dir(out) as tmp:
        (tmp / THRESHOLDS).parent.mkdir(parents=True)
        (tmp / THRESHOLDS).write_text(body, encoding="utf-8")
        manifest = {
            "format_version": 1,
            "roles": {},
            "calibration": {"sparsity": {**entry, "files": [_entry(tmp, THRESHOLDS)]}},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out


def read_sparsity(folder: Path, *, n_layers: int, n_ff: int) -> NeuronThresholds:
    """The thresholds of a bundle, checked against its checksums and the model's shape.

    Raises:
        ModelLoadError: no sparsity entry; ChecksumError: a changed file; EdgespecError: a
            layout for another shape of model (one line each).
    """
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        entry = manifest["calibration"]["sparsity"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelLoadError(
            f"'{folder}' holds no sparsity layout; make one with edgespec sparsify"
        ) from None
    from edgespec.fileutil import sha256_file

    for f in entry.get("files", []):
        p = folder / f["path"]
        if not p.is_file() or sha256_file(p) != f["sha256"]:
            raise ChecksumError(
                f"bundle '{folder}': {f['path']} is missing or changed; rerun edgespec sparsify"
            )
    lay = entry.get("layout", {})
    if (lay.get("n_layers"), lay.get("n_ff")) != (n_layers, n_ff):
        raise EdgespecError(
            f"bundle '{folder}': the sparsity layout is for {lay.get('n_layers')} layers x "
            f"{lay.get('n_ff')} neurons, the model has {n_layers} x {n_ff}; "
            "sparsify this model again"
        )
    from edgespec.sparse.methods import by_bundle_name

    meth = by_bundle_name(entry.get("method", "cats-gate-threshold"))
    t = json.loads((folder / THRESHOLDS).read_text(encoding="utf-8"))["thresholds"]
    arr = np.asarray(t, dtype=np.float32).reshape(len(t), -1)
    if len(t) != n_layers or arr.shape[1] != len(meth.sites):
        raise EdgespecError(
            f"bundle '{folder}': thresholds of shape {list(arr.shape)} for {n_layers} layers x "
            f"{len(meth.sites)} sites of {meth.name}; rerun edgespec sparsify"
        )
    return NeuronThresholds(arr, n_ff, entry["target_sparsity"], method=meth.name)


def check_layout(root: Path, manifest: dict[str, Any]) -> None:
    """The bundle's ``calibration.sparsity`` layout fits its target and its own file.

    Compared: the layout's ``n_layers`` and ``n_ff`` with the target role's architecture
    (``layers``, and ``intermediate_size`` where the exporter recorded one), and the number
    of thresholds in the file with ``n_layers``. A bundle without a target role (a
    ``sparsify --out`` folder) has only the file to check.

    Raises:
        EdgespecError: one line naming the mismatch and the fix.
    """
    entry = manifest.get("calibration", {}).get("sparsity") or {}
    lay = entry.get("layout") or {}
    n_layers, n_ff = lay.get("n_layers"), lay.get("n_ff")
    if not isinstance(n_layers, int) or not isinstance(n_ff, int):
        raise EdgespecError(
            f"bundle '{root}': calibration.sparsity has no layout (n_layers, n_ff); "
            "rerun edgespec sparsify"
        )
    arch = manifest.get("roles", {}).get("target", {}).get("architecture") or {}
    model = (arch.get("layers") or n_layers, arch.get("intermediate_size") or n_ff)
    if model != (n_layers, n_ff):
        raise EdgespecError(
            f"bundle '{root}': the sparsity layout is for {n_layers} layers x {n_ff} neurons, "
            f"the target has {model[0]} x {model[1]}; run edgespec sparsify on this model"
        )
    if lay.get("granularity") == "neuron" and (root / THRESHOLDS).is_file():
        try:
            t = json.loads((root / THRESHOLDS).read_text(encoding="utf-8"))["thresholds"]
        except (OSError, ValueError, KeyError, TypeError):
            t = None
        if not isinstance(t, list) or len(t) != n_layers:
            raise EdgespecError(
                f"bundle '{root}': {THRESHOLDS} does not hold {n_layers} thresholds; "
                "rerun edgespec sparsify"
            )
