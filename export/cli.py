"""``edgespec export`` and ``edgespec bundle verify``: parsing only; the work is in
:mod:`edgespec.export.pipeline` and :mod:`edgespec.bundle`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def cmd_export(a: argparse.Namespace) -> int:
    from edgespec.export.pipeline import ExportOptions, run_export, summary

    o = ExportOptions(
        target=a.target,
        out=a.out,
        draft=a.draft,
        compressor=a.compressor,
        compress_ratio=a.compress_ratio,
        compressor_backend=a.compressor_backend,
        formats=_csv(a.format),
        quants=_csv(a.quant or ""),
        block_size=a.block_size,
        min_agreement=a.min_agreement,
        verify=not a.no_verify,
        force=a.force,
        dry_run=a.dry_run,
        progress=not a.quiet,
    )
    result = run_export(o)
    if a.json:
        print(json.dumps(result))
    elif result.get("dry_run"):
        print("\n".join(["plan (nothing written):", *result["plan"], f"out: {a.out}"]))
    else:
        print(summary(result))
        print(f"bundle written: {a.out} ({result['seconds']} s)")
    return 0


def cmd_bundle_verify(a: argparse.Namespace) -> int:
    from edgespec.bundle import verify

    n = verify(a.dir, progress=not a.quiet)
    print(f"ok {a.dir}: {n} files match their sha256")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``export`` and ``bundle`` to the ``edgespec`` parser."""
    from edgespec.export.base import quant_table

    e = sub.add_parser(
        "export",
        help="export models into a verified bundle (ONNX, GGUF)",
        description="Export a target (and optionally a draft and a compressor) into a bundle "
        "folder: every artifact is verified against its source, and the folder is written "
        "atomically (complete or absent).",
        epilog="--quant names, one per idea; each applies to every --format that offers it:\n\n"
        + quant_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument(
        "-m",
        "--model",
        "--target",
        dest="target",
        metavar="MODEL",
        required=True,
        help="the target model: HF folder, hub id[@revision], .gguf file or zoo name",
    )
    e.add_argument(
        "-md",
        "--draft",
        "--model-draft",
        dest="draft",
        metavar="DRAFT",
        default=None,
        help="draft model (same kinds) or layerskip:SPEC (first:N, skip:A-B, keep:...)",
    )
    e.add_argument("--compressor", default=None, help="context-compressor model (same kinds)")
    e.add_argument(
        "--compress-ratio",
        type=float,
        default=None,
        metavar="RATIO",
        help="the compressor's default --compress ratio, in (0, 1] (docs/compression.md)",
    )
    e.add_argument(
        "--compressor-backend",
        default=None,
        metavar="BACKEND",
        help="the backend the compressor scores on, recorded in the bundle (default: the "
        "first of onnx, llamacpp, numpy that an exported --format runs on)",
    )
    e.add_argument("--format", default="onnx", help="comma list: onnx, gguf, tvm (default onnx)")
    e.add_argument(
        "--quant",
        default=None,
        help="comma list of names from the table below (fp32, fp16, int8, int4, q4_k_m, "
        "gguf-exact; GGUF spellings such as f32 or q8_0 accepted); FORMAT:NAME for one "
        "format only, e.g. onnx:int4,gguf:int8; ROLE:NAME or ROLE:FORMAT:NAME (target, "
        "draft, compressor) for one role, in place of the others there, e.g. "
        "q4_k_m,draft:int4 (default: fp32 for onnx and tvm, fp16 for gguf)",
    )
    e.add_argument("--block-size", type=int, default=32, help="int4 block size (onnx)")
    e.add_argument(
        "--min-agreement",
        type=float,
        default=None,
        help="greedy agreement required (default per quantization)",
    )
    e.add_argument("--no-verify", action="store_true", help="skip verification at export")
    e.add_argument("-o", "--out", required=True, help="the bundle folder to write")
    e.add_argument("--force", action="store_true", help="replace an existing --out")
    e.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    e.add_argument("--json", action="store_true", help="print the manifest as JSON")
    e.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_export)

    b = sub.add_parser("bundle", help="bundle tools: verify")
    bsub = b.add_subparsers(dest="bundle_action", required=True)
    v = bsub.add_parser("verify", help="re-check every file's sha256 against edgespec.json")
    v.add_argument("dir")
    v.add_argument("--quiet", "-q", action="store_true")
    v.set_defaults(func=cmd_bundle_verify)


if __name__ == "__main__":  # pragma: no cover
    from edgespec.cli import main

    sys.exit(main())
