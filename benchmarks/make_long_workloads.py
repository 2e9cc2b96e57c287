"""Write the long-context workloads (edgespec/bench/data/long/*.jsonl) with a fixed seed.

    python benchmarks/make_long_workloads.py            # rewrites the three files

- ``needle``: a four-digit vault code hidden at a given depth in 1k-8k tokens of fluent,
  repetitive filler (a town's chronicle); the answer is the code.
- ``multifact``: a generated staff directory (name, city, job, age per person; 20-160 people,
  0.5k-6k tokens); each question asks two facts about two people; every answer part must
  appear.
- ``code_long``: a long Python module of generated helpers whose constants are defined near
  the top; the prompt ends in a function that must use one of them (answer: its name).

Each line: ``{"id", "kind", "prompt", "chat": false, "answer": [parts...], "tokens"}``;
``tokens`` is the approximate length the generator aimed for (SmolLM2's tokenizer). The
question is the prompt's last paragraph, so ``--compress`` keeps it whole.

The accuracy study at about 4k Qwen tokens (docs/compression.md) adds eight prompts per
family from their own seeds (``{SEED}-{name}-4k``), after the rows above, which come out of
their seeds as before: ``needle-4k-s1..5`` (with ``needle-4k-25/50/75``, eight 4k needles at
random depths), ``multifact-4k-s1..8`` (110-person directories, one question each) and
``code-long-4k-s1..8`` (60 helpers; the question describes the constant without naming it,
so the answer, e.g. ``MAX_RECORD_3``, is only in the context). A second set of :data:`MORE`
per family, alike, comes from a third seed (``{SEED}-{name}-4k-x``): ``needle-4k-x01..``,
``multifact-4k-x01..``, ``code-long-4k-x01..`` (ids that no earlier id selects as a prefix).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "edgespec" / "bench" / "data" / "long"
SEED = 20240614
#: the second accuracy set's prompts per family (``<family>-4k-x01 ..``, their own seed)
MORE = 10
#: characters per token of the filler under SmolLM2's tokenizer (measured: 4.6-4.9)
CHARS_PER_TOKEN = 4.7

TOWN = ["Ashford", "Bramley", "Corvale", "Dunmore", "Elmstead"]
THINGS = ["the mill", "the bridge", "the market", "the old school", "the harbour", "the chapel"]
PEOPLE = ["the farmers", "the fishermen", "the weavers", "the teachers", "the bakers"]
DONE = ["repaired", "painted", "cleaned", "rebuilt", "visited", "decorated"]
WHEN = ["in spring", "in early summer", "after the harvest", "before the winter", "in autumn"]


def filler_sentence(rng: random.Random) -> str:
    return (
        f"In {rng.choice(TOWN)}, {rng.choice(PEOPLE)} {rng.choice(DONE)} "
        f"{rng.choice(THINGS)} {rng.choice(WHEN)}, as they did every year."
    )


def needle_row(rng: random.Random, tokens: int, depth: float, row_id: str) -> dict:
    """One needle prompt: a vault code at ``depth`` (0-1) in ``tokens`` tokens of filler."""
    code = str(rng.randint(1000, 9999))
    sents: list[str] = []
    while sum(len(s) + 1 for s in sents) < tokens * CHARS_PER_TOKEN:
        sents.append(filler_sentence(rng))
    sents.insert(int(depth * len(sents)), f"The secret code for the vault is {code}.")
    prompt = (
        " ".join(sents)
        + "\n\nQuestion: What is the secret code for the vault? Answer: The secret code"
        " for the vault is"
    )
    return {
        "id": row_id,
        "kind": "needle",
        "prompt": prompt,
        "chat": False,
        "answer": [code],
        "tokens": tokens,
    }


def needle_rows(rng: random.Random) -> list[dict]:
    return [
        needle_row(rng, tokens, depth, f"needle-{tokens // 1000}k-{int(depth * 100)}")
        for tokens in (1000, 2000, 4000, 8000)
        for depth in (0.25, 0.5, 0.75)
    ]


def needle_4k_rows(rng: random.Random, ids: list[str]) -> list[dict]:
    """4k needles at random depths in (0.05, 0.95) (``depth`` recorded), one per id."""
    rows = []
    for row_id in ids:
        depth = round(rng.uniform(0.05, 0.95), 2)
        rows.append({**needle_row(rng, 4000, depth, row_id), "depth": depth})
    return rows


FIRST = ["Alice", "Bruno", "Chen", "Dara", "Emil", "Farah", "Goran", "Hana", "Ivo", "Jana"]
#: more first names, only for directories larger than FIRST x LAST (80 people), so that the
#: smaller ones come out of the seed exactly as before
MORE_FIRST = ["Kofi", "Lena", "Mateo", "Nadia", "Omar", "Priya", "Rui", "Sven", "Tara", "Yusuf"]
LAST = ["Moreau", "Okafor", "Lindqvist", "Tanaka", "Novak", "Rossi", "Haddad", "Kowalski"]
CITY = ["Lisbon", "Osaka", "Nairobi", "Quito", "Tromso", "Perth", "Krakow", "Dakar", "Lima"]
HOBBY = ["chess", "hiking", "music", "cooking"]
JOB = ["pilot", "chemist", "carpenter", "librarian", "surgeon", "architect", "baker", "judge"]


def directory(
    rng: random.Random, n_people: int
) -> tuple[list[str], dict[str, tuple[str, str, int]], str]:
    """A staff directory of ``n_people``: (names, name -> (city, job, age), its text)."""
    first = FIRST if n_people <= len(FIRST) * len(LAST) else FIRST + MORE_FIRST
    names = rng.sample([f"{f} {s}" for f in first for s in LAST], n_people)
    facts = {n: (rng.choice(CITY), rng.choice(JOB), rng.randint(24, 70)) for n in names}
    lines = [
        f"{n} lives in {c}, works as a {j} and is {a} years old. {n.split()[0]} joined the "
        f"company in {rng.randint(1995, 2022)} and enjoys {rng.choice(HOBBY)}."
        for n, (c, j, a) in facts.items()
    ]
    return names, facts, "Staff directory.\n" + "\n".join(lines)


def multifact_question(
    rng: random.Random, names: list[str], facts: dict, doc: str, row_id: str
) -> dict:
    """Two facts about two people of the directory ``doc``: one city, one job."""
    a, b = rng.sample(names, 2)
    question = (
        f"\n\nQuestion: In which city does {a} live, and what is {b}'s job? Answer: {a} lives in"
    )
    return {
        "id": row_id,
        "kind": "multifact",
        "prompt": doc + question,
        "chat": False,
        "answer": [facts[a][0], facts[b][1]],
        "tokens": round(len(doc) / CHARS_PER_TOKEN),
    }


def multifact_rows(rng: random.Random) -> list[dict]:
    rows = []
    for n_people in (20, 40, 80, 160):
        names, facts, doc = directory(rng, n_people)
        for q in range(2):
            rows.append(multifact_question(rng, names, facts, doc, f"multifact-{n_people}-{q}"))
    return rows


def multifact_4k_rows(rng: random.Random, ids: list[str]) -> list[dict]:
    """110-person directories (about 4k Qwen tokens: 160 people are 5.8k), one question
    each, one per id."""
    rows = []
    for row_id in ids:
        names, facts, doc = directory(rng, 110)
        rows.append(multifact_question(rng, names, facts, doc, row_id))
    return rows


VERBS = ["load", "parse", "merge", "scale", "clean", "index", "render", "flush", "check"]
PREFIX = ["MAX", "DEFAULT", "BASE"]
NOUNS = ["record", "table", "frame", "batch", "entry", "block", "packet", "row", "field"]


def module_body(rng: random.Random, n_funcs: int) -> list[str]:
    """``n_funcs`` generated helper functions, as lines."""
    body = []
    for f in range(n_funcs):
        v, n = rng.choice(VERBS), rng.choice(NOUNS)
        body += [
            "",
            f"def {v}_{n}_{f}(items, limit=10):",
            f'    """{v.capitalize()} each {n} in ``items`` up to ``limit``."""',
            "    out = []",
            "    for i, item in enumerate(items):",
            "        if i >= limit:",
            "            break",
            f"        out.append(math.floor(item * {rng.randint(2, 9)}))",
            "    return out",
        ]
    return body


HEAD = ['"""Generated helpers for a data pipeline."""', "", "import math", ""]


def code_rows(rng: random.Random) -> list[dict]:
    rows = []
    for n_funcs in (30, 60, 120):
        consts = {
            f"{rng.choice(PREFIX)}_{rng.choice(NOUNS).upper()}_{k}": rng.randint(2, 999)
            for k in range(6)
        }
        head = HEAD + [f"{k} = {v}" for k, v in consts.items()] + [""]
        body = module_body(rng, n_funcs)
        target = rng.choice(list(consts))
        tail = (
            "\n\n\ndef clamp_to_limit(value):\n"
            f'    """Clamp ``value`` to the module\'s {target.lower().replace("_", " ")}'
            f' ({target})."""\n    return min(value,'
        )
        rows.append(
            {
                "id": f"code-long-{n_funcs}",
                "kind": "code-long",
                "prompt": "\n".join(head + body) + tail,
                "chat": False,
                "answer": [target],
                "tokens": n_funcs * 60,
            }
        )
    return rows


