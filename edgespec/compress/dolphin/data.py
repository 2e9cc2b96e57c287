"""Locally generated training text for the memory projector (no downloads).

Each example is a context (filler sentences with a few facts), a prompt the target reads
after the memory, and the answer it must produce. Three tasks, as in ICAE / Dolphin
pretraining, mixed by example index:

- ``qa``: ``"\\n\\nQuestion: What is X? Answer: X is"`` -> ``" <value>"`` for a fact X in the
  context (the long-context workloads ask in this format, about other facts and filler);
- ``continue``: an empty prompt -> the first words of the context's next sentence (language
  modelling from memory);
- ``repeat``: ``"\\n\\nRepeat the first sentence:"`` -> that sentence (autoencoding).

The words deliberately differ from the benchmark generator's (benchmarks/make_long_workloads.py:
towns, trades, vault codes), so the measurement is not on training templates.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

TASKS = ("qa", "continue", "repeat")

_SUBJECTS = [
    "The committee",
    "Our neighbour",
    "The old librarian",
    "A young engineer",
    "The museum guide",
    "My cousin",
    "The ferry captain",
    "The night nurse",
    "A travelling musician",
    "The school principal",
    "The gardener",
]
_VERBS = [
    "reviewed",
    "painted",
    "repaired",
    "described",
    "ordered",
    "moved",
    "measured",
    "photographed",
    "cleaned",
    "counted",
    "carried",
]
_OBJECTS = [
    "the wooden fence",
    "a stack of letters",
    "the blue kettle",
    "the city map",
    "three heavy boxes",
    "the garden shed",
    "an old piano",
    "the spare tyres",
    "the kitchen shelves",
    "a pile of maps",
    "the front steps",
]
_WHEN = [
    "on Monday",
    "last winter",
    "before lunch",
    "in the evening",
    "after the storm",
    "during the fair",
    "at dawn",
    "every weekend",
    "in late spring",
    "after the meeting",
]
_OWNERS = [
    "Nora",
    "Felix",
    "Priya",
    "Tomas",
    "Leila",
    "Oscar",
    "Mina",
    "Hugo",
    "Sana",
    "Jonas",
    "Irene",
    "Kofi",
    "Wen",
    "Marta",
]
_THINGS = [
    "locker number",
    "bus route",
    "room number",
    "bike lock code",
    "phone extension",
    "ticket number",
    "favourite number",
    "desk number",
]


def _filler(rng: random.Random) -> str:
    return (
        f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_WHEN)}."
    )


@dataclass(frozen=True)
class TextExample:
    """One training example as text.

    Attributes:
        context: what the compressor reads (becomes memory).
        prompt: what the target reads after the memory (may be empty).
        answer: the continuation whose next-token loss trains the projector.
        task: one of :data:`TASKS`.
    """

    context: str
    prompt: str
    answer: str
    task: str


def make_examples(n: int, sentences: int, seed: int) -> list[TextExample]:
    """``n`` examples of about ``sentences`` sentences of context each (deterministic)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        task = TASKS[i % len(TASKS)]
        body = [_filler(rng) for _ in range(max(2, sentences))]
        if task == "qa":
            facts = []
            for owner in rng.sample(_OWNERS, 3):
                thing = rng.choice(_THINGS)
                value = str(rng.randint(10, 9999))
                facts.append((f"{owner}'s {thing}", value))
                body.insert(rng.randrange(len(body) + 1), f"{owner}'s {thing} is {value}.")
            key, value = rng.choice(facts)
            prompt = f"\n\nQuestion: What is {key}? Answer: {key} is"
            out.append(TextExample(" ".join(body), prompt, f" {value}", task))
        elif task == "continue":
            nxt = _filler(rng)
            out.append(TextExample(" ".join(body), "", " " + " ".join(nxt.split()[:4]), task))
        else:
            prompt = "\n\nRepeat the first sentence:"
            out.append(TextExample(" ".join(body), prompt, " " + body[0], task))
    return out
