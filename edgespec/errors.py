"""User-facing errors.

Every problem a user can cause (a bad path, a corrupt model, an unknown name, a bad flag)
is raised as :class:`EdgespecError` with a one-line message that names the problem and the
fix. The CLI prints that line and exits with status 2; it never prints a traceback for them.
"""

from __future__ import annotations


class EdgespecError(Exception):
    """A problem with the user's input or environment, explained in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class ModelLoadError(EdgespecError):
    """A model file or folder could not be read (missing, truncated, corrupt, unsupported)."""


class ChecksumError(EdgespecError):
    """A file's sha256 does not match the value it was pinned to."""


class OfflineError(EdgespecError):
    """A network resource (the Hugging Face hub, PyPI) could not be reached."""


def missing_extra(package: str, extra: str) -> EdgespecError:
    """The error for an optional dependency that is not installed."""
    return EdgespecError(
        f"this needs the '{package}' package, which is not installed; "
        f"run: pip install 'edgespec[{extra}]' (or ./install.sh for everything)"
    )
