"""The context-compression flags of ``edgespec generate`` (parsing only)."""

from __future__ import annotations

import argparse

from edgespec.compress.core import CompressOptions
from edgespec.compress.dolphin.memory import MemoryOptions
from edgespec.errors import EdgespecError


def _ratio(text: str) -> float | str:
    if text == "memory":  # Dolphin memory (edgespec.compress.dolphin)
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def add_compress_args(p: argparse.ArgumentParser) -> None:
    """``--compress [RATIO]``, ``--context-budget TOKENS``, ``--compressor MODEL``,
    ``--compressor-backend BACKEND``, ``--compress-scoring MODE``, ``--keep-last TOKENS``
    and ``--question-sep TEXT``."""
    g = p.add_argument_group(
        "context compression (lossy: the compressor drops the least informative context "
        "tokens; docs/compression.md)"
    )
    g.add_argument(
        "--compress",
        nargs="?",
        const=True,
        type=_ratio,
        default=None,
        metavar="RATIO",
        help="keep this share of the context tokens, in (0, 1] (no value: the bundle's "
        "default ratio, else 0.5); 'memory': the compressor turns the context into the "
        "projector's memory embeddings (numpy backend; edgespec train-compressor)",
    )
    g.add_argument(
        "--projector",
        default=None,
        metavar="FILE",
        help="the projector of --compress memory (default: the bundle's compressor role's)",
    )
    g.add_argument(
        "--context-budget",
        type=int,
        default=None,
        metavar="TOKENS",
        help="compress the whole prompt to at most TOKENS tokens (the question stays whole)",
    )
    g.add_argument(
        "--compressor",
        default=None,
        metavar="MODEL",
        help="the compressor model (default: the bundle's compressor, else the draft, else "
        "the target)",
    )
    g.add_argument(
        "--compressor-backend",
        default=None,
        metavar="BACKEND",
        help="the backend the compressor scores on (default: the bundle's, else the "
        "installed one fastest at batched scoring: onnx with fp32 weights, then llamacpp)",
    )
    g.add_argument(
        "--compress-scoring",
        default=None,
        metavar="MODE",
        help="how the compressor scores the context: overlap (one pass; segments ranked by "
        "the question's rare tokens; default), contrastive (two passes, the question's gain), "
        "conditional (one pass, the question before the context) or plain (no question)",
    )
    g.add_argument(
        "--keep-last",
        type=int,
        default=None,
        metavar="TOKENS",
        help="the question is the prompt's last TOKENS tokens (default: the last paragraph)",
    )
    g.add_argument(
        "--question-sep",
        default=None,
        metavar="TEXT",
        help="the question is the text after the last TEXT (the marker is removed)",
    )


def compress_from_args(
    a: argparse.Namespace, default_ratio: float | None = None
) -> CompressOptions | MemoryOptions | None:
    """The compression the flags ask for, validated (call it before loading any model to
    fail early); ``--compress`` without a value takes ``default_ratio`` (the bundle's),
    else :data:`~edgespec.compress.prompt.DEFAULT_RATIO`. None: no compression."""
    from edgespec.compress.prompt import DEFAULT_RATIO

    compress, budget = getattr(a, "compress", None), getattr(a, "context_budget", None)
    keep_last, separator = getattr(a, "keep_last", None), getattr(a, "question_sep", None)
    scoring = getattr(a, "compress_scoring", None)
    if compress is None and budget is None:
        named = (
            ("--keep-last", keep_last),
            ("--question-sep", separator),
            ("--compressor", getattr(a, "compressor", None)),
            ("--compressor-backend", getattr(a, "compressor_backend", None)),
            ("--compress-scoring", scoring),
            ("--projector", getattr(a, "projector", None)),
        )
        given = [flag for flag, value in named if value is not None]
        if given:
            raise EdgespecError(
                f"{', '.join(given)} applies only with --compress or --context-budget"
            )
        return None
    if compress is not None and budget is not None:
        raise EdgespecError("pass --compress or --context-budget, not both")
    projector = getattr(a, "projector", None)
    if (cbackend := getattr(a, "compressor_backend", None)) is not None:
        from edgespec.runtimes import BACKENDS

        BACKENDS.get(cbackend)  # a typo fails before any model loads
    if compress == "memory":
        if keep_last is not None or scoring is not None:
            raise EdgespecError(
                "--compress memory takes --question-sep, not --keep-last or --compress-scoring"
            )
        return MemoryOptions(projector=projector, separator=separator)
    if projector is not None:
        raise EdgespecError("--projector applies only with --compress memory")
    if compress is True:
        compress = default_ratio or DEFAULT_RATIO
    return CompressOptions(
        ratio=compress,
        budget=budget,
        keep_last=keep_last,
        separator=separator,
        scoring=scoring or CompressOptions.scoring,
    )


def parse_compress_spec(spec: str) -> CompressOptions:
    """A bench ``--compress`` configuration: ``RATIO`` or ``budget=TOKENS``, optionally
    followed by ``:scoring=MODE`` (e.g. ``0.25:scoring=contrastive``), validated.

    Raises:
        EdgespecError: one line naming the bad part and the accepted forms.
    """
    head, *rest = spec.strip().split(":")
    key, _, value = head.rpartition("=")
    scoring = CompressOptions.scoring
    for part in rest:
        k, eq, v = part.partition("=")
        if k != "scoring" or not eq:
            raise EdgespecError(
                f"--compress {spec!r}: after the ratio or budget only ':scoring=MODE' is "
                "accepted, e.g. 0.25:scoring=contrastive"
            )
        scoring = v
    try:
        if key == "budget":
            return CompressOptions(budget=int(value), scoring=scoring)
        if not key:
            return CompressOptions(ratio=float(value), scoring=scoring)
    except ValueError:
        pass
    raise EdgespecError(f"--compress {spec!r}: pass a ratio in (0, 1] or budget=TOKENS")
