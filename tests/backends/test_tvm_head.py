"""The tvm backend's frequent-token draft head (``TvmModel.with_head``, FR-Spec's idea).

A narrowed model's library computes ``lm_head`` for the kept rows only; every output row is
computed alone by the matmul kernels (fp32, the file's blocks, int8 activations), so its
logits at the kept ids must equal the full model's bit for bit, and be ``-inf`` elsewhere.
Speculation with a narrowed draft must equal plain decoding token for token: the draft can
only miss more, never change what the target keeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgespec.errors import EdgespecError
from edgespec.runtimes.base import LoadOptions, ModelSource
from edgespec.testing import write_tiny_gguf

pytest.importorskip("tvm", reason="the tvm backend needs apache-tvm (pip install 'edgespec[tvm]')")
pytest.importorskip("gguf")
from edgespec.runtimes.tvm_backend import TvmBackend, TvmModel  # noqa: E402

pytestmark = [pytest.mark.backend]

IDS = [1, 17, 200, 33, 5, 99, 142, 7, 255, 64, 3, 128]
#: the kept ids (half the tiny models' 256)
HEAD = np.arange(0, 256, 2)


def _gguf(hf: Path, out: Path, output: str) -> ModelSource:
    """A tiny GGUF whose matrices are Q4_1 and whose output matrix is ``output``."""

    def tensor_type(name: str, arr: np.ndarray) -> str | None:
        if arr.ndim != 2:
            return None
        return output if name == "output.weight" else "Q4_1"

    return ModelSource("gguf", write_tiny_gguf(hf, out, tensor_type=tensor_type), out.stem)


#: (source kind, weights build, GGUF type of the output matrix): every way with_head builds
#: the narrowed output layer (the fp32 build's own matrix read back; the file's blocks with
#: float32 or int8 activations; a float32 fallback read from the file)
BUILDS = [
    ("hf", "fp32", None),
    ("gguf", "gguf-exact", "Q8_0"),
    ("gguf", "gguf-q8act", "Q8_0"),
    ("gguf", "gguf-exact", "F16"),
]


@pytest.fixture(params=BUILDS, ids=lambda b: f"{b[1]}-{b[2] or 'hf'}")
def build(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    kind, weights, output = request.param
    if weights == "gguf-q8act":
        from edgespec.kernels.qlinear_q8 import int8_isa

        if int8_isa() is None:
            pytest.skip("gguf-q8act needs a CPU with avx512_vnni or avx2")
    hf: Path = request.getfixturevalue("tiny_llama_dir")
    if kind == "hf":
        return ModelSource("hf", hf, "tiny"), weights
    out = tmp_path_factory.mktemp("tvm-head") / f"tiny-{output}.gguf"
    return _gguf(hf, out, output), weights


def _load(src: ModelSource, weights: str, n_ctx: int = 64) -> TvmModel:
    return TvmBackend.load(src, LoadOptions(n_ctx=n_ctx, progress=False, weights=weights))


def test_head_logits_equal_the_full_models(build: Any) -> None:
    src, weights = build
    full = _load(src, weights)
    head = full.with_head(HEAD)
    assert head.head_ids is not None and np.array_equal(head.head_ids, HEAD)
    assert head.info.extra["head_tokens"] == HEAD.size
    assert head.info.extra["variant"].endswith(f"head{HEAD.size}")
    others = np.setdiff1d(np.arange(256), HEAD)
    want = full.forward(IDS)
    got = head.forward(IDS)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got[:, HEAD], want[:, HEAD])
    assert np.isneginf(got[:, others]).all()
    # its own cache: the full model's is untouched, and a one-token forward continues it
    assert full.n_past == len(IDS) and head.n_past == len(IDS)
    head.truncate(4)
    np.testing.assert_array_equal(head.forward([IDS[4]])[0, HEAD], want[4, HEAD])
    # a tree forward through the narrowed library
    parents = [-1, 0, 0, 1]
    full.truncate(4)
    head.truncate(4)
    np.testing.assert_array_equal(
        head.forward_tree(IDS[4:8], parents)[:, HEAD],
        full.forward_tree(IDS[4:8], parents)[:, HEAD],
    )


def test_bad_heads_are_one_line(tiny_llama_dir: Path) -> None:
    full = _load(ModelSource("hf", tiny_llama_dir, "tiny"), "fp32")
    bad = (([1, 1], "distinct"), ([0, 256], r"\[0, 256\)"), ([-1, 3], r"\[0, 256\)"))
    for ids, what in (*bad, (list(range(20)), "multiple of 16")):
        with pytest.raises(EdgespecError, match=what):
            full.with_head(np.array(ids))
    # prompt slots: whole 64-row tiles, fewer than the head's rows
    for ids, slots in ((HEAD, 32), (HEAD, 128), (np.arange(80), 64)):
        with pytest.raises(EdgespecError, match="prompt slots must be a multiple of 64"):
            full.with_head(ids, slots)
    with pytest.raises(EdgespecError, match="already narrowed"):
        full.with_head(HEAD).with_head(HEAD)


@pytest.mark.parametrize("slots", [0, 64], ids=["no-slots", "prompt-slots"])
def test_speculation_with_a_head_equals_plain_decoding(
    tmp_path: Path, build: Any, slots: int
) -> None:
    """The draft is the target's own weights narrowed to HEAD (with ``slots``: its 64 most
    frequent ids fixed, and 64 slots that take the prompt's odd ids): it proposes the
    target's token exactly when that token is kept, so both acceptance and the head's misses
    happen."""
    from edgespec.losslessness import plain_reference
    from edgespec.runtime import Runtime
    from edgespec.speculative.config import SpecConfig
    from edgespec.testing import CharTokenizer

    src, weights = build
    opts = LoadOptions(n_ctx=256, progress=False, weights=weights)
    target = TvmBackend.load(src, opts)
    draft = TvmBackend.load(src, opts)
    alphabet = "".join(chr(0x100 + i) for i in range(256))
    corpus = tmp_path / "corpus.txt"  # its counts pick HEAD (128 ids, no specials here)
    corpus.write_text("".join(alphabet[i] * (300 - i) for i in HEAD.tolist()))
    rt = Runtime(CharTokenizer(alphabet), target, "tvm", src, opts, draft)
    prompt = [5, 17, 3, 99, 42, 5, 17, 3, 99, 42]
    ref = plain_reference(target, prompt, 32).tokens
    config = SpecConfig(
        proposers=("draft",),
        k=3,
        draft_head=128,
        draft_head_corpus=str(corpus),
        draft_head_prompt=slots,
    )
    res = rt.generate(
        prompt, max_new_tokens=32, strategy="speculative", ignore_eos=True, config=config
    )
    assert res.token_ids == ref
    (head,) = rt._heads.values()
    assert head.head_ids is not None
    if slots:  # the prompt's odd ids, then fillers (HEAD's least frequent half)
        assert head.head_ids[:64].tolist() == HEAD[:64].tolist()
        assert head.head_ids[64:68].tolist() == [99, 3, 17, 5]  # twice each: latest first
        assert head.head_ids[68:].tolist() == HEAD[64:124].tolist()
    else:
        assert np.array_equal(head.head_ids, HEAD)
    kept = np.isin(ref, head.head_ids)
    assert kept.any() and not kept.all(), "the reference must test both hits and misses"
    hist = res.stats.accept_hist
    assert sum(n * c for n, c in hist.items()) > 0, hist  # the head's drafts were accepted
    assert hist.get(0, 0) > 0, hist  # and missed where the target's token is not kept
    rt.close()


#: a head with prompt slots: the even ids below 128 fixed, the last 64 rows slots whose
#: fillers are the odd ids below 128
CORE = np.arange(0, 128, 2)
FILLERS = np.arange(1, 128, 2)


def test_prompt_slots_are_refilled_bit_for_bit(build: Any) -> None:
    """``fit_head`` repacks only the slots' tiles: after each refill the head's logits at
    its ids (fixed rows and slots) still equal the full model's, and the rest are -inf."""
    src, weights = build
    full = _load(src, weights)
    head = full.with_head(np.concatenate([CORE, FILLERS]), slots=64)
    want = full.forward(IDS)

    def check(kept: np.ndarray) -> None:
        assert head.head_ids is not None
        assert sorted(head.head_ids.tolist()) == sorted(kept.tolist())
        head.reset()
        got = head.forward(IDS)
        np.testing.assert_array_equal(got[:, kept], want[:, kept])
        assert np.isneginf(np.delete(got, kept, axis=1)).all()

    check(np.concatenate([CORE, FILLERS]))
    # 201 (twice), 255 and 143 are outside the head: they take three slots
    prompt = [201, 2, 255, 143, 201, 4]
    assert head.fit_head(prompt) == 3
    check(np.concatenate([CORE, [201, 255, 143], FILLERS[:61]]))
    weights_now = list(head.weights)
    assert head.fit_head(prompt) == 3  # the same slot set: nothing repacked
    assert all(a is b for a, b in zip(head.weights, weights_now, strict=True))
    assert head.fit_head([0, 2, 4]) == 0  # a prompt the fixed rows hold: the fillers again
    check(np.concatenate([CORE, FILLERS]))
    assert full.fit_head(prompt) == 0  # a model without slots does nothing
