"""Running the app with uvicorn: in the foreground (the CLI) or in a background thread
(tests, notebooks).

We bind the socket ourselves, so a port in use is a one-line :class:`EdgespecError` before
anything starts, and port 0 picks a free port whose number is known before serving.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from edgespec.errors import EdgespecError, missing_extra

#: seconds open connections (a long stream) get to finish at shutdown before they are cut
GRACEFUL_S = 3


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise EdgespecError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; pass another --port "
            "(or --host)"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def uvicorn_server(app: Any, *, log_config: Any = "default", access_log: bool = True) -> Any:
    """A ``uvicorn.Server`` for ``app`` ("default": uvicorn's logging; None: leave logging to
    the caller, as tests do so that pytest captures it)."""
    try:
        import uvicorn
    except ImportError:
        raise missing_extra("uvicorn", "serve") from None
    kwargs: dict[str, Any] = {} if log_config == "default" else {"log_config": log_config}
    config = uvicorn.Config(
        app,
        lifespan="on",
        access_log=access_log,
        timeout_graceful_shutdown=GRACEFUL_S,
        **kwargs,
    )
    return uvicorn.Server(config)


class BackgroundServer:
    """Serve ``app`` on ``host`` (a free port) in a daemon thread; a context manager.

    Attributes:
        url: ``http://host:port``.
        port: the port chosen.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", **server_kwargs: Any) -> None:
        self.sock = bind(host, 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.app = app
        self.server = uvicorn_server(app, **server_kwargs)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self, timeout_s: float = 60.0) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server stopped during startup; see the log")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start within {timeout_s} s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=GRACEFUL_S + 30)
        self.sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
