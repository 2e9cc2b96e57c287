"""Where edgespec keeps its cache: ``$EDGESPEC_HOME`` (default ``~/.cache/edgespec``)."""

from __future__ import annotations

import os
from pathlib import Path


def edgespec_home() -> Path:
    """The cache root. Models live in ``models/``, converted artifacts in ``converted/``."""
    return Path(os.environ.get("EDGESPEC_HOME", Path.home() / ".cache" / "edgespec")).expanduser()


def models_dir() -> Path:
    return edgespec_home() / "models"


def converted_dir() -> Path:
    return edgespec_home() / "converted"
