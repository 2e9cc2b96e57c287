"""``edgespec sparsify``: fit training-free neuron sparsity on calibration text (lossy);
``edgespec tune``: MetaSchedule on a BlockFFN model's chunk-sparse FFN kernel, for this device.

Keep the top level light: the CLI imports this module to add the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgespec.errors import EdgespecError

if TYPE_CHECKING:
    import argparse

#: calibration text beyond this many tokens is not used (time grows linearly)
DEFAULT_MAX_TOKENS = 2048


def read_text(path: str | Path, flag: str) -> str:
    """The text of ``path``; one-line errors for a missing, empty or non-text file."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        msg = f"{flag} '{p}' cannot be read ({exc.strerror}); pass a text file"
        raise EdgespecError(msg) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise EdgespecError(f"{flag} '{p}' is not UTF-8 text; pass a text file") from None
    if not text.strip():
        raise EdgespecError(f"{flag} '{p}' is empty; pass a file with some text")
    if "\x00" in text:
        raise EdgespecError(f"{flag} '{p}' is binary, not text; pass a text file")
    return text


def sparsify(
    model: str | None,
    target: float,
    calibration: str | Path,
    out: str | Path,
    *,
    held: str | Path | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    method: str = "cats",
    progress: bool = True,
) -> dict[str, Any]:
    """Fit per-layer thresholds, measure quality, write them into the bundle ``out``.

    The calibration text is split in two: thresholds are fitted on the first half and
    quality is measured on the second, unless ``held`` names another file. ``method`` is a
    :data:`~edgespec.sparse.methods.METHODS` name (only ``cats`` bundles run sparse).

    Returns:
        the ``calibration.sparsity`` entry written (with the bundle path under "bundle").
    """
    from edgespec.sparse.layout import sparsity_entry, write_sparsity
    from edgespec.sparse.methods import METHODS
    from edgespec.sparse.neuron import check_target, fit_thresholds, measure_quality

    check_target(target)
    METHODS.get(method)  # an unknown name: one line listing the known ones
    out = Path(out)
    if out.exists() and not (out / "edgespec.json").is_file():
        if not out.is_dir() or any(out.iterdir()):
            raise EdgespecError(
                f"--out '{out}' exists and is not an edgespec bundle; pass a new folder or a bundle"
            )
    text = read_text(calibration, "--calibration")
    held_text = read_text(held, "--held") if held else None
    from edgespec.runtime import load

    with load(model, backend="numpy", n_ctx=512, n_threads=1, progress=progress) as rt:
        m: Any = rt.target  # a NumpyModel (backend="numpy")
        ids = rt.tokenizer.encode(text)[: 2 * max_tokens]
        if held_text is None:
            half = len(ids) // 2
            fit_ids, held_ids = ids[:half], ids[half:]
        else:
            fit_ids, held_ids = ids, rt.tokenizer.encode(held_text)[:max_tokens]
        if len(fit_ids) < 2 or len(held_ids) < 2:
            raise EdgespecError(
                f"--calibration '{calibration}' has only {len(ids)} tokens; give at least a "
                "few sentences"
            )
        th = fit_thresholds(m, fit_ids, target, method=method, progress=progress)
        q = measure_quality(m, th, held_ids, progress=progress)
        quality = {
            **q.to_dict(),
            "calibration_tokens": len(fit_ids),
            "measured_on": "held-out text" if held else "second half of the calibration text",
        }
        entry = sparsity_entry(
            th,
            n_layers=m.hp.n_layers,
            model={"name": rt.source.name, "sha256": rt.source.digest()},
            quality=quality,
        )
    write_sparsity(out, th, entry)
    return {**entry, "bundle": str(out)}


