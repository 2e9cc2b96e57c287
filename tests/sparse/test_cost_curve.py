"""The controller knows chunk sparsity: sparse cost curves are measured on real text, stored
under their own key variant, and a flatter curve makes the controller draft longer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgespec.cli import main
from edgespec.speculative import cost_curves
from edgespec.speculative.controller import Acceptance, Controller, CostCurve

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _curve(per_token: float, n_max: int = 9) -> dict[int, float]:
    """c(n) = 1 + per_token * (n - 1) (seconds, arbitrary unit)."""
    return {n: 1.0 + per_token * (n - 1) for n in range(1, n_max + 1)}


def _pick(curve: dict[int, float], alpha: float = 0.7) -> int:
    c = Controller(CostCurve(dict(curve)), {"p": Acceptance.prior(8, alpha)}, max_k=8)
    return c.choose(100).k


def test_flatter_sparse_curve_picks_a_longer_draft():
    """Dense verify grows ~0.4 c(1) per token (compute-bound, as llama.cpp measured on
    SmolLM2: 3.8x for 9 tokens); a chunk-sparse curve is flatter. Same acceptance: the
    controller must draft longer on the flatter curve."""
    dense, sparse = _curve(0.35), _curve(0.08)
    k_dense, k_sparse = _pick(dense), _pick(sparse)
    assert k_sparse > k_dense >= 0
    assert k_sparse >= 3


def test_session_uses_the_sparse_variant_curve(model_dir):
    """A blockffn runtime's session loads the curve stored under its sparse key, not the
    dense one of the same model, and picks its draft length from it."""
    import edgespec
    from edgespec.speculative.config import SpecConfig

    with edgespec.load(model_dir, backend="blockffn", n_threads=1, progress=False) as rt:
        key = rt.curve_key()
        assert key.startswith("blockffn:sparse-numpy|")
        dense_key = cost_curves.curve_key("blockffn", rt.source.digest(), 1)
        cost_curves.save_curve(key, {"verify": {str(n): s for n, s in _curve(0.08).items()}})
        cost_curves.save_curve(dense_key, {"verify": {str(n): s for n, s in _curve(0.35).items()}})
        cfg = SpecConfig(proposers=("ngram",), tree=False)
        session = rt.spec_session(cfg, allow_plain=True)
        assert session.curve_source == "profile"
        assert session.controller.verify(9) == pytest.approx(_curve(0.08)[9])
        session.controller.acceptance = {"ngram": Acceptance.prior(8, 0.7)}
        assert session.controller.choose(100).k == _pick(_curve(0.08))


def test_curve_on_real_text_uses_text_chunks():
    """With ``tokens``, the prefix and every timed forward are consecutive text tokens."""
    from edgespec.testing import PrefixModel

    seen: list[list[int]] = []

    class Recording(PrefixModel):
        def forward(self, tokens, *, all_logits=True):
            seen.append(list(tokens))
            return super().forward(tokens, all_logits=all_logits)

    m = Recording(vocab_size=64, seed=0)
    text = np.random.default_rng(0).integers(0, 64, 200).tolist()
    cost_curves.measure_verify_curve(m, [1, 3, 5], context=16, reps=2, tokens=text)
    assert seen[0] == text[:16]
    joined = ",".join(map(str, text))
    for toks in seen[1:]:
        assert ",".join(map(str, toks)) in joined
    with pytest.raises(ValueError, match="text tokens"):
        cost_curves.measure_verify_curve(m, [1, 3, 5], context=16, tokens=text[:20])


def test_calibrate_stores_a_distinct_sparse_variant(model_dir, capsys, home):
    argv = ["calibrate", "-m", str(model_dir), "-b", "blockffn", "-t", "1", "-q"]
    assert main([*argv, "--max-k", "3", "--reps", "1", "--context", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["key"].startswith("blockffn:sparse-numpy|") and out["key"].endswith("|threads=1")
    assert out["tokens"] == "calibration text"
    by = out["sparsity"]["by_chunk"]
    assert {"1", "2", "3", "4"} <= set(by)
    # the union of a longer chunk of real text can only cover more blocks
    assert by["4"]["chunk_sparsity"] <= by["1"]["chunk_sparsity"]
    stored = cost_curves.load_curves()
    assert list(stored) == [out["key"]]  # stored under the sparse key only
    assert out["tree_overhead"] is None  # no tree forwards in this backend: nothing timed
    assert set(stored[out["key"]]["verify"]) >= {"1", "2", "3", "4"}
    # the same model's dense key (no variant) is another key: the curves never mix
    digest = out["key"].split("|")[1]
    assert cost_curves.curve_key("blockffn", digest, 1) != out["key"]
