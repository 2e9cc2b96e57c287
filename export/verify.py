"""Verification at export: the artifact against its fp32 source on fixed token prompts.

The reference is HF transformers (float32) on the prepared folder: greedy continuations of
a few fixed prompts, then the logits of every position of prompt + continuation. The
artifact runs the same sequences through its backend in one forward each, and we record

- ``max_logit_diff``: max |artifact - reference| over every position and vocabulary entry;
- ``greedy_agreement``: the share of continuation positions (teacher-forced) where both
  pick the same argmax.

An export fails when the agreement is below the threshold of its quantization
(:data:`DEFAULT_MIN_AGREEMENT`, or ``--min-agreement``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgespec.errors import EdgespecError

#: per quantization: the least greedy agreement an export must reach by default
DEFAULT_MIN_AGREEMENT = {
    "fp32": 0.99,
    "f32": 0.99,
    "fp16": 0.95,
    "f16": 0.95,
    "int8": 0.8,
    "q8_0": 0.8,
    "int4": 0.5,
    "q4_0": 0.5,
    # 4-bit too, in finer blocks (sub-scales per 32, Q6_K where it matters): q4_0's bar
    "q4_k_m": 0.5,
    # the GGUF's own 4/5/6/8-bit blocks vs their fp32 dequantization: 0.979 on SmolLM2
    "gguf-exact": 0.8,
}


class VerificationError(EdgespecError):
    """An exported artifact disagrees with its source more than its threshold allows."""


@dataclass(frozen=True)
class Reference:
    """Fixed prompts with the source's greedy continuation and logits.

    Attributes:
        sequences: per prompt, prompt + continuation token ids.
        prompt_len: tokens in each prompt.
        logits: per prompt, ``float32[len(sequence), V]``.
    """

    sequences: list[list[int]]
    prompt_len: int
    logits: list[np.ndarray]


def fixed_prompts(vocab: int, n: int = 3, length: int = 8) -> list[list[int]]:
    """``n`` reproducible prompts of ``length`` ids drawn from ``3 .. min(vocab, 4096)``."""
    rng = np.random.default_rng(1234)
    hi = max(4, min(vocab, 4096))
    return [[int(x) for x in rng.integers(3, hi, size=length)] for _ in range(n)]


def reference(hf_dir: Path, vocab: int, *, n_new: int = 16) -> Reference:
    """Run HF transformers (fp32) greedily on :func:`fixed_prompts`."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgespec.export.hf_onnx import _quiet

    prompts = fixed_prompts(vocab)
    with _quiet(False), torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
        model.eval()
        seqs, logits = [], []
        for p in prompts:
            ids = torch.tensor([p])
            for _ in range(n_new):
                nxt = model(ids).logits[0, -1].argmax()
                ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
            seqs.append(ids[0].tolist())
            logits.append(model(ids).logits[0].float().numpy())
    return Reference(seqs, len(prompts[0]), logits)


def measure(model: Any, ref: Reference) -> dict[str, Any]:
    """Score ``model`` (an :class:`~edgespec.model.Model`) against ``ref``."""
    diff, agree, total = 0.0, 0, 0
    for seq, want in zip(ref.sequences, ref.logits, strict=True):
        model.truncate(0)
        got = model.forward(seq)
        diff = max(diff, float(np.abs(got - want).max()))
        rows = slice(ref.prompt_len - 1, len(seq) - 1)
        agree += int((got[rows].argmax(-1) == want[rows].argmax(-1)).sum())
        total += len(seq) - ref.prompt_len
    return {
        "max_logit_diff": round(diff, 5),
        "greedy_agreement": round(agree / max(total, 1), 4),
        "prompts": len(ref.sequences),
        "positions": total,
    }


def verify_artifact(
    backend: str,
    source_kind: str,
    path: Path,
    ref: Reference,
    *,
    label: str,
    quant: str,
    min_agreement: float | None = None,
) -> dict[str, Any]:
    """Load the artifact on ``backend``, score it, and fail below the threshold."""
    from edgespec.runtime import load_model
    from edgespec.runtimes.base import LoadOptions, ModelSource

    n_ctx = max(256, max(len(s) for s in ref.sequences) + 8)  # llama.cpp pads tiny contexts
    model = load_model(
        ModelSource(source_kind, path, label), backend, LoadOptions(n_ctx=n_ctx, progress=False)
    )
    try:
        result = measure(model, ref)
    finally:
        model.close()
    need = DEFAULT_MIN_AGREEMENT.get(quant, 0.5) if min_agreement is None else min_agreement
    result["min_agreement"] = need
    if result["greedy_agreement"] < need:
        raise VerificationError(
            f"verification failed for {label}: greedy agreement "
            f"{result['greedy_agreement']:.2f} < {need:.2f} (max logit diff "
            f"{result['max_logit_diff']:.3g}); use a finer --quant or lower --min-agreement"
        )
    return result