def cmd_sparsify(a: argparse.Namespace) -> int:
    res = sparsify(
        a.model,
        a.target_sparsity,
        a.calibration,
        a.out,
        held=a.held,
        max_tokens=a.max_tokens,
        method=a.method,
        progress=not a.quiet,
    )
    if a.json:
        print(json.dumps(res))
        return 0
    q = res["quality"]
    chunk = ", ".join(f"T={k}: {v:.2f}" for k, v in q["chunk_sparsity"].items())
    print(
        f"sparsify (lossy, {res['method']}): target {res['target_sparsity']:g}, measured "
        "token sparsity "
        f"{q['token_sparsity']:.3f}; chunk sparsity {chunk}\n"
        f"quality on {q['tokens']} held tokens: top-1 agreement {q['top1_agreement']:.3f}, "
        f"perplexity {q['ppl_dense']:.2f} dense -> {q['ppl_sparse']:.2f} sparse\n"
        f"bundle: {res['bundle']}"
    )
    return 0


#: the verify chunk sizes ``tune`` tunes by default (plain decoding, and k + 1 for the draft
#: lengths the controller picks most: docs/speculative.md)
TUNE_ROWS = (1, 2, 3, 4, 5, 9)


def tune(
    model: str | None,
    *,
    rows: tuple[int, ...] = TUNE_ROWS,
    trials: int = 16,
    union: float = 0.25,
    impl: str = "tvm",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """MetaSchedule on the ``sparse_ffn:<impl>`` kernel (``tvm``, or ``tvm-q8`` on Q8_0
    weights) of a BlockFFN model's FFN shape, one
    tuning per chunk size in ``rows``, at a union of ``union`` of the expert blocks (a trained
    model's chunks keep 0.19-0.33 of them: docs/sparsity.md). Each record lands in this
    device's records (:func:`edgespec.kernels.tuning.records_dir`), where the kernels the
    ``blockffn`` backend builds with ``--sparse-kernel <impl>`` find it; a record whose schedule
    was not faster than the untuned one in its own run is not used.

    Returns:
        one entry per chunk size: rows, key, union rows, untuned and tuned microseconds,
        whether the tuned schedule will be used, tuning seconds.

    Raises:
        EdgespecError: not a BlockFFN model, a trial budget below 1, a union outside
            (0, 1], a chunk size outside 1..16, an implementation MetaSchedule does not
            tune, or TVM missing (one line each).
    """
    from edgespec.kernels.sparse_ffn import BUCKETS, IMPL_QUANT, FFNShape, tune_sparse
    from edgespec.runtimes.numpy_weights import read_hf_config
    from edgespec.sources import resolve
    from edgespec.sparse.blockffn import BlockFFNConfig, is_blockffn_folder

    if model is None:
        raise EdgespecError("tune needs -m: a BlockFFN HF folder or hub id")
    if impl not in IMPL_QUANT:
        raise EdgespecError(
            f"--sparse-kernel {impl} is not tuned here; tune tunes {', '.join(IMPL_QUANT)}"
        )
    if trials < 1:
        raise EdgespecError(f"--trials must be at least 1; got {trials}")
    if not 0 < union <= 1:
        raise EdgespecError(f"--union must be in (0, 1], a fraction of the blocks; got {union}")
    bad = [m for m in rows if m not in BUCKETS]
    if bad:
        raise EdgespecError(f"--rows must lie in 1..{max(BUCKETS)}; got {bad[0]}")
    src = resolve(model, progress=progress)
    folder = Path(src.path)
    if not (folder.is_dir() and is_blockffn_folder(folder)):
        raise EdgespecError(
            f"'{src.name}' is not a BlockFFN model; tune tunes the blockffn backend's "
            "chunk-sparse FFN kernel (the tvm backend runs hand-written kernels that "
            "MetaSchedule did not beat: docs/tvm.md)"
        )
    cfg = BlockFFNConfig.from_dict(read_hf_config(folder), str(folder / "config.json"))
    size, n = cfg.expert_size, cfg.num_experts
    n_rows = max(1, round(union * n)) * size
    out = []
    for m in rows:
        shape = FFNShape(
            m, cfg.hidden_size, n * size, cfg.hidden_act, gated=False, scaled=True,
            n_rows=n_rows, quant=IMPL_QUANT[impl],
        )  # fmt: skip
        rec = tune_sparse(shape, block=size, trials=trials, progress=progress)
        out.append(
            {
                "rows": m,
                "key": shape.key,
                "union_rows": n_rows,
                "untuned_us": round(rec.untuned_us, 1),
                "tuned_us": round(rec.best_us, 1),
                "used": rec.best_us < rec.untuned_us,
                "seconds": round(rec.tuning_seconds, 1),
            }
        )
    return out


def cmd_tune(a: argparse.Namespace) -> int:
    res = tune(
        a.model,
        rows=tuple(a.rows),
        trials=a.trials,
        union=a.union,
        impl=a.sparse_kernel,
        progress=not a.quiet,
    )
    if a.json:
        print(json.dumps(res))
        return 0
    print("| chunk rows | untuned us | tuned us | used | tuning s |")
    print("|---|---|---|---|---|")
    for r in res:
        used = "yes" if r["used"] else "no (untuned was faster)"
        print(
            f"| {r['rows']} | {r['untuned_us']:.1f} | {r['tuned_us']:.1f} | {used} |"
            f" {r['seconds']:.1f} |"
        )
    return 0


def add_commands(sub: Any) -> None:
    """Add ``sparsify`` and ``tune`` to the ``edgespec`` command."""
    from edgespec.cli import add_model_arg

    c = sub.add_parser(
        "sparsify",
        help="fit training-free neuron sparsity thresholds on calibration text (lossy)",
        description="Fit per-layer thresholds (--method: on |act(gate)|, CATS style, by "
        "default) so that a target fraction of FFN neurons (or inputs) is off per token, "
        "measure teacher-forced top-1 agreement and perplexity against the dense model on "
        "held text, and write the layout, thresholds, checksums and quality into a bundle "
        "folder (lossy). Runs on the NumPy reference.",
    )
    add_model_arg(c)
    c.add_argument(
        "--target-sparsity",
        type=float,
        required=True,
        help="fraction of neurons off per token, strictly between 0 and 1 (e.g. 0.5)",
    )
    from edgespec.sparse.methods import method_names

    c.add_argument(
        "--method",
        default="cats",
        choices=method_names(),
        help="what is thresholded: cats |act(gate)| (default; the only one that runs sparse), "
        "act-up |act(gate)*up| (down's input), teal the inputs of gate/up and of down",
    )
    c.add_argument("--calibration", required=True, help="a UTF-8 text file")
    c.add_argument(
        "--held",
        default=None,
        help="held-out text for the quality measurement (default: second half of --calibration)",
    )
    c.add_argument("--out", required=True, help="a new folder, or an existing bundle")
    c.add_argument(
        "--max-tokens",
        type=int,
        default=DEFAULT_MAX_TOKENS,
        help=f"tokens used for fitting and for quality each (default {DEFAULT_MAX_TOKENS})",
    )
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    c.set_defaults(func=cmd_sparsify)

    t = sub.add_parser(
        "tune",
        help="tune a BlockFFN model's chunk-sparse FFN kernel for this device (MetaSchedule)",
        description="MetaSchedule on the sparse_ffn:tvm (or tvm-q8) kernel at the model's FFN "
        "shape, one "
        "tuning per chunk size, timed on this device; the records are stored under "
        "$EDGESPEC_HOME/tvm/<device fingerprint>/, where --backend blockffn --sparse-kernel "
        "tvm (tvm-q8) picks them up (a schedule slower than the untuned one is not used).",
    )
    add_model_arg(t, "a BlockFFN HF folder or hub id (required)")
    t.add_argument(
        "--rows",
        type=int,
        nargs="+",
        default=list(TUNE_ROWS),
        help="chunk sizes to tune (default: %(default)s)",
    )
    t.add_argument("--trials", type=int, default=16, help="candidates per chunk size")
    t.add_argument(
        "--union",
        type=float,
        default=0.25,
        help="fraction of the expert blocks a chunk's union holds while timing (default 0.25)",
    )
    t.add_argument(
        "--sparse-kernel",
        default="tvm",
        metavar="IMPL",
        help="the kernel to tune: tvm (float32 weights) or tvm-q8 (Q8_0; default tvm)",
    )
    t.add_argument("--json", action="store_true", help="print the result as JSON")
    t.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_tune)
