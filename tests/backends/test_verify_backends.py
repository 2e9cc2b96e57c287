"""The verifiers on real backends' logits: what is accepted is exactly the argmax chain.

For every backend (NumPy reference in float64 and ONNX Runtime fp32 on a tiny random model;
llama.cpp and ONNX Runtime gguf-exact on smollm2-135m) the target scores a verify-shaped
chunk (``pending + k`` draft tokens, or a token tree), and the greedy verifiers must accept
exactly the tokens that follow the argmax of those very rows, computed here independently.
Drafts are plausible: the target's own best tokens, with its second-best token at one place.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from edgespec.model import Model
from edgespec.runtimes import BACKENDS, LoadOptions, ModelSource
from edgespec.sampling import GenerationParams
from edgespec.speculative.types import Draft, Verdict
from edgespec.speculative.verify import (
    ChainRejectionVerifier,
    GreedyVerifier,
    TreeRejectionVerifier,
)

pytestmark = [pytest.mark.backend]

GREEDY = GenerationParams()
K = 4
PROMPT = [1, 1041, 260, 655, 28, 2141, 617, 436, 253, 1838]


def _tiny(backend: str, hf_dir: Path, **opts: object) -> Model:
    return BACKENDS.get(backend).load(
        ModelSource("hf", hf_dir, "tiny"), LoadOptions(n_ctx=128, progress=False, **opts)
    )


def _smollm2(backend: str, path: Path, **opts: object) -> Model:
    return BACKENDS.get(backend).load(
        ModelSource("gguf", path, "smollm2-135m"), LoadOptions(n_ctx=128, progress=False, **opts)
    )


@pytest.fixture(scope="module")
def _home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tiny models' ONNX conversions go to a throwaway home (smollm2's to the real cache)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGESPEC_HOME", str(tmp_path_factory.mktemp("home")))
        yield


@pytest.fixture(
    scope="module",
    params=[
        "numpy-float64",
        "onnx-fp32",
        "llamacpp",
        pytest.param("onnx-gguf-exact", marks=pytest.mark.slow),
    ],
)
def model(request: pytest.FixtureRequest, tiny_llama_dir: Path) -> Iterator[Model]:
    name = request.param
    if name == "numpy-float64":
        m = _tiny("numpy", tiny_llama_dir, dtype="float64")
    elif name == "onnx-fp32":
        pytest.importorskip("onnxruntime")
        request.getfixturevalue("_home")
        m = _tiny("onnx", tiny_llama_dir)
    else:
        backend = name.split("-")[0]
        if not BACKENDS.get(backend).available():
            pytest.skip(f"the {backend} backend is not installed")
        path = request.getfixturevalue("smollm2_path")
        m = _smollm2(backend, path, **({"weights": "gguf-exact"} if backend == "onnx" else {}))
    yield m
    m.close()


def _prompt(m: Model) -> list[int]:
    return [t % m.info.vocab_size for t in PROMPT]


def _ranked(row: np.ndarray) -> list[int]:
    return [int(t) for t in np.argsort(-row, kind="stable")[:2]]


def plausible_chain(m: Model, wrong_at: int | None) -> tuple[int, list[int]]:
    """``(pending, draft)`` after the prompt: K tokens, each the target's best after the ones
    before it (scored in a chunk, as a verify step would), except its second best at
    ``wrong_at``. Leaves the prompt in the cache."""
    m.reset()
    pending = int(np.argmax(m.forward(_prompt(m), all_logits=False)[-1]))
    base = m.n_past
    draft: list[int] = []
    for j in range(K):
        row = m.forward([pending, *draft])[j]
        m.truncate(base)
        best, second = _ranked(row)
        draft.append(second if j == wrong_at else best)
    return pending, draft


def argmax_walk(
    rows: np.ndarray, tokens: Sequence[int], parents: Sequence[int]
) -> tuple[list[int], int]:
    """The reference answer: from the root (row 0), move to the child whose token is the
    argmax of the current row; stop when there is none. Returns (path, bonus token).
    ``rows[i + 1]`` belongs to draft node i."""
    path: list[int] = []
    node = -1
    while True:
        best = int(rows[node + 1].argmax())
        child = [i for i, p in enumerate(parents) if p == node and tokens[i] == best]
        if not child:
            return path, best
        node = child[0]
        path.append(node)


def expected_verdict(rows: np.ndarray, draft: Draft) -> Verdict:
    path, bonus = argmax_walk(rows, draft.tokens, draft.chain_parents())
    return Verdict(tuple(path), (*(draft.tokens[i] for i in path), bonus))


@pytest.mark.parametrize("wrong_at", [0, 1, 3, None])
def test_greedy_verifier_accepts_the_argmax_chain(model: Model, wrong_at: int | None) -> None:
    pending, tokens = plausible_chain(model, wrong_at)
    base = model.n_past
    rows = model.forward([pending, *tokens])
    model.truncate(base)
    draft = Draft(tuple(tokens))
    want = expected_verdict(rows, draft)
    rng = np.random.default_rng(0)
    assert GreedyVerifier().verify(draft, rows, GREEDY, rng) == want
    # speculative sampling at temperature 0 is the same rule
    assert ChainRejectionVerifier().verify(draft, rows, GREEDY, rng) == want
    assert want.n_accepted <= (K if wrong_at is None else wrong_at)
    if wrong_at is not None:  # the second-best token is never accepted where it was drafted
        assert wrong_at not in want.path


def test_greedy_verifier_on_a_tree_forward(model: Model) -> None:
    """Root children: the best and second-best first token; below the best, its best and
    second-best; below the second, its best. Scored in one tree forward."""
    if not model.supports_tree:
        pytest.skip(f"{model.backend} cannot score trees")
    pending, chain = plausible_chain(model, None)
    base = model.n_past
    first = model.forward([pending])[0]
    model.truncate(base)
    a, b = _ranked(first)
    below_a = model.forward([pending, a])[1]
    model.truncate(base)
    below_b = model.forward([pending, b])[1]
    model.truncate(base)
    c, d = _ranked(below_a)
    e = _ranked(below_b)[0]
    draft = Draft((a, b, c, d, e), parents=(-1, -1, 0, 0, 1))
    rows = model.forward_tree([pending, *draft.tokens], [-1, *(p + 1 for p in draft.parents)])
    model.commit_tree_path(base, [0])
    model.truncate(base)
    want = expected_verdict(rows, draft)
    rng = np.random.default_rng(0)
    assert GreedyVerifier().verify(draft, rows, GREEDY, rng) == want
    assert TreeRejectionVerifier().verify(draft, rows, GREEDY, rng) == want
    # the second-best first token b is accepted only if it is the argmax of the tree's row 0
    assert (1 in want.path) == (int(rows[0].argmax()) == b)
