"""``edgespec sparsify``: fit training-free neuron sparsity on calibration text (lossy).

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


def add_commands(sub: Any) -> None:
    """Add ``sparsify`` to the ``edgespec`` command."""
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
