"""Backend choice from stored cost curve: the cheapest one-token forward wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgespec.runtime import pick_backend
from edgespec.runtimes import BACKENDS, PREFERRED, LoadOptions, ModelSource
from edgespec.speculative import cost_curves

SOURCE = ModelSource("gguf", Path("/models/tiny.Q4_0.gguf"), "tiny")


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path))
    for name in BACKENDS.names():  # every backend counts as installed here
        monkeypatch.setattr(BACKENDS.get(name), "available", classmethod(lambda cls: True))


def _store(backend: str, one_token_s: float, *, variant: str = "", **extra: object) -> None:
    key = cost_curves.curve_key(backend, str(SOURCE.path), None, variant)
    cost_curves.save_curve(
        key, {"verify": {"1": one_token_s, "2": 2 * one_token_s}, "backend": backend, **extra}
    )


def test_no_profiles_keeps_the_preference_order() -> None:
    assert pick_backend(SOURCE, None, LoadOptions()) == PREFERRED["gguf"][0]
    _store("onnx", 0.001)  # one profile alone compares nothing
    assert pick_backend(SOURCE, None, LoadOptions()) == PREFERRED["gguf"][0]


@pytest.mark.parametrize(
    ("llamacpp_s", "onnx_s", "want"), [(0.0127, 0.0081, "onnx"), (0.0127, 0.0200, "llamacpp")]
)
def test_cheapest_one_token_forward_wins(llamacpp_s: float, onnx_s: float, want: str) -> None:
    _store("llamacpp", llamacpp_s)
    _store("onnx", onnx_s, variant="shared-gguf-exact", weights="auto")
    assert pick_backend(SOURCE, None, LoadOptions()) == want
    # the user's choice always stands, and other threads or weights have no profile
    assert pick_backend(SOURCE, "numpy", LoadOptions()) == "numpy"
    assert pick_backend(SOURCE, None, LoadOptions(n_threads=1)) == PREFERRED["gguf"][0]
    assert pick_backend(SOURCE, None, LoadOptions(weights="fp32")) == PREFERRED["gguf"][0]
    assert pick_backend(SOURCE, None, LoadOptions(spin=False)) == PREFERRED["gguf"][0]


def test_other_models_do_not_count() -> None:
    _store("llamacpp", 0.02)
    key = cost_curves.curve_key("onnx", "/models/other.gguf", None)
    cost_curves.save_curve(key, {"verify": {"1": 0.001}, "backend": "onnx"})
    assert pick_backend(SOURCE, None, LoadOptions()) == PREFERRED["gguf"][0]
