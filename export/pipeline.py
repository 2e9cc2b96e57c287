"""``edgespec export``: sources -> verified artifacts -> a bundle, written atomically.

The whole bundle is built in a temporary folder beside ``out`` and renamed at the end
(:func:`edgespec.fileutil.atomic_dir`), so any failure (a bad source, a vocabulary
mismatch, a failed verification, Ctrl-C) leaves no folder behind.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from edgespec.errors import EdgespecError
from edgespec.export.base import (
    EXPORTERS,
    QUANTS,
    ArtifactOptions,
    Exporter,
    Prepared,
    format_quant,
    quant_name,
)


@dataclass(frozen=True)
class ExportOptions:
    """Everything ``edgespec export`` takes; the CLI flags mirror it one to one.

    Attributes:
        target: the target model: HF folder, hub id[@revision], .gguf file or zoo name.
        out: the bundle folder to write.
        draft: an optional draft model (same kinds), or ``layerskip:SPEC`` (first:N, ...).
        compressor: an optional context-compressor model (same kinds).
        compress_ratio: the compressor's default ``--compress`` ratio, in (0, 1], stored as
            the role's ``default_ratio`` (None: none stored; ``--compress`` then uses 0.5).
        compressor_backend: the backend the compressor scores on, stored as the role's
            ``backend`` (None: the first of ``SCORING_BACKENDS`` the formats give).
        formats: artifact formats (``onnx``, ``gguf``).
        quants: quantizations in the one vocabulary (:data:`~edgespec.export.base.QUANTS`,
            aliases such as ``f32`` or ``q8_0`` accepted); each applies to every format that
            offers it, ``FORMAT:NAME`` to one format only (empty: each format's default).
            ``ROLE:NAME`` or ``ROLE:FORMAT:NAME`` (role ``target``, ``draft`` or
            ``compressor``) applies to that role only and replaces, in each format it
            applies to, the names without a role: ``--format gguf --quant q4_k_m,draft:int4``
            writes a Q4_K_M target and a Q4_0 draft (a cheaper draft loses nothing: the
            target verifies every token).
        block_size: int4 block size for ONNX MatMulNBits.
        min_agreement: greedy agreement every artifact must reach; None: per quantization.
        verify: run each artifact against its source and record the result.
        force: replace an existing ``out``.
        dry_run: print the plan and write nothing.
        progress: progress bars and messages on stderr.
    """

    target: str
    out: str
    draft: str | None = None
    compressor: str | None = None
    compress_ratio: float | None = None
    compressor_backend: str | None = None
    formats: tuple[str, ...] = ("onnx",)
    quants: tuple[str, ...] = ()
    block_size: int = 32
    min_agreement: float | None = None
    verify: bool = True
    force: bool = False
    dry_run: bool = False
    progress: bool = True


@dataclass
class Plan:
    """Roles and the (format, quantization) pairs to write for each.

    Attributes:
        roles: {role: the model the user named}.
        artifacts: the pairs of every role that ``ROLE:`` quantizations do not name.
        role_artifacts: {role: its own pairs}, for the roles that ``ROLE:`` ones name.
        compressor_backend: the compressor role's scoring backend (None: no compressor, or
            none of the formats').
    """

    roles: dict[str, str]
    artifacts: list[tuple[str, str]] = field(default_factory=list)
    role_artifacts: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    compressor_backend: str | None = None

    def for_role(self, role: str) -> list[tuple[str, str]]:
        """The (format, quantization) pairs written for ``role``."""
        return self.role_artifacts.get(role, self.artifacts)

    def lines(self) -> list[str]:
        out = [f"{role}: {spec}" for role, spec in self.roles.items()]
        if self.compressor_backend:
            out.append(f"  compressor scores on: {self.compressor_backend}")
        if not self.role_artifacts:
            return out + [f"  artifact: {fmt} {q}" for fmt, q in self.artifacts]
        for role in self.roles:
            out += [f"  {role} artifact: {fmt} {q}" for fmt, q in self.for_role(role)]
        return out


def make_plan(o: ExportOptions) -> Plan:
    """Check the flags (formats, quantizations, output folder) before any work."""
    roles = {"target": o.target}
    if o.draft:
        roles["draft"] = o.draft
    if o.compressor:
        roles["compressor"] = o.compressor
    if o.compress_ratio is not None:
        if not o.compressor:
            raise EdgespecError("--compress-ratio needs --compressor MODEL")
        from edgespec.compress.core import CompressOptions

        CompressOptions(ratio=o.compress_ratio)  # (0, 1], else one line
    if o.compressor_backend is not None and not o.compressor:
        raise EdgespecError("--compressor-backend needs --compressor MODEL")
    if not o.formats:
        raise EdgespecError(f"pass --format; known: {', '.join(EXPORTERS.names())}")
    if o.block_size < 16 or o.block_size & (o.block_size - 1):
        raise EdgespecError(f"--block-size must be a power of two >= 16, got {o.block_size}")
    plan = Plan(roles)
    wanted = [_parse_quant(q, o.formats, roles) for q in o.quants]
    used: set[int] = set()
    general = [(i, w) for i, w in enumerate(wanted) if w[0] is None]
    for fmt in o.formats:
        mine = _format_quants(fmt, general, o.quants, used)
        if general and not mine:
            named = ",".join(o.quants[i] for i, _ in general)
            raise EdgespecError(f"none of --quant {named} applies to {fmt}; {_offers(fmt)}")
        plan.artifacts += [(fmt, q) for q in mine or [EXPORTERS.get(fmt).quants[0]]]
    for role in dict.fromkeys(w[0] for w in wanted if w[0] is not None):
        own = [(i, w) for i, w in enumerate(wanted) if w[0] == role]
        pairs: list[tuple[str, str]] = []
        for fmt in o.formats:  # a format none of the role's names applies to keeps the rest's
            mine = _format_quants(fmt, own, o.quants, used)
            rest = [p for p in plan.artifacts if p[0] == fmt]
            pairs += [(fmt, q) for q in mine] if mine else rest
        plan.role_artifacts[role] = pairs
    if o.compressor:
        from edgespec.compress.prompt import bundle_scoring_backend

        backends = [EXPORTERS.get(f).backend for f in o.formats]
        plan.compressor_backend = bundle_scoring_backend(backends, o.compressor_backend)
    unused = [q for i, q in enumerate(o.quants) if i not in used]
    if unused:
        raise EdgespecError(
            f"--quant {', '.join(unused)} applies to none of the formats {', '.join(o.formats)}"
        )
    out = Path(o.out).expanduser()
    if out.exists() and not o.force:
        raise EdgespecError(f"output folder '{out}' exists; pass --force to replace it")
    return plan


#: the roles a bundle holds, which ``--quant ROLE:NAME`` may name
ROLES = ("target", "draft", "compressor")


def _parse_quant(
    text: str, formats: tuple[str, ...], roles: dict[str, str]
) -> tuple[str | None, str | None, str]:
    """``[ROLE:][FORMAT:]NAME`` -> (the role it is limited to or None, the format it is
    limited to or None, the vocabulary's name)."""
    *scope, name = text.split(":")
    role = scope.pop(0) if scope and scope[0] in ROLES else None
    if len(scope) > 1 or (scope and scope[0] in ROLES):
        raise EdgespecError(
            f"--quant {text}: write [ROLE:][FORMAT:]NAME, e.g. draft:gguf:int4 "
            f"(roles {', '.join(ROLES)})"
        )
    only = scope[0] if scope else None
    if only is not None and only not in formats:
        raise EdgespecError(
            f"--quant {text} names format '{only}', which is not in --format {','.join(formats)}"
            + (f" (nor is it a role: {', '.join(ROLES)})" if only not in EXPORTERS else "")
        )
    if role is not None and role not in roles:
        raise EdgespecError(f"--quant {text} names the {role}, but no --{role} MODEL was given")
    return role, only, quant_name(name)


def _format_quants(
    fmt: str,
    wanted: list[tuple[int, tuple[str | None, str | None, str]]],
    texts: tuple[str, ...],
    used: set[int],
) -> list[str]:
    """``fmt``'s own names of the ``wanted`` quantizations that apply to it, in order and
    once each; marks them ``used``. A name pinned to ``fmt`` that it lacks: one line."""
    exp = EXPORTERS.get(fmt)
    mine: list[str] = []
    for i, (_, only, name) in wanted:
        own = format_quant(fmt, name, exp.quants) if only in (None, fmt) else None
        if own is not None:
            mine.append(own)
            used.add(i)
        elif only == fmt:
            raise EdgespecError(f"--quant {texts[i]}: {fmt} has no {name}; {_offers(fmt)}")
    return list(dict.fromkeys(mine))


def _offers(fmt: str) -> str:
    """'onnx takes fp32, int8, ...' in the vocabulary's names (the format's own in brackets)."""
    exp = EXPORTERS.get(fmt)
    names = [
        n if own == n else f"{n} ({own})"
        for n in QUANTS
        if (own := format_quant(fmt, n, exp.quants)) is not None
    ]
    return f"{fmt} takes {', '.join(names)}"


def _say(o: ExportOptions, msg: str) -> None:
    if o.progress:
        tqdm.write(msg, file=sys.stderr)


def _file_entries(root: Path, path: Path) -> list[dict[str, Any]]:
    from edgespec.fileutil import sha256_file

    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [
        {"path": p.relative_to(root).as_posix(), "sha256": sha256_file(p), "size": p.stat().st_size}
        for p in files
    ]


def _tokenizer(p: Prepared) -> Any:
    from edgespec.tokenizer import HFTokenizer, LlamaCppTokenizer

    if p.tokenizer_gguf is not None:
        return LlamaCppTokenizer(p.tokenizer_gguf)
    if p.tokenizer_dir is not None:
        return HFTokenizer(p.tokenizer_dir)
    return None


def _check_vocab(target: Prepared, other: Prepared, role: str, tok: Any) -> None:
    tv, ov = int(target.config["vocab_size"]), int(other.config["vocab_size"])
    if tv != ov:
        raise EdgespecError(
            f"{role} '{other.name}' has {ov} tokens but target '{target.name}' has {tv}; "
            "use a model from the same family (same tokenizer)"
        )
    other_tok = _tokenizer(other)
    if tok is not None and other_tok is not None and other_tok is not tok:
        from edgespec.vocab import check_same_vocab

        check_same_vocab(tok, other_tok, target.name, other.name)


def _architecture(p: Prepared) -> dict[str, Any]:
    c = p.config
    return {
        "arch": p.model_type,
        "layers": int(c["num_hidden_layers"]),
        "hidden_size": int(c["hidden_size"]),
        "vocab_size": int(c["vocab_size"]),
        "context_length": int(c.get("max_position_embeddings") or 0),
        # the FFN width (0: unknown); `bundle verify` checks a sparsity layout against it
        "intermediate_size": int(c.get("intermediate_size") or 0),
    }


def _write_tokenizer(root: Path, target: Prepared, tok: Any) -> dict[str, Any]:
    from edgespec.export.onnx_export import write_vocab_gguf
    from edgespec.export.prepare import TOKENIZER_FILES

    folder = root / "tokenizer"
    folder.mkdir()
    if target.tokenizer_gguf is not None:
        write_vocab_gguf(target.tokenizer_gguf, folder / "tokenizer.gguf")
    elif target.tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            if (target.tokenizer_dir / name).exists():
                shutil.copy2(target.tokenizer_dir / name, folder / name)
    return {
        "path": "tokenizer/",
        "vocab_digest": tok.vocab_digest() if tok is not None else None,
        "vocab_size": int(target.config["vocab_size"]),
        "files": _file_entries(root, folder),
    }


def run_export(o: ExportOptions) -> dict[str, Any]:
    """Export, verify and write the bundle; returns the manifest (the plan on a dry run)."""
    from edgespec import __version__
    from edgespec.export import prepare as prep
    from edgespec.export import verify as ver
    from edgespec.fileutil import atomic_dir

    plan = make_plan(o)
    if o.dry_run:
        return {"dry_run": True, "plan": plan.lines(), "out": o.out}
    out = Path(o.out).expanduser().resolve()
    t0 = time.perf_counter()
    pairs = [p for role in plan.roles for p in plan.for_role(role)]
    exporters: dict[str, Exporter] = {f: EXPORTERS.get(f)() for f, _ in pairs}
    with (
        tempfile.TemporaryDirectory(prefix=".edgespec-export-", dir=out.parent) as scratch,
        atomic_dir(out) as tmp,
    ):
        work = Path(scratch)
        _say(o, f"preparing target {o.target}")
        prepared = {"target": prep.prepare(o.target, work / "target", progress=o.progress)}
        tok = _tokenizer(prepared["target"])
        for role in ("draft", "compressor"):
            spec = plan.roles.get(role)
            if spec is None:
                continue
            _say(o, f"preparing {role} {spec}")
            if role == "draft" and spec.startswith("layerskip:"):
                p = prep.layerskip(prepared["target"], spec.partition(":")[2], work / role)
            else:
                p = prep.prepare(spec, work / role, progress=o.progress)
            if role == "draft":
                _check_vocab(prepared["target"], p, role, tok)
            prepared[role] = p
        roles: dict[str, Any] = {}
        steps = sum(len(plan.for_role(role)) for role in prepared)
        bar = tqdm(
            total=steps,
            desc="export",
            unit="artifact",
            disable=not o.progress,
            file=sys.stderr,
            leave=False,
        )
        with bar:
            for role, p in prepared.items():
                ref = ver.reference(p.hf_dir, int(p.config["vocab_size"])) if o.verify else None
                arts = []
                for fmt, quant in plan.for_role(role):
                    bar.set_postfix_str(f"{role} {fmt} {quant}")
                    exp = exporters[fmt]
                    opts = ArtifactOptions(o.block_size, o.progress, work / "scratch" / role)
                    art = exp.export(p, tmp / role / f"{fmt}-{quant}", quant, opts)
                    entry: dict[str, Any] = {
                        "format": fmt,
                        "quantization": quant,
                        "path": art.path.relative_to(tmp).as_posix(),
                        "backend": exp.backend,
                        "source_kind": exp.source_kind,
                        **art.details,
                    }
                    files = [e for f in [art.path, *art.extra] for e in _file_entries(tmp, f)]
                    entry["size"] = sum(f["size"] for f in files)
                    entry["sha256"] = _tree_digest(files)
                    entry["files"] = files
                    if ref is not None:
                        entry["verification"] = ver.verify_artifact(
                            exp.backend,
                            exp.source_kind,
                            art.path,
                            ref,
                            label=f"{role} {fmt} {quant}",
                            quant=quant,
                            min_agreement=o.min_agreement,
                        )
                    arts.append(entry)
                    bar.update(1)
                roles[role] = {
                    "source": p.source_entry,
                    "architecture": _architecture(p),
                    "artifacts": arts,
                }
                if role == "compressor" and o.compress_ratio is not None:
                    roles[role]["default_ratio"] = o.compress_ratio
                if role == "compressor" and plan.compressor_backend:
                    roles[role]["backend"] = plan.compressor_backend
        manifest = {
            "format_version": 1,
            "created_by": f"edgespec {__version__}",
            "roles": roles,
            "tokenizer": _write_tokenizer(tmp, prepared["target"], tok),
            "device_profiles": {},
            "calibration": {},
            "export_options": {k: v for k, v in asdict(o).items() if k not in ("progress",)},
            "seconds": round(time.perf_counter() - t0, 1),
        }
        (tmp / "edgespec.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists() and not o.force:  # appeared while we worked
            raise EdgespecError(f"output folder '{out}' exists; pass --force to replace it")
    return manifest


def _tree_digest(files: list[dict[str, Any]]) -> str:
    """sha256 over the sorted ``path sha256`` lines of an artifact's files."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f["path"]):
        h.update(f"{f['path']} {f['sha256']}\n".encode())
    return h.hexdigest()


def summary(manifest: dict[str, Any]) -> str:
    """The table printed at the end: one row per artifact."""
    rows = [("role", "format", "quant", "size MB", "agreement", "max |dlogit|")]
    for role, r in manifest.get("roles", {}).items():
        for a in r["artifacts"]:
            v = a.get("verification", {})
            rows.append(
                (
                    role,
                    a["format"],
                    a["quantization"],
                    f"{a['size'] / 1e6:.1f}",
                    f"{v['greedy_agreement']:.3f}" if v else "-",
                    f"{v['max_logit_diff']:.3g}" if v else "-",
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
