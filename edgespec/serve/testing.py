"""Fakes and helpers for testing the server (and clients of it) without model files:
a character-level fake runtime with a chat template, and a server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from edgespec.runtime import Runtime
from edgespec.runtimes.base import LoadOptions, ModelSource
from edgespec.serve.app import create_app
from edgespec.serve.options import ServeOptions
from edgespec.serve.server import BackgroundServer
from edgespec.serve.worker import ModelWorker
from edgespec.testing import CharTokenizer, PrefixModel

#: the fake model's alphabet: token i is ALPHABET[i]
ALPHABET = " abcdefghijklmnopqrstuvwxyz.,<>|"
#: a chat template the fake tokenizer can encode: <role|content> per message, then the
#: assistant's opening
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m.role }}|{{ m.content }}>{% endfor %}"
    "{% if add_generation_prompt %}<assistant|{% endif %}"
)
#: the id the fake model is served under
FAKE_NAME = "fake-model"


class SlowPrefixModel(PrefixModel):
    """A :class:`PrefixModel` whose every forward first sleeps ``delay_s`` seconds."""

    def __init__(self, delay_s: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.delay_s = delay_s

    def forward(self, tokens: Sequence[int], *, all_logits: bool = True) -> np.ndarray:
        if self.delay_s:
            time.sleep(self.delay_s)
        return super().forward(tokens, all_logits=all_logits)


def fake_runtime(n_ctx: int = 256, delay_s: float = 0.0, seed: int = 0) -> Runtime:
    """A runtime over :class:`SlowPrefixModel` and a character tokenizer with a chat
    template; deterministic, so two built with one seed generate the same tokens."""
    tok = CharTokenizer(alphabet=ALPHABET)
    tok.chat_template = CHAT_TEMPLATE
    return Runtime(
        tokenizer=tok,
        target=SlowPrefixModel(delay_s, vocab_size=len(ALPHABET), seed=seed, n_ctx=n_ctx),
        backend="fake",
        source=ModelSource("gguf", __file__, FAKE_NAME),  # type: ignore[arg-type]
        options=LoadOptions(n_ctx=n_ctx),
    )


@contextlib.contextmanager
def serving(rt: Runtime, **options: Any) -> Iterator[BackgroundServer]:
    """``rt`` served on 127.0.0.1 (a free port) for the ``with`` block. Logging is left to
    the caller's configuration (uvicorn's loggers propagate), so pytest's ``caplog`` sees it.
    ``srv.app`` is the starlette app."""
    app = create_app(rt, ServeOptions(**options))
    with BackgroundServer(app, "127.0.0.1", log_config=None) as srv:
        srv.app = app
        yield srv


def worker_of(srv: BackgroundServer) -> ModelWorker:
    """The server's only :class:`ModelWorker`."""
    return next(iter(srv.app.state.server.workers.values()))


def wait_idle(srv: BackgroundServer, timeout_s: float = 10.0) -> float:
    """Seconds until the model is idle with nothing waiting; AssertionError after
    ``timeout_s``."""
    w, t0 = worker_of(srv), time.perf_counter()
    while w.busy or w.queue_depth:
        if time.perf_counter() - t0 > timeout_s:
            raise AssertionError(f"the model was still busy after {timeout_s} s")
        time.sleep(0.005)
    return time.perf_counter() - t0
