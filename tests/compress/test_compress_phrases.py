"""A kept line keeps its line break, and segments are ranked by the question's whole phrases
(docs/compression.md, "Lines and phrases"): the two fixes for the directories of the 4k
accuracy run, which the kept quarter turned into one run-on line of near-misses."""

import math

import numpy as np
import pytest

from edgespec.compress.core import (
    CompressOptions,
    phrase_lengths,
    question_overlap,
    segment_ids,
    select,
    structure_mask,
    word_ids,
)
from edgespec.compress.prompt import Compressor, compress_prompt
from edgespec.testing import CharTokenizer, PrefixModel

pytestmark = pytest.mark.unit


def test_a_lines_newline_belongs_to_its_last_sentence():
    pieces = [" a", ".", "\n", "b", "?", "\n\n", "c", " d", "\n", "e"]
    # before: "\n" after a sentence end was a one-token segment of its own (relevance 0, so
    # the coarse stage dropped the line breaks of the lines it kept)
    assert list(segment_ids(pieces)) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    # a newline that is not whitespace alone, or not after an end, still ends a segment
    assert list(segment_ids(["a", ".\n", "b", "\n", "\n"])) == [0, 0, 1, 1, 1]


def test_fine_stage_drops_line_breaks_last():
    # [forced] "x" "." "\n" | "y" "." "\n": one segment each, newlines the least informative
    pieces = ["<s>", "x", ".", "\n", "y", ".", "\n"]
    info = np.array([math.inf, 2.0, 1.0, 0.1, 3.0, 1.5, 0.2])
    assert list(segment_ids(pieces[1:])) == [0, 0, 0, 1, 1, 1]
    seg, words = np.array([0, 1, 1, 1, 2, 2, 2]), word_ids(pieces)
    # without structure the newlines go first (lowest information)
    assert list(select(info, seg, 5, coarse_slack=0.0, words=words)) == [0, 1, 2, 4, 5]
    kept = select(info, seg, 5, coarse_slack=0.0, words=words, structure=structure_mask(pieces))
    assert list(kept) == [0, 1, 3, 4, 6]
    # nothing else left to drop: the line breaks go last (the count stays exact)
    kept = select(info, seg, 2, coarse_slack=0.0, structure=structure_mask(pieces))
    assert list(kept) == [0, 6]


def test_a_line_keeps_its_break_when_only_its_first_sentence_stays():
    # one directory record on one line: "x x ." (relevant) then "y ." with the line break
    # (dull); the coarse stage drops the second sentence, which held the line's "\n"
    pieces = [" x", " x", ".", " y", ".", "\n", " z", "."]
    info = np.array([5.0, 5.0, 5.0, 1.0, 1.0, 0.5, 4.0, 3.9])
    seg = segment_ids(pieces)
    assert list(seg) == [0, 0, 0, 1, 1, 1, 2, 2]
    # before: the record ran into the next line (" x x. z.")
    assert list(select(info, seg, 5, coarse_slack=0.0)) == [0, 1, 2, 6, 7]
    kept = select(info, seg, 5, coarse_slack=0.0, structure=structure_mask(pieces))
    # the "\n" comes back (6 tokens), so the fine stage drops one more: the last "." (3.9)
    assert [pieces[i] for i in kept] == [" x", " x", ".", "\n", " z"]


def test_phrase_lengths_count_the_questions_runs_of_words():
    pieces = ["Sven", " Ros", "si", " is", " a", " baker", ".\n", "Sven", " Tan", "aka", "."]
    question = "What is Sven Rossi's job?"
    runs = phrase_lengths(pieces, question)
    # "is" and "baker": 1 and 0; "Sven Rossi is" is not the question's order ("Rossi job")
    np.testing.assert_array_equal(runs, [2, 2, 2, 1, 0, 0, 0, 1, 0, 0, 0])
    # case and punctuation between the words do not matter; one-letter words are skipped
    runs = phrase_lengths(["BASE", "_FIELD", "_", "5", " x"], "the module's base field limit")
    np.testing.assert_array_equal(runs, [2, 2, 0, 0, 0])
    assert not phrase_lengths(["a", " b"], "").any()


def test_the_whole_name_outranks_its_near_misses():
    # four lines of a directory; the question asks for Sven Rossi. By words alone the short
    # near-miss "Sven Kim." ranks first (the same rare name in fewer tokens)
    lines = ["Ines Rossi bakes.", "Sven Kim.", "Sven Rossi sings songs in the choir.", "Ana Rossi."]
    pieces = [p for line in lines for p in [" " + w for w in line[:-1].split(" ")] + [".", "\n"]]
    ctx = list(range(len(pieces)))  # distinct ids: tokens match the question as words only
    question = "What does Sven Rossi do?"
    seg = segment_ids(pieces)

    def best(rel: np.ndarray) -> str:
        means = [rel[seg == s].mean() for s in np.unique(seg)]
        top = int(np.argmax(means))
        return "".join(p for p, s in zip(pieces, seg, strict=True) if s == top)

    n = len(ctx)
    named = {"Sven", "Rossi"}  # a bag of the question's words
    words_only = np.array([math.log(n / pieces.count(p)) * (p.strip() in named) for p in pieces])
    assert best(words_only) == " Sven Kim.\n"
    rel = question_overlap(ctx, [], pieces, question)
    assert best(rel) == " Sven Rossi sings songs in the choir.\n"
    # each token of the run counts twice its rarity, log(T / count) x 2
    i = pieces.index(" Sven", pieces.index(" Kim"))
    assert pieces[i + 1] == " Rossi"
    assert rel[i] == pytest.approx(2 * math.log(n / pieces.count(" Sven")))
    assert rel[i + 1] == pytest.approx(2 * math.log(n / pieces.count(" Rossi")))
    # the lone "Sven" of the near-miss counts nothing: the context holds "Sven Rossi"
    # (test_compress_nearmiss.py; it counted log(n / count) before)
    assert rel[pieces.index(" Kim") - 1] == 0.0


ALPHABET = "abcdefghijklmnopqrstuvwxyz .?\nQ:"


def test_compressed_directory_keeps_one_line_per_record():
    tok = CharTokenizer(alphabet=ALPHABET)
    comp = Compressor(PrefixModel(vocab_size=len(ALPHABET), seed=3), tok, "fake", True)
    rows = [f"{a} {b} has {c}." for a, b, c in zip("abcdefgh", "ijklmnop", "qrstuvwx", strict=True)]
    context = "\n".join(rows)
    c = compress_prompt(
        context + "\n\nQ: what has e m?", comp, CompressOptions(ratio=0.5, coarse_slack=0.0)
    )
    kept = c.text[: c.text.index("\n\nQ:")]
    lines = [line for line in kept.split("\n") if line]
    # every kept line is one record: one sentence end each, none run into the next
    assert all(line.count(".") <= 1 for line in lines), kept
    assert len(lines) >= 3
