"""The starlette app: OpenAI's ``/v1/models``, ``/v1/completions`` and
``/v1/chat/completions`` (streaming as server-sent events), plus ``/health`` and ``/metrics``.

Every error is OpenAI's one-line ``{"error": {"message", "type", "param", "code"}}``:
400 bad JSON, types or values; 401 missing or wrong API key; 404 unknown model or path;
413 body too large; 429 queue full; 500 a generation that failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edgespec.runtime import Runtime
from edgespec.serve.metrics import Metrics
from edgespec.serve.options import ServeOptions
from edgespec.serve.protocol import (
    ApiError,
    ChatShape,
    Shape,
    TextShape,
    parse_body,
    parse_request,
    sse,
)
from edgespec.serve.worker import Job, ModelWorker

log = logging.getLogger("edgespec.serve")

Handler = Callable[[Request], Awaitable[Response]]

#: how much of an oversize body is read and discarded before the 413 (so the client sees
#: the answer instead of a reset connection), as a multiple of the limit
DRAIN_FACTOR = 16


class Server:
    """The app's state: options, metrics and one :class:`ModelWorker` per model.

    Args:
        options: server settings.
        runtime: a loaded model (the caller closes it), or None to build one at startup...
        runtime_factory: ... with this callable (the server closes that one at shutdown).
    """

    def __init__(
        self,
        options: ServeOptions,
        runtime: Runtime | None = None,
        runtime_factory: Callable[[], Runtime] | None = None,
    ) -> None:
        if (runtime is None) == (runtime_factory is None):
            raise ValueError("pass exactly one of runtime and runtime_factory")
        self.options = options
        self.metrics = Metrics()
        self.workers: dict[str, ModelWorker] = {}
        self._runtime, self._factory = runtime, runtime_factory
        self._owned: Runtime | None = None
        self.started = time.time()

    async def startup(self) -> None:
        rt = self._runtime
        if rt is None:
            assert self._factory is not None
            rt = self._owned = await asyncio.to_thread(self._factory)
        name = self.options.model_name or rt.source.name
        worker = ModelWorker(
            name,
            rt,
            strategy=self.options.strategy,
            config=self.options.config,
            max_queue=self.options.max_queue,
            metrics=self.metrics,
        )
        await worker.start()
        self.workers[name] = worker
        log.info(
            "serving model '%s' (%s, strategy %s, context %d tokens)",
            name,
            rt.backend,
            self.options.strategy,
            rt.options.n_ctx,
        )

    async def shutdown(self) -> None:
        for w in self.workers.values():
            await w.stop()
        if self._owned is not None:
            self._owned.close()

    def worker(self, model: str | None) -> ModelWorker:
        """The worker for ``model`` (None: the only one), or 404."""
        if model is None and len(self.workers) == 1:
            return next(iter(self.workers.values()))
        if model in self.workers:
            return self.workers[model]
        raise ApiError(
            404,
            f"model '{model}' is not served here; available: {', '.join(self.workers)}",
            code="model_not_found",
            param="model",
        )

    def check_auth(self, request: Request) -> None:
        key = self.options.api_key
        if key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(
                401,
                "missing API key: send the header 'Authorization: Bearer <key>' with the key "
                "the server was started with (--api-key)",
                type="authentication_error",
                code="missing_api_key",
            )
        if not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise ApiError(
                401,
                "wrong API key: use the key the server was started with (--api-key)",
                type="authentication_error",
                code="invalid_api_key",
            )

    async def read_body(self, request: Request) -> bytes:
        """The body, at most ``max_body_bytes`` (else 413)."""
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _drain(request, limit * DRAIN_FACTOR)
            raise _too_large(int(declared), limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                await _drain(request, limit * DRAIN_FACTOR)
                raise _too_large(size, limit, at_least=True)
            chunks.append(chunk)
        return b"".join(chunks)


def _too_large(size: int, limit: int, at_least: bool = False) -> ApiError:
    more = "more than " if at_least else ""
    return ApiError(
        413,
        f"the request body is {more}{size} bytes; the limit is {limit} bytes "
        "(shorten the request or restart the server with a larger --max-body)",
        code="body_too_large",
    )


async def _drain(request: Request, cap: int) -> None:
    """Read and drop what is left of the body, up to ``cap`` bytes."""
    seen = 0
    with contextlib.suppress(Exception):
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > cap:
                break


def error_response(exc: ApiError) -> JSONResponse:
    headers = {}
    if exc.status == 429:
        headers["Retry-After"] = "1"
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def _endpoint(path: str, fn: Handler, *, auth: bool = True) -> Route:
    """A route whose errors become OpenAI error bodies and whose responses are counted."""

    async def handler(request: Request) -> Response:
        server: Server = request.app.state.server
        try:
            if auth:
                server.check_auth(request)
            response = await fn(request)
        except ApiError as exc:
            response = error_response(exc)
        except Exception as exc:  # a bug: answer 500 in one line and log the traceback
            log.exception("internal error on %s", path)
            response = error_response(
                ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
            )
        server.metrics.responses.labels(path, str(response.status_code)).inc()
        return response

    methods = ["POST"] if path.endswith("completions") else ["GET"]
    return Route(path, handler, methods=methods)


# ---- endpoints -----------------------------------------------------------------------------


async def health(request: Request) -> Response:
    server: Server = request.app.state.server
    return JSONResponse(
        {
            "status": "ok",
            "uptime_s": round(time.time() - server.started, 3),
            "models": [
                {"id": name, "busy": w.busy, "queue_depth": w.queue_depth, "max_queue": w.max_queue}
                for name, w in server.workers.items()
            ],
        }
    )


async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.server.metrics.text()
    return Response(body, media_type=content_type)


def _model_card(server: Server, name: str) -> dict[str, Any]:
    w = server.workers[name]
    return {
        "id": name,
        "object": "model",
        "created": int(server.started),
        "owned_by": "edgespec",
        "edgespec": {
            "backend": w.runtime.backend,
            "strategy": w.strategy,
            "n_ctx": w.runtime.options.n_ctx,
            "draft": w.runtime.draft is not None,
        },
    }


async def list_models(request: Request) -> Response:
    server: Server = request.app.state.server
    return JSONResponse(
        {"object": "list", "data": [_model_card(server, n) for n in server.workers]}
    )


async def get_model(request: Request) -> Response:
    server: Server = request.app.state.server
    name = server.worker(request.path_params["model"]).name
    return JSONResponse(_model_card(server, name))


async def completions(request: Request) -> Response:
    return await _generate(request, TextShape)


async def chat_completions(request: Request) -> Response:
    return await _generate(request, ChatShape)


async def _generate(request: Request, shape_cls: type[Shape]) -> Response:
    server: Server = request.app.state.server
    body = parse_body(await server.read_body(request))
    req = parse_request(body, chat=shape_cls is ChatShape)
    worker = server.worker(req.model)
    ids = await asyncio.to_thread(worker.encode, req)
    default = None if req.messages is not None else server.options.completion_max_tokens
    params = req.with_budget(worker.max_new_tokens(req, len(ids), default))
    job = worker.submit(ids, params)
    shape = shape_cls(worker.name)
    if req.stream:
        return StreamingResponse(
            _events(job, shape, req.include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return await _collect(job, shape, request, server.options.disconnect_poll_s)


async def _events(job: Job, shape: Shape, include_usage: bool) -> AsyncIterator[bytes]:
    """The server-sent events of one streaming request. Leaving early (the client went
    away) cancels the job."""
    try:
        for chunk in shape.opening_chunks():
            yield sse(chunk)
        while True:
            kind, value = await job.events.get()
            if kind == "delta":
                yield sse(shape.chunk(value))
                continue
            if kind == "done":
                for chunk in shape.final_chunks(value.stats, job.queue_s, include_usage):
                    yield sse(chunk)
                yield sse("[DONE]")
            elif kind == "error":
                yield sse(_generation_failed(value).body())
            return
    finally:
        job.cancel()


async def _collect(job: Job, shape: Shape, request: Request, poll_s: float) -> Response:
    """The whole response of a non-streaming request; a client that goes away meanwhile
    cancels the job (checked every ``poll_s`` seconds)."""
    watcher = asyncio.create_task(_watch_disconnect(request, job, poll_s))
    try:
        kind, value = await job.events.get()
        while kind == "delta":
            kind, value = await job.events.get()
        if kind == "done":
            return JSONResponse(shape.response(value.text, value.stats, job.queue_s))
        if kind == "error":
            raise _generation_failed(value)
        return Response(status_code=499)  # the client closed the request; nobody reads this
    finally:
        watcher.cancel()
        job.cancel()


async def _watch_disconnect(request: Request, job: Job, poll_s: float) -> None:
    while not job.finished:
        if await request.is_disconnected():
            job.cancel()
            return
        await asyncio.sleep(poll_s)


def _generation_failed(exc: Exception) -> ApiError:
    return ApiError(500, f"the generation failed: {type(exc).__name__}: {exc}", type="server_error")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    hint = {
        404: "; endpoints: /v1/models, /v1/completions, /v1/chat/completions, /health, /metrics"
    }.get(exc.status_code, "")
    return error_response(
        ApiError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}{hint}")
    )


def create_app(
    runtime: Runtime | None = None,
    options: ServeOptions | None = None,
    *,
    runtime_factory: Callable[[], Runtime] | None = None,
) -> Starlette:
    """The ASGI app serving ``runtime`` (or the one ``runtime_factory`` builds at startup).

    Run it with uvicorn (see :mod:`edgespec.serve.server`); the app's lifespan starts the
    model worker and stops it (cancelling what still runs) at shutdown.
    """
    server = Server(options or ServeOptions(), runtime, runtime_factory)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await server.startup()
        try:
            yield
        finally:
            await server.shutdown()

    routes = [
        _endpoint("/health", health, auth=False),
        _endpoint("/metrics", metrics),
        _endpoint("/v1/models", list_models),
        _endpoint("/v1/models/{model:path}", get_model),
        _endpoint("/v1/completions", completions),
        _endpoint("/v1/chat/completions", chat_completions),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error}
    )
    app.state.server = server
    return app
