"""kernels/compiled.py's BuildChoice: the CPU's best choice unless a block overrides it."""

from __future__ import annotations

import pytest

from edgespec.errors import EdgespecError
from edgespec.kernels.compiled import BuildChoice

pytestmark = [pytest.mark.unit]


def test_override_holds_inside_its_block_only() -> None:
    best = ["b"]
    choice = BuildChoice("widget", ["a", "b"], lambda: best[0])
    assert choice.current() == "b"
    with choice.building_with("a"):
        assert choice.current() == "a"
    assert choice.current() == "b"
    with choice.building_with(None):  # None: the CPU's best, whatever it is now
        best[0] = "a"
        assert choice.current() == "a"
    with pytest.raises(RuntimeError), choice.building_with("b"):
        raise RuntimeError("a failed build")
    assert choice.current() == "a"  # restored after the failure too


def test_unknown_choice_is_one_line() -> None:
    choice = BuildChoice("widget", ["a", "b"], lambda: "a")
    with pytest.raises(EdgespecError, match="^unknown widget c; known: a, b$"):
        with choice.building_with("c"):
            pass
