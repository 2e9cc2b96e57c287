"""Turn a ``--target``/``--draft``/``--compressor`` spec into a :class:`Prepared` fp32 HF folder.

Specs: an HF folder, a hub id ``org/name[@revision]``, a ``.gguf`` file or a zoo name
(resolved by :func:`edgespec.sources.resolve`), or ``layerskip:SPEC`` for a draft derived
from the target's own layers (:func:`layerskip`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from edgespec.errors import EdgespecError, ModelLoadError
from edgespec.export.base import SUPPORTED_ARCHS, Prepared

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)
#: GGUF architecture -> HF model_type, for the architecture check before dequantizing
GGUF_ARCHS = {"llama": "llama", "qwen2": "qwen2"}


def _unsupported(arch: str, name: str) -> EdgespecError:
    return EdgespecError(
        f"'{name}' is a {arch or 'unknown'} model; export supports {', '.join(SUPPORTED_ARCHS)}"
    )


def text_config(folder: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"'{folder}' has no readable config.json ({exc})") from None
    return dict(cfg.get("text_config", cfg))


def _check_weights(folder: Path, name: str) -> None:
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"'{name}' has no *.safetensors weights")
    for f in files:
        try:
            with safe_open(str(f), framework="numpy") as h:
                keys = list(h.keys())
                if keys:
                    h.get_slice(keys[-1])[...]  # reads the last tensor: catches truncation
        except Exception as exc:
            raise ModelLoadError(
                f"'{f}' is corrupt or truncated ({type(exc).__name__}); re-download the model"
            ) from None


def _hf_source_entry(path: Path, spec: str) -> dict[str, Any]:
    parts = path.parts
    if "snapshots" in parts and not Path(spec).expanduser().exists():
        repo, _, _ = spec.partition("@")
        return {"kind": "hub", "hub_id": repo, "revision": path.name}
    return {"kind": "hf", "path": str(path)}


def prepare(spec: str, workdir: Path, *, progress: bool = True) -> Prepared:
    """Resolve ``spec`` and make its fp32 HF folder (dequantizing GGUF files into ``workdir``).

    Raises:
        EdgespecError: unsupported architecture (naming the supported ones), a corrupt or
            missing source, or an unreachable hub (one line each).
    """
    from edgespec.sources import resolve

    source = resolve(spec, progress=progress)
    if source.kind == "gguf":
        from edgespec.export.hf_onnx import _gguf_sha256
        from edgespec.gguf_file import open_gguf

        g = open_gguf(source.path)
        if g.arch not in GGUF_ARCHS:
            raise _unsupported(g.arch, spec)
        st = source.path.stat()
        digest = _gguf_sha256(source.path, st.st_size, st.st_mtime_ns, progress)
        hf_dir = workdir / "hf"
        from edgespec.export.hf_onnx import _one_line, gguf_to_hf

        try:
            gguf_to_hf(source.path, hf_dir, progress=progress)
        except EdgespecError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"could not dequantize '{spec}' ({_one_line(exc)}); the file may be corrupt"
            ) from None
        entry = {"kind": "gguf", "file": str(source.path), "sha256": digest}
        return Prepared(
            spec,
            "gguf",
            hf_dir,
            text_config(hf_dir),
            None,
            source.path,
            entry,
            gguf_path=source.path,
        )
    if source.kind != "hf":
        raise EdgespecError(f"cannot export a '{source.kind}' source; pass an HF folder or GGUF")
    path = Path(source.path)
    cfg = text_config(path)
    if cfg.get("model_type") not in SUPPORTED_ARCHS:
        raise _unsupported(str(cfg.get("model_type", "")), spec)
    _check_weights(path, spec)
    tok = path if (path / "tokenizer.json").exists() else None
    return Prepared(spec, "hf", path, cfg, tok, None, _hf_source_entry(path, spec))


def layerskip(target: Prepared, spec: str, workdir: Path) -> Prepared:
    """A draft made of a subset of ``target``'s layers (renumbered), with its embeddings,
    final norm and head: ``first:N``, ``skip:A-B`` or ``keep:A-B,C-D``
    (:func:`edgespec.speculative.layerskip.parse_layers`)."""
    from safetensors.numpy import load_file, save_file

    from edgespec.speculative.layerskip import parse_layers

    layers = parse_layers(spec or None, int(target.config["num_hidden_layers"]))
    new_index = {old: new for new, old in enumerate(layers)}
    out = workdir / "layerskip-hf"
    out.mkdir(parents=True, exist_ok=True)
    kept = {}
    for f in sorted(target.hf_dir.glob("*.safetensors")):
        for name, arr in load_file(str(f)).items():
            parts = name.split(".")
            if len(parts) > 3 and parts[0] == "model" and parts[1] == "layers":
                old = int(parts[2])
                if old not in new_index:
                    continue
                parts[2] = str(new_index[old])
            kept[".".join(parts)] = arr
    save_file(kept, str(out / "model.safetensors"), metadata={"format": "pt"})
    full = json.loads((target.hf_dir / "config.json").read_text())
    cfg = full.get("text_config", full)
    cfg["num_hidden_layers"] = len(layers)
    for key in ("layer_types", "max_window_layers"):
        if isinstance(cfg.get(key), list):
            cfg[key] = [cfg[key][i] for i in layers]
    (out / "config.json").write_text(json.dumps(full, indent=2))
    for name in TOKENIZER_FILES[1:]:
        if (target.hf_dir / name).exists() and name != "tokenizer_config.json":
            shutil.copy2(target.hf_dir / name, out / name)
    entry = {"kind": "layerskip", "of": "target", "spec": spec, "layers": layers}
    return Prepared(
        f"layerskip:{spec}",
        "hf",
        out,
        dict(cfg),
        target.tokenizer_dir,
        target.tokenizer_gguf,
        entry,
    )
