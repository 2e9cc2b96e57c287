"""``edgespec train-compressor``: train the memory projector for a (compressor, target) pair
and write it into a bundle or a folder. The work is in :func:`train_compressor`; the command
only parses. Keep the top level light: the CLI imports this module to add the command."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgespec.errors import EdgespecError

if TYPE_CHECKING:
    import argparse

    from edgespec.compress.dolphin.memory import Projector
    from edgespec.compress.dolphin.train import TrainConfig

MANIFEST = "edgespec.json"


def _check_out(out: Path, resume: bool) -> None:
    """``out`` is a bundle, a new or empty folder, or one of our earlier runs."""
    from edgespec.compress.dolphin.memory import PROJECTOR_FILE
    from edgespec.compress.dolphin.train import CHECKPOINT, WORK_DIR

    ckpt = out / WORK_DIR / CHECKPOINT
    if ckpt.is_file() and not resume:
        raise EdgespecError(
            f"'{ckpt}' exists: pass --resume to continue it, or delete {out / WORK_DIR}"
        )
    if (out / MANIFEST).is_file() or not out.exists():
        return
    ours = {WORK_DIR, PROJECTOR_FILE}
    if not out.is_dir() or any(p.name not in ours for p in out.iterdir()):
        raise EdgespecError(
            f"--out '{out}' exists and is not an edgespec bundle; pass a new folder or a bundle"
        )


def write_projector(out: Path, projector: Projector) -> Path:
    """Write the projector into ``out``: a bundle's ``compressor/`` (and its manifest's
    compressor role), else ``out/projector.npz``. Returns the file."""
    from edgespec.compress.dolphin.memory import PROJECTOR_FILE
    from edgespec.fileutil import atomic_path, sha256_file

    if not (out / MANIFEST).is_file():
        path = out / PROJECTOR_FILE
        projector.save(path)
        return path
    path = out / "compressor" / PROJECTOR_FILE
    projector.save(path)
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    role = manifest.setdefault("roles", {}).setdefault("compressor", {})
    meta = projector.meta
    role["projector"] = {
        "path": path.relative_to(out).as_posix(),
        "sha256": sha256_file(path),
        "size": path.stat().st_size,
        "memory_slots": meta["memory_slots"],
        "compressor": meta["compressor"],
        "target": meta["target"],
        "steps": meta["steps"],
        "final_loss": meta["final_loss"],
        "lossy": True,
    }
    with atomic_path(out / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path


def train_compressor(
    target: str,
    compressor: str | None,
    out: str | Path,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    n_threads: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate examples, compute the compressor's features, train, write the projector.

    Returns:
        ``{"projector": path, "first_loss", "final_loss", "steps", "memory_slots", ...}``.
    """
    import numpy as np

    from edgespec.compress.dolphin import train as tr
    from edgespec.fileutil import atomic_path
    from edgespec.runtime import load

    cfg.validate()
    out = Path(out)
    _check_out(out, resume)
    n_ctx = 16 * cfg.sentences + 512
    kw: dict[str, Any] = {"backend": "numpy", "n_ctx": n_ctx, "progress": progress}
    if n_threads:
        kw["n_threads"] = n_threads
    with load(target, **kw) as trt:
        crt = trt if compressor in (None, target) else load(compressor, **kw)
        try:
            pair = {
                "compressor": {"name": crt.source.name, "sha256": crt.source.digest()},
                "target": {"name": trt.source.name, "sha256": trt.source.digest()},
            }
            data = tr.examples_for(cfg, crt.tokenizer, trt.tokenizer)
            work = out / tr.WORK_DIR
            cache = work / f"features-{cfg.data_key(pair)}.npy"
            if cache.is_file():
                features = np.load(cache)
            else:
                features = tr.compute_features(
                    crt.target, data, cfg.memory_slots, progress=progress
                )
                with atomic_path(cache) as tmp, open(tmp, "wb") as f:
                    np.save(f, features)
            projector, losses = tr.train(
                trt.target,
                data,
                features,
                cfg,
                pair,
                work / tr.CHECKPOINT,
                resume=resume,
                n_threads=n_threads,
                progress=progress,
            )
        finally:
            if crt is not trt:
                crt.close()
    path = write_projector(out, projector)
    return {"projector": str(path), **projector.meta, "losses": losses}


def cmd_train_compressor(a: argparse.Namespace) -> int:
    from edgespec.compress.dolphin.train import TrainConfig

    cfg = TrainConfig(**{f.name: getattr(a, f.name) for f in fields(TrainConfig)})
    res = train_compressor(
        a.target,
        a.compressor,
        a.out,
        cfg,
        resume=a.resume,
        n_threads=a.threads,
        progress=not a.quiet,
    )
    if a.json:
        print(json.dumps(res))
        return 0
    first, last = res["first_loss"], res["final_loss"]
    print(
        f"projector (memory, lossy): {res['memory_slots']} slots, {res['steps']} steps on "
        f"{res['examples']} examples; loss {first:.3f} (first step) -> {last:.3f} "
        f"(mean of the last 10)\nwritten: {res['projector']}"
    )
    return 0


def add_commands(sub: Any) -> None:
    """Add ``train-compressor`` to the ``edgespec`` command."""
    from edgespec.compress.dolphin.train import TrainConfig

    c = sub.add_parser(
        "train-compressor",
        help="train the memory projector of a compressor/target pair (Dolphin; lossy)",
        description="Generate training examples locally, read their contexts with the "
        "frozen compressor, and train a small MLP that maps its pooled hidden states to N "
        "memory embeddings of the frozen target (torch, CPU; only the projector learns). "
        "Checkpoints every few steps (--resume continues); the projector goes into the "
        "bundle's compressor role or OUT/projector.npz. Use it with "
        "edgespec generate --compress memory. See docs/compression.md.",
    )
    c.add_argument("--target", required=True, help="the target model (zoo name, file, bundle)")
    c.add_argument("--compressor", default=None, help="the compressor (default: the target)")
    c.add_argument("--out", required=True, help="a bundle, or a new folder")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        c.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(getattr(defaults, f.name)),
            default=getattr(defaults, f.name),
            help=f"(default {getattr(defaults, f.name)})",
        )
    c.add_argument("--resume", action="store_true", help="continue from the checkpoint in OUT")
    c.add_argument(
        "--threads",
        "-t",
        type=int,
        default=None,
        help="threads of the compressor (BLAS) and of torch (default: their own)",
    )
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_train_compressor)
