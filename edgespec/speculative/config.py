"""Speculative-decoding options: one declaration per option (:mod:`edgespec.options`) gives
validation, the JSON round trip, the command-line flags and the bench spec syntax."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edgespec.errors import EdgespecError
from edgespec.options import Options, at_least, names, option


def _k(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise EdgespecError(f"--k must be an integer >= 0 or none, got {value!r}")
    if value < 0:
        raise EdgespecError(f"--k must be >= 0, got {value}")
    return value


def _head(value: Any, name: str) -> int | None:
    return None if value is None else at_least(0)(value, name)


def _layers(value: Any, name: str) -> str | int | None:
    if value is None or isinstance(value, (str, int)) and not isinstance(value, bool):
        return value
    raise EdgespecError(f"{name} must be a layer spec (first:N, skip:A-B, keep:...), got {value!r}")


def _fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EdgespecError(f"{name} must be a number in [0, 1), got {value!r}")
    if not math.isfinite(value) or not 0 <= value < 1:
        raise EdgespecError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def _non_negative(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EdgespecError(f"{name} must be a number >= 0, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise EdgespecError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def _text_path(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str) and value:
        return value
    raise EdgespecError(f"{name} must be the path of a UTF-8 text file, got {value!r}")


def _quant(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if value in ("file", "none"):
        return "file"
    from edgespec.requant import QUANTS

    if value not in QUANTS:
        raise EdgespecError(f"{name} must be one of file, none, {', '.join(QUANTS)}; got {value!r}")
    return str(value)


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise EdgespecError(f"{name} must be true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class SpecConfig(Options):
    """How to speculate (strategies ``speculative`` and ``auto``).

    Attributes:
        proposers: proposer names the controller may choose from each step; None: the
            strategy's default (``speculative``: ngram; ``auto``: ngram, recycle and, when
            loaded, the draft model).
        k: fixed draft length; None lets the controller choose k in 0..max_k per step.
        max_k: the largest draft length (tree: node count) the controller considers.
        allow_plain: let the controller pick k = 0 (plain decoding) when it is faster.
            Always True for strategy "auto".
        ngram_min: shortest suffix the n-gram proposer matches.
        ngram_max: longest suffix the n-gram proposer tries first.
        recycle_topk: candidates per token in the recycling adjacency table.
        layerskip_layers: layer spec of the layer-skip self-draft ("first:N", "skip:A-B",
            "keep:..."; None skips the middle half).
        min_confidence: a model draft stops early when its top probability falls below this
            (adaptive draft length; 0 disables).
        probe_every: after this many steps (plain ones only, with ``probe_always`` off), try
            the proposer tried least recently once with a short draft so acceptance
            estimates stay fresh (0 disables). 12: in replays of recorded text 6-12 did
            better than 24 on both models (docs/benchmarks.md section 16).
        probe_per_prompt: each generation starts probing every ``probe_every`` steps
            again (the default); False keeps the interval that fully rejected probes doubled
            (up to 32x) across generations. Acceptance is a property of the prompt: carried
            over, the intervals grown on chat kept the draft model from being tried on code
            for whole answers, and in replays of recorded text (``benchmarks/
            controller_replay.py``, docs/benchmarks.md section 16) ``auto`` stayed plain on
            every prompt after the first few.
        probe_each: each proposer has its own probe interval, doubled by its own fully
            rejected probes and restarted by its own accepted ones, and a proposer is probed
            when it has gone that many counted steps untried (the default); False: one
            interval for all, so the n-gram lookup's failed probes on prose also spaced out
            the draft model's (docs/benchmarks.md section 12).
        probe_always: steps that speculate count toward the next probe as plain ones do
            (with a controller that chooses k), so the proposers not in use are re-tried
            while another drafts; False: only plain steps count, and a proposer chosen every
            step (recycling's k = 2 drafts) kept better ones from being tried again
            (docs/benchmarks.md section 12).
        probe_follow: a probe whose whole draft was accepted is followed by another of the
            same proposer at the next step, up to :data:`~edgespec.speculative.session.
            FOLLOW_UPS` in a row: one success moves an estimate by 15 % of its gap only, so
            a proposer that turned good (a new prompt) waited one probe interval per step
            of its re-learning.
        probe_hopeless: also probe a proposer that could not beat plain decoding even if
            every drafted token were accepted (:meth:`~edgespec.speculative.controller.
            Controller.could_win`, at the verify and drafting costs learned so far). Off by
            default: such a probe can only lose time, and a draft model's probe also pays
            its catch-up over the plain steps since it last drafted. The Qwen 1.5B with the
            0.5B draft on llama.cpp on a Zen 3 (c(3) 2.2x c(1), the draft 0.38x a token)
            ran ``auto`` at 0.89x plain decoding with these probes, though the controller
            chose plain decoding between them (docs/benchmarks.md section 33).
        probe_budget: a proposer whose probes lose time (a probe step's seconds, less a
            draft model's catch-up, less what plain decoding takes for the tokens it
            yielded; an average over its probes that start a round of them, follow-ups not
            counted) waits at least that loss
            over ``probe_budget`` times a plain step between probes, so that its probes
            cost about this fraction of plain decoding's time (0: no limit). The n-gram
            lookup and recycling cost nothing to draft but a verify of three tokens.
        probe_z: the "could it win" test of ``probe_hopeless`` takes each proposer's
            acceptance at the upper end of a Wilson interval of this many standard
            deviations around the rate its verified drafts showed (:meth:`~edgespec.
            speculative.controller.Acceptance.ceiling`), not at 1: a draft model that
            every probe shows at 0.7 where it needs 0.92 to pay stops being probed, each
            probe having cost its catch-up. Perfect acceptance before any verified draft,
            and with 0. Replayed on the Qwen pair (docs/benchmarks.md section 34) it took
            ``auto`` on llama.cpp's curves from 0.93-0.98x plain decoding to 0.99x, tvm's
            unchanged or better; 0.5 to 2 replayed within about 1 % of each other.
        probe_k: the draft length of a probe (0: :meth:`Controller.probe_length`, the
            length the proposer does best at by the controller's current estimates: short
            where verifying is steep or the proposer weak, longer where it pays; it
            replays faster than the default 2, but two real runs on tvm did not resolve a
            difference, docs/benchmarks.md section 36).
        probe_memory: the counts behind ``probe_z`` halve every this many steps (all steps,
            plain ones included), so a proposer that looked poor is probed again once what
            showed it has aged (0: nothing is kept, every proposer is tested at perfect
            acceptance, as with ``probe_z`` 0).
        cost_drift: the controller's verify cost curve is a shape times one drift factor
            that every forward updates, and drafting costs follow the same factor
            (:class:`~edgespec.speculative.controller.CostCurve`); False: each draft
            length's cost learns only from forwards of that length.
        tree: let proposers that can build token trees do so (needs a tree-capable backend).
        draft_head: the draft model (``draft`` and ``tree`` proposers) computes the logits
            of only this many of the most frequent tokens (a frequent-token head, FR-Spec;
            rounded up to 64; lossless, since the target verifies); 0: every token; None
            (the default): :func:`edgespec.draft_head.default_size` of the draft. See
            :mod:`edgespec.draft_head`.
        draft_head_corpus: a UTF-8 text file whose token counts choose the head; None: the
            Python standard library (a code corpus).
        draft_head_prompt: rows of the head (its least frequent ones) that each generation
            refills with the prompt's tokens the rest of the head lacks, so that the draft
            can copy rare prompt tokens (rounded down to 64, at most half the head; 0: none).
        draft_quant: the draft model (``draft`` and ``tree`` proposers) runs on its GGUF
            file requantized to this type (:mod:`edgespec.requant`, e.g. ``q4_0``); "file":
            the file's own types; None: the runtime's draft as loaded (``Runtime.draft``,
            which ``edgespec.load``'s ``draft_quant`` may have requantized). Lossless, since
            the target verifies.
    """

    kind = "speculative"

    proposers: tuple[str, ...] | None = option(
        None,
        "draft sources the controller chooses from (repeatable, or joined by '+'; default: "
        "ngram for speculative; ngram, recycle and --draft for auto)",
        flags=("--proposer",),
        check=names,
        many=True,
        metavar="NAME",
    )
    k: int | None = option(
        None,
        "fixed draft length (auto: the largest one considered); default: the controller "
        "chooses each step",
        flags=("--k",),
        check=_k,
    )
    max_k: int = option(8, "largest draft length the controller considers", check=at_least(1))
    allow_plain: bool = option(
        True, "the controller may choose plain decoding (k = 0)", flags=(), check=_flag
    )
    ngram_min: int = option(1, "shortest suffix the ngram proposer matches", check=at_least(1))
    ngram_max: int = option(4, "longest suffix the ngram proposer tries", check=at_least(1))
    recycle_topk: int = option(
        4, "candidates per token in the recycle proposer's table", check=at_least(1)
    )
    layerskip_layers: str | int | None = option(
        None,
        "layers of the layerskip self-draft: first:N, skip:A-B or keep:... (default: skip "
        "the middle half)",
        flags=("--layerskip",),
        check=_layers,
        metavar="LAYERS",
    )
    min_confidence: float = option(
        0.3, "a model draft stops when its top probability falls below this", check=_fraction
    )
    probe_every: int = option(
        12,
        "after this many steps (plain ones only with probe_always=false), probe the "
        "proposer tried least recently once (0: never)",
        check=at_least(0),
    )
    probe_per_prompt: bool = option(
        True,
        "each generation starts probing every probe_every steps again (false: the "
        "interval failed probes doubled carries over to later generations)",
        check=_flag,
    )
    probe_each: bool = option(
        True,
        "each proposer has its own probe interval, doubled only by its own failed probes "
        "(false: one interval for all)",
        check=_flag,
    )
    probe_always: bool = option(
        True,
        "steps that speculate count toward the next probe too, so proposers not in use are "
        "re-tried while another drafts (false: only plain steps count)",
        check=_flag,
    )
    probe_follow: bool = option(
        True,
        "a probe whose whole draft was accepted is followed by another at the next step "
        "(up to 8 in a row), so a proposer that turned good is re-learned in a few steps",
        check=_flag,
    )
    probe_hopeless: bool = option(
        False,
        "probe proposers that could not beat plain decoding even with every draft token "
        "accepted, at the costs learned so far (false: skip them)",
        check=_flag,
    )
    probe_budget: float = option(
        0.02,
        "a proposer whose probes lose time is probed at most so often that they cost this "
        "fraction of plain decoding's time (0: no limit)",
        check=_fraction,
    )
    probe_z: float = option(
        1.0,
        "probe only proposers that could beat plain decoding at the upper end of this many "
        "standard deviations' interval around the acceptance verified so far (0: at perfect "
        "acceptance)",
        check=_non_negative,
    )
    probe_k: int = option(
        2,
        "draft length of a probe (0: the length the controller would give that proposer "
        "by its current estimates, were plain decoding not a candidate)",
        check=at_least(0),
    )
    probe_memory: int = option(
        2048,
        "the acceptance counts behind probe_z halve every this many steps, so a proposer "
        "that looked poor is probed again later (0: no memory: probe_z has no effect)",
        check=at_least(0),
    )
    cost_drift: bool = option(
        True,
        "every forward rescales the whole verify cost curve and the drafting costs by the "
        "host's speed (false: each draft length learns only from its own forwards)",
        check=_flag,
    )
    tree: bool = option(
        True, "let proposers build token trees (tree-capable backends)", check=_flag
    )
    draft_head: int | None = option(
        None,
        "the draft model computes the logits of only this many most frequent tokens "
        "(rounded up to 64; 0: all; default: 32768 where the draft's backend has such heads "
        "and its vocabulary is at least 4x that)",
        check=_head,
        metavar="N",
    )
    draft_head_corpus: str | None = option(
        None,
        "text file whose token counts choose the draft head (default: Python's standard "
        "library, a code corpus)",
        check=_text_path,
        metavar="FILE",
    )
    draft_head_prompt: int = option(
        1024,
        "rows of the draft head refilled with each prompt's tokens it lacks (rounded down "
        "to 64, at most half the head; 0: none)",
        check=at_least(0),
        metavar="N",
    )
    draft_quant: str | None = option(
        None,
        "the draft model's GGUF weights requantized to this type by llama.cpp's quantizer "
        "(q4_0, q4_1, q5_0, q8_0, q4_k_m; cached under $EDGESPEC_HOME), or file (also none): "
        "the file's own types; default: the draft as loaded, which requantizes a draft "
        "above 5 bits a weight to q4_0 (docs/speculative.md). Lossless: the target verifies "
        "every token",
        check=_quant,
        metavar="TYPE",
        text=True,
    )

    def validate(self) -> None:
        if self.max_k > 64:
            raise EdgespecError(f"max_k must be in 1..64, got {self.max_k}")
        if self.ngram_min > self.ngram_max:
            raise EdgespecError(
                f"need 1 <= ngram_min <= ngram_max, got {self.ngram_min}, {self.ngram_max}"
            )
