import numpy as np
import pytest

from edgespec.errors import EdgespecError
from edgespec.sampling import GenerationParams, draw, sample, target_probs

pytestmark = pytest.mark.unit


def test_greedy_is_argmax():
    logits = np.array([0.1, 3.0, -1.0, 2.9], dtype=np.float32)
    p = GenerationParams()
    assert sample(logits, p, np.random.default_rng(0)) == 1
    assert target_probs(logits, p).tolist() == [0, 1, 0, 0]


def test_temperature_softmax_exact():
    logits = np.array([0.0, 1.0, 2.0])
    p = target_probs(logits, GenerationParams(temperature=2.0))
    expect = np.exp(logits / 2) / np.exp(logits / 2).sum()
    np.testing.assert_allclose(p, expect, rtol=1e-12)


def test_top_k_and_top_p_filter():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    pk = target_probs(logits, GenerationParams(temperature=1.0, top_k=2))
    np.testing.assert_allclose(pk, [0.625, 0.375, 0, 0], rtol=1e-12)
    pp = target_probs(logits, GenerationParams(temperature=1.0, top_p=0.79))
    np.testing.assert_allclose(pp, [0.625, 0.375, 0, 0], rtol=1e-12)
    pp2 = target_probs(logits, GenerationParams(temperature=1.0, top_p=0.81))
    np.testing.assert_allclose(pp2, np.array([0.5, 0.3, 0.15, 0]) / 0.95, rtol=1e-12)


def test_draw_matches_distribution_and_seed_repeats():
    p = np.array([0.1, 0.2, 0.3, 0.4])
    rng = np.random.default_rng(1)
    counts = np.bincount([draw(p, rng) for _ in range(20000)], minlength=4) / 20000
    assert np.abs(counts - p).max() < 0.015
    a = [draw(p, np.random.default_rng(7)) for _ in range(5)]
    b = [draw(p, np.random.default_rng(7)) for _ in range(5)]
    assert a == b


@pytest.mark.parametrize(
    "kw",
    [
        {"max_new_tokens": 0},
        {"max_new_tokens": -3},
        {"temperature": -1.0},
        {"temperature": float("nan")},
        {"top_p": 0.0},
        {"top_k": -1},
    ],
)
def test_bad_params_raise_one_line(kw):
    with pytest.raises(EdgespecError) as e:
        GenerationParams(**kw)
    assert "\n" not in str(e.value)


def test_params_json_round_trip():
    p = GenerationParams(max_new_tokens=7, temperature=0.5, stop=("x", "yz"), seed=3)
    assert GenerationParams.from_dict(p.to_dict()) == p
