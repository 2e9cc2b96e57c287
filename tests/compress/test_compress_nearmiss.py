"""A question word that the context repeats only outside the question's phrase is a
near-miss, not evidence (docs/compression.md, "Near-misses"): with "Sven Rossi" in the
context, the lone "Sven" of "Sven Kim" counts nothing, so the kept share is not filled with
the records that share one name with the asked person."""

import math

import numpy as np
import pytest

from edgespec.compress.core import (
    phrase_lengths,
    phrase_runs,
    question_overlap,
    segment_ids,
    select,
)

pytestmark = pytest.mark.unit


def _pieces(lines: list[str]) -> list[str]:
    """One token a word, then "." and "\\n" for each line (``"Sven Kim."``)."""
    return [p for line in lines for p in [" " + w for w in line[:-1].split(" ")] + [".", "\n"]]


def test_phrase_runs_tell_whole_runs_from_partial_ones():
    pieces = _pieces(["Sven Kim sings.", "Sven Rossi bakes.", "Lena Kowalski lives in Oslo."])
    pieces += _pieces(["Nadia Kowalski lives in Lima.", "Omar joined in May."])
    question = (
        "In which city does Nadia Kowalski live, and what is Sven Rossi's job? "
        "Answer: Nadia Kowalski lives in"
    )
    longest, whole = phrase_runs(pieces, question)
    np.testing.assert_array_equal(longest, phrase_lengths(pieces, question))
    at = {  # word -> (longest, whole) at its occurrences, in order
        w: [(longest[i], whole[i]) for i, p in enumerate(pieces) if p == " " + w]
        for w in ("Sven", "Rossi", "Kowalski", "lives", "in", "Nadia")
    }
    # the lone "Sven" is partial ("Sven Rossi" is in the context); "Sven Rossi" is whole
    assert at["Sven"] == [(1, 0), (2, 2)]
    assert at["Rossi"] == [(2, 2)]
    # "Kowalski lives in" (3) is part of "Nadia Kowalski lives in" (4), which is whole
    assert at["Kowalski"] == [(3, 0), (4, 4)]
    assert at["lives"] == [(3, 0), (4, 4)]
    assert at["Nadia"] == [(4, 4)]
    # "in" also stands alone in the question ("In which"), which the context never extends
    assert at["in"] == [(3, 1), (4, 4), (1, 1)]


def test_without_the_whole_phrase_every_run_is_whole():
    pieces = _pieces(["Sven Kim sings.", "Ines Rossi bakes."])
    longest, whole = phrase_runs(pieces, "What does Sven Rossi do?")
    np.testing.assert_array_equal(longest, whole)
    assert longest[pieces.index(" Sven")] == 1 and longest[pieces.index(" Rossi")] == 1
    assert not phrase_runs(pieces, "")[0].any()


def test_a_lone_name_is_no_evidence_when_the_whole_name_is_in_the_context():
    lines = ["Sven Kim sings.", "Ines Rossi sings.", "Sven Rossi bakes.", "Ana Lee sings."]
    pieces = _pieces(lines)
    ctx = list(range(len(pieces)))  # distinct ids: tokens match the question as words only
    rel = question_overlap(ctx, [], pieces, "What does Sven Rossi do?")
    kim, ines = pieces.index(" Sven"), pieces.index(" Rossi")
    assert pieces[kim + 1] == " Kim" and pieces[ines - 1] == " Ines"
    # before: each counted its rarity once, log(T / count), ranking "Sven Kim." above "Ana Lee"
    assert rel[kim] == 0.0 and rel[ines] == 0.0
    sven = pieces.index(" Sven", kim + 1)
    n = len(ctx)
    assert rel[sven] == pytest.approx(2 * math.log(n / pieces.count(" Sven")))
    assert rel[sven + 1] == pytest.approx(2 * math.log(n / pieces.count(" Rossi")))
    # with no "Sven Rossi" in the context, the lone names count as before
    rest = _pieces(["Sven Kim sings.", "Ines Rossi sings."])
    rel = question_overlap(list(range(len(rest))), [], rest, "What does Sven Rossi do?")
    assert rel[rest.index(" Sven")] == pytest.approx(math.log(len(rest) / 1))


def test_the_kept_share_holds_fewer_near_misses():
    # near-misses of "Sven Rossi", then records sharing the question's commoner word "sings"
    lines = ["Sven Kim paints.", "Ines Rossi paints.", "Sven Rossi bakes."]
    lines += ["Ana Lee sings.", "Bo Park sings.", "Cy Ng sings."]
    pieces = _pieces(lines)
    ctx = list(range(len(pieces)))
    rel = question_overlap(ctx, [], pieces, "Who sings, and what does Sven Rossi bake?")
    seg = segment_ids(pieces)
    info = np.ones(len(pieces))  # the fine stage has nothing to do: keep 4 lines exactly
    kept = select(info, seg, 20, coarse_slack=0.0, relevance=rel)
    text = "".join(pieces[i] for i in kept)
    # before: the near-misses (a name twice in the context) outranked "sings" (three times):
    # " Sven Kim paints.\n Ines Rossi paints.\n Sven Rossi bakes.\n Cy Ng sings.\n"
    assert text == " Sven Rossi bakes.\n Ana Lee sings.\n Bo Park sings.\n Cy Ng sings.\n"
