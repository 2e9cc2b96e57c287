"""Choosing a draft's frequent-token head (:mod:`edgespec.draft_head`) and its errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgespec import draft_head
from edgespec.errors import EdgespecError
from edgespec.testing import CharTokenizer, PrefixModel

pytestmark = pytest.mark.unit

ALPHABET = "".join(chr(0x100 + i) for i in range(256))


def _counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ids: list[int], top: int
) -> tuple[CharTokenizer, Path]:
    """A fresh ``$EDGESPEC_HOME``, a tokenizer whose EOS is 255, and a corpus where id i
    occurs ``top - i`` times for each of ``ids``."""
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path / "home"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(ALPHABET[i] * (top - i) for i in ids))
    return CharTokenizer(ALPHABET, eos=255), corpus


def test_select_orders_always_counts_then_ids() -> None:
    counts = np.zeros(10, dtype=np.int64)
    counts[[7, 3, 9]] = [5, 9, 5]  # 3 most frequent, then 7 and 9 (ties by id)
    assert draft_head.select(counts, 4, always=[8]).tolist() == [3, 7, 8, 9]
    assert draft_head.select(counts, 6, always=[8]).tolist() == [0, 1, 3, 7, 8, 9]
    # interleaved: 8 (always), 3 (count), 0 (id), 7 (count), 1 (id), 9 (count), 2 (id)
    assert draft_head.select(counts, 5, [8], interleave=True).tolist() == [0, 1, 3, 7, 8]
    assert draft_head.select(counts, 7, [8], interleave=True).tolist() == [0, 1, 2, 3, 7, 8, 9]


def test_frequent_tokens_counts_the_corpus_and_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frequent = list(range(100, 163))  # 63 ids with counts, and the EOS: 64
    tok, corpus = _counted(tmp_path, monkeypatch, frequent, 200)
    ids = draft_head.frequent_tokens(tok, 256, 50, [corpus])  # rounded up to 64
    assert ids.tolist() == [*frequent, 255]
    # the model may have more logits than the tokenizer has tokens: the head still fits
    assert draft_head.frequent_tokens(tok, 320, 128, [corpus]).max() < 320
    # a second call reads the cached counts: nothing is tokenized again
    monkeypatch.setattr(draft_head, "token_counts", lambda *a: pytest.fail("not cached"))
    assert draft_head.frequent_tokens(tok, 256, 64, [corpus]).tolist() == ids.tolist()


@pytest.mark.parametrize(
    "size, match", [(0, r"outside \[1, 192\]"), (193, r"outside \[1, 192\]"), (256, "outside")]
)
def test_bad_sizes_are_one_line(tmp_path: Path, size: int, match: str) -> None:
    corpus = tmp_path / "c.txt"
    corpus.write_text(ALPHABET)
    with pytest.raises(EdgespecError, match=match):
        draft_head.frequent_tokens(CharTokenizer(ALPHABET), 256, size, [corpus])


def test_bad_corpora_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path / "home"))
    tok = CharTokenizer(ALPHABET)
    with pytest.raises(EdgespecError, match="does not exist"):
        draft_head.frequent_tokens(tok, 256, 64, [tmp_path / "missing.txt"])
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(EdgespecError, match="has no text"):
        draft_head.frequent_tokens(tok, 256, 64, [empty])
    assert not (tmp_path / "home" / "draft_heads").exists() or not any(
        (tmp_path / "home" / "draft_heads").iterdir()
    ), "nothing cached for a failed corpus"


def test_default_corpus_is_python_code() -> None:
    files = draft_head.default_corpus()
    assert files and all(f.suffix == ".py" for f in files)
    assert any(f.name == "os.py" for f in files)


def test_a_backend_without_heads_says_so(tmp_path: Path) -> None:
    from edgespec.runtime import Runtime
    from edgespec.runtimes.base import LoadOptions, ModelSource
    from edgespec.speculative.config import SpecConfig

    corpus = tmp_path / "c.txt"
    corpus.write_text(ALPHABET)
    src = ModelSource("gguf", tmp_path / "fake.gguf", "fake")
    model = PrefixModel(vocab_size=256, scale=3.0)
    rt = Runtime(CharTokenizer(ALPHABET), model, "fake", src, LoadOptions(), model)
    config = SpecConfig(proposers=("draft",), draft_head=64, draft_head_corpus=str(corpus))
    with pytest.raises(EdgespecError, match="no frequent-token draft head"):
        rt.generate([1, 2, 3], max_new_tokens=4, strategy="speculative", config=config)
    rt.draft = None
    with pytest.raises(EdgespecError, match="needs a draft model"):
        rt.draft_with_head(64)


def test_prompt_slots_take_the_prompts_missing_tokens_most_frequent_first() -> None:
    core = np.zeros(20, dtype=bool)
    core[:10] = True
    fillers = np.array([15, 16, 17, 18])
    # 12 twice (most frequent); 13 and 11 once, 11 the latest; 3 is in the core; 25 and -1
    # are outside the vocabulary
    ids, placed = draft_head.prompt_slot_ids([13, 12, 3, 25, 12, 11, -1], core, fillers, 4)
    assert ids.tolist() == [12, 11, 13, 15] and placed == 3
    # a filler the prompt uses is not repeated
    ids, placed = draft_head.prompt_slot_ids([16, 19], core, fillers, 4)
    assert ids.tolist() == [19, 16, 15, 17] and placed == 2
    # more missing tokens than slots: the most frequent win
    ids, placed = draft_head.prompt_slot_ids([10, 11, 11, 12, 12, 12, 13], core, fillers, 2)
    assert ids.tolist() == [12, 11] and placed == 2
    ids, placed = draft_head.prompt_slot_ids([1, 2, 3], core, fillers, 4)
    assert ids.tolist() == fillers.tolist() and placed == 0


def test_a_head_with_slots_puts_its_least_frequent_ids_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frequent = list(range(100, 227))  # 127 ids by falling count, and the EOS: 128
    tok, corpus = _counted(tmp_path, monkeypatch, frequent, 300)
    full = draft_head.frequent_tokens(tok, 256, 128, [corpus])
    ids, slots = draft_head.head_with_slots(tok, 256, 128, 100, [corpus])  # 100 -> 64
    assert slots == 64 and sorted(ids.tolist()) == full.tolist()
    # the fixed rows: the EOS and the 63 most frequent, ascending; the fillers after them
    assert ids[:64].tolist() == [*frequent[:63], 255]
    assert ids[64:].tolist() == frequent[63:]
    assert draft_head.head_with_slots(tok, 256, 128, 500, [corpus])[1] == 64  # half at most
    none, zero = draft_head.head_with_slots(tok, 256, 128, 0, [corpus])
    assert zero == 0 and none.tolist() == full.tolist()


def test_the_default_head_needs_a_backend_with_heads_and_a_large_vocabulary(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from edgespec.runtime import Runtime
    from edgespec.runtimes.base import LoadOptions, ModelSource
    from edgespec.speculative.config import SpecConfig
    from edgespec.speculative.proposers.draft_model import draft_of

    big = PrefixModel(vocab_size=4 * draft_head.DEFAULT_SIZE)
    assert draft_head.default_size(big) == 0  # the fake backend has no heads
    monkeypatch.setattr(PrefixModel, "takes_head", property(lambda self: True))
    assert draft_head.default_size(big) == draft_head.DEFAULT_SIZE
    small = PrefixModel(vocab_size=4 * draft_head.DEFAULT_SIZE - 1)
    assert draft_head.default_size(small) == 0
    # draft_of: the default asks for that head; 0 turns it off even where it would apply
    asked: list[int] = []
    src = ModelSource("gguf", Path("fake.gguf"), "fake")
    rt = Runtime(CharTokenizer(ALPHABET), big, "fake", src, LoadOptions(), big)
    monkeypatch.setattr(rt, "draft_with_head", lambda size, *a: asked.append(size) or big)
    draft_of(rt, SpecConfig(proposers=("draft",)))
    assert asked == [draft_head.DEFAULT_SIZE]
    assert draft_of(rt, SpecConfig(proposers=("draft",), draft_head=0)) is big
    assert asked == [draft_head.DEFAULT_SIZE]