def code_4k_rows(rng: random.Random, ids: list[str]) -> list[dict]:
    """60-helper modules (about 4k Qwen tokens), one per id, whose last function must return
    the constant its docstring describes ("the module's max record limit") without naming
    it: the answer (``MAX_RECORD_3``: prefix, noun and index) is only in the context."""
    rows = []
    for row_id in ids:
        pairs = rng.sample([(p, n) for p in PREFIX for n in NOUNS], 6)
        consts = {f"{p}_{n.upper()}_{i}": rng.randint(2, 999) for i, (p, n) in enumerate(pairs)}
        head = HEAD + [f"{c} = {v}" for c, v in consts.items()] + [""]
        body = module_body(rng, 60)
        p, n = rng.choice(pairs)
        target = f"{p}_{n.upper()}_{pairs.index((p, n))}"
        tail = (
            "\n\n\ndef clamp_to_limit(value):\n"
            f'    """Clamp ``value`` to the module\'s {p.lower()} {n} limit."""\n'
            "    return min(value,"
        )
        rows.append(
            {
                "id": row_id,
                "kind": "code-long",
                "prompt": "\n".join(head + body) + tail,
                "chat": False,
                "answer": [target],
                "tokens": 60 * 60,
            }
        )
    return rows


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    makers = {
        "needle": (needle_rows, needle_4k_rows, "needle-4k", 5),
        "multifact": (multifact_rows, multifact_4k_rows, "multifact-4k", 8),
        "code_long": (code_rows, code_4k_rows, "code-long-4k", 8),
    }
    for name, (make, make_4k, stem, first) in makers.items():
        rows = make(random.Random(f"{SEED}-{name}"))
        rows += make_4k(
            random.Random(f"{SEED}-{name}-4k"), [f"{stem}-s{k}" for k in range(1, first + 1)]
        )
        more = [f"{stem}-x{k:02d}" for k in range(1, MORE + 1)]
        rows += make_4k(random.Random(f"{SEED}-{name}-4k-x"), more)
        text = "".join(json.dumps(r) + "\n" for r in rows)
        (OUT / f"{name}.jsonl").write_text(text)
        print(f"{OUT / name}.jsonl: {len(rows)} prompts")


if __name__ == "__main__":
    main()
