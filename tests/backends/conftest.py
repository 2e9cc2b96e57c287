"""Fixtures shared by the backend tests' modules."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def onnx_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway ``$EDGESPEC_HOME`` for the tiny models' ONNX conversions, one per session:
    every module converting the same tiny model into it finds the first module's cache."""
    return tmp_path_factory.mktemp("edgespec-home")
