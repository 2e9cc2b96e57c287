"""Fixtures for the server tests: the official ``openai`` client and a fake model served by
a real uvicorn server on 127.0.0.1 (a free port, a background thread of the test process).
Traffic only ever goes to 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
openai = pytest.importorskip("openai")

from edgespec.serve.server import BackgroundServer  # noqa: E402
from edgespec.serve.testing import fake_runtime, serving  # noqa: E402


@pytest.fixture
def make_client() -> Callable[..., Any]:
    """``make_client(srv, api_key=...)``: the official client pointed at ``srv``, with no
    retries (so a 429 is seen as one)."""

    def make(srv: BackgroundServer, api_key: str = "unused", **kwargs: Any) -> Any:
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 30.0)
        return openai.OpenAI(base_url=f"{srv.url}/v1", api_key=api_key, **kwargs)

    return make


@pytest.fixture(scope="module")
def fake_server() -> Iterator[BackgroundServer]:
    """A fast fake model, served with the defaults (autoregressive, no API key)."""
    with serving(fake_runtime()) as srv:
        yield srv
