"""How ``measure_verify_curve`` times forwards, on a fake clock the model advances."""

from __future__ import annotations

import types

import pytest

from edgespec.speculative import cost_curves
from edgespec.testing import PrefixModel


class Clocked(PrefixModel):
    """A forward of n tokens takes ``1 + 0.1 (n - 1)`` units of a fake clock, except that
    the first ``slow`` one-token forwards after a forward of 16 or more tokens (the prefix)
    take 2 units (what SmolLM2 on tvm does after its prefix: 6.6 ms falling to 4 over six
    forwards)."""

    def __init__(self, slow: int) -> None:
        super().__init__(vocab_size=32, seed=0)
        self.now, self.slow, self.left = 0.0, slow, 0

    def forward(self, tokens, *, all_logits=True):
        n = len(tokens)
        if n >= 16:
            self.left = self.slow
        if n == 1 and self.left:
            self.left -= 1
            self.now += 2.0
        else:
            self.now += 1.0 + 0.1 * (n - 1)
        return super().forward(tokens, all_logits=all_logits)


@pytest.fixture
def clocked(monkeypatch):
    model = Clocked(slow=4)
    clock = types.SimpleNamespace(perf_counter=lambda: model.now)
    monkeypatch.setattr(cost_curves, "time", clock)
    return model


def test_one_token_is_not_timed_in_the_slow_spell_after_the_prefix(clocked):
    """Timed alone and first, c(1) fell in the spell and came out above c(2) (the old
    order gives 2.0 here); with the sizes taking turns after untimed plain steps it is the
    plain step's cost, below c(2)."""
    curve = cost_curves.measure_verify_curve(clocked, range(1, 10), context=16, reps=5)
    assert curve[1] == pytest.approx(1.0)
    for n in range(2, 10):
        assert curve[n] == pytest.approx(1.0 + 0.1 * (n - 1))
    assert curve[0] == pytest.approx(0.0)


def test_sizes_take_turns(monkeypatch):
    """Each round times every size once (1 2 3, 1 2 3, ...), each after a one-token forward,
    and a size other than 1 is followed by the one-token forward that measures the switch."""
    model = PrefixModel(vocab_size=32, seed=0)
    model.forward_sizes.clear()
    cost_curves.measure_verify_curve(model, [1, 2, 3], context=4, reps=2)
    sizes = model.forward_sizes
    assert sizes[:2] == [4, 3]  # the prefix, the warm-up at the largest size
    settled = len(sizes) - 2 - 16
    assert 2 <= settled <= cost_curves.SETTLE_MAX  # untimed one-token forwards
    assert sizes[2 : 2 + settled] == [1] * settled
    assert sizes[2 + settled :] == [1, 1, 1, 2, 1, 1, 3, 1] * 2


def test_settle_runs_for_a_while_within_bounds(monkeypatch):
    """At least ``at_least`` calls; then until SETTLE_S seconds or SETTLE_MAX calls."""
    now = [0.0]
    monkeypatch.setattr(cost_curves, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))

    def step(seconds: float):
        def advance(i: int) -> None:
            now[0] += seconds

        return advance

    assert cost_curves.settle(step(1.0), 3) == 3  # slow steps: only the minimum
    assert cost_curves.settle(step(0.0625)) == 4  # past 0.2 s after 4 steps of 62.5 ms
    assert cost_curves.settle(step(0.0)) == cost_curves.SETTLE_MAX
