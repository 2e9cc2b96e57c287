"""The server's settings: one dataclass, mirrored one to one by ``edgespec serve``'s flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgespec.errors import EdgespecError

#: hosts that only this machine can reach
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True)
class ServeOptions:
    """How the server behaves.

    Attributes:
        host: interface to bind; loopback by default so nothing off the machine can connect.
        port: TCP port.
        api_key: when set, every ``/v1`` and ``/metrics`` request needs
            ``Authorization: Bearer <api_key>`` (else 401). ``/health`` stays open.
        max_queue: requests that may wait while one generates; one more gets 429.
        max_body_bytes: largest request body accepted (else 413).
        strategy: decoding strategy of every request (``edgespec generate --strategy``).
        config: the strategy's options (what ``edgespec.cli.config_from_args`` returns).
        model_name: the id clients pass as ``model``; None: the loaded model's name.
        completion_max_tokens: ``max_tokens`` of a ``/v1/completions`` request that gives
            none (16, the OpenAI default). Chat requests without one run to the context's end.
        disconnect_poll_s: seconds between checks whether a non-streaming client went away.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    max_queue: int = 8
    max_body_bytes: int = 1 << 20
    strategy: str = "autoregressive"
    config: Any = None
    model_name: str | None = None
    completion_max_tokens: int = 16
    disconnect_poll_s: float = 0.1

    def __post_init__(self) -> None:
        if self.max_queue < 0:
            raise EdgespecError(f"--max-queue must be >= 0, got {self.max_queue}")
        if self.max_body_bytes < 1024:
            raise EdgespecError(
                f"--max-body must be at least 1024 bytes, got {self.max_body_bytes}"
            )
        if not 0 <= self.port <= 65535:
            raise EdgespecError(f"--port must be in 0..65535, got {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            raise EdgespecError("--api-key is empty; pass a non-empty key or omit the flag")

    @property
    def loopback(self) -> bool:
        """True when only this machine can reach the server."""
        return self.host in LOOPBACK
