"""Token-by-token vocabulary checks between a draft and its target."""

from __future__ import annotations

from edgespec.errors import EdgespecError
from edgespec.tokenizer import Tokenizer


def check_same_vocab(target: Tokenizer, draft: Tokenizer, tname: str, dname: str) -> None:
    """Raise a one-line error unless every token id means the same text in both models.

    A draft may have padding rows beyond the target's vocabulary only if they are never
    produced; we require the shared range to match exactly and the sizes to be equal.
    """
    tv, dv = target.vocab(), draft.vocab()
    if len(tv) != len(dv):
        raise EdgespecError(
            f"draft '{dname}' has {len(dv)} tokens but target '{tname}' has {len(tv)}; "
            "use a draft from the same model family (same tokenizer)"
        )
    for i, (a, b) in enumerate(zip(tv, dv, strict=True)):
        if a != b:
            raise EdgespecError(
                f"draft '{dname}' and target '{tname}' differ at token {i} ({b!r} vs {a!r}); "
                "use a draft from the same model family (same tokenizer)"
            )
