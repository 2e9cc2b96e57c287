"""One generation at a time per model: a bounded asyncio queue in front of one thread.

The event loop never runs a model. A request becomes a :class:`Job`; :meth:`ModelWorker.submit`
puts it on a queue of at most ``max_queue`` waiting jobs (full: 429); one consumer task hands
jobs, in order, to a single worker thread, which iterates the :class:`~edgespec.engine.Generation`
and sends each text piece back to the loop. Between pieces (one token, or one held back for
a stop string) the thread checks the job's cancel flag; once set, it stops consuming and
closes the generator, so the model is free again after at most the token being computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from edgespec.errors import EdgespecError
from edgespec.runtime import Runtime
from edgespec.sampling import GenerationParams
from edgespec.serve.metrics import Metrics
from edgespec.serve.protocol import ApiError, CompletionRequest, bad_request

log = logging.getLogger("edgespec.serve")

#: event kinds a job sends to its request handler: ("delta", str), ("done", GenerationResult),
#: ("cancelled", None), ("error", Exception)
Event = tuple[str, Any]


@dataclass
class Job:
    """One request's generation.

    Attributes:
        prompt_ids: the prompt's token ids.
        params: sampling parameters with the final ``max_new_tokens``.
        events: what the worker thread sends back (see ``Event``); read on the loop.
        enqueued: ``time.perf_counter()`` when submitted.
        queue_s: seconds spent waiting before the generation started.
        pieces: text pieces produced so far (written by the worker thread).
        pieces_at_cancel: ``pieces`` when :meth:`cancel` was called; None if never.
        pieces_after_cancel: pieces produced after the cancel flag was set (<= 1 by design).
    """

    prompt_ids: list[int]
    params: GenerationParams
    events: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    enqueued: float = field(default_factory=time.perf_counter)
    queue_s: float = 0.0
    pieces: int = 0
    pieces_at_cancel: int | None = None
    pieces_after_cancel: int | None = None
    finished: bool = False
    _cancel: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Ask the worker to stop this job at the next piece (no-op once finished)."""
        if not self.finished and not self._cancel.is_set():
            self.pieces_at_cancel = self.pieces
            self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


class ModelWorker:
    """Runs the jobs of one model, one at a time, in submission order.

    Args:
        name: the model id clients use.
        runtime: the loaded model.
        strategy: decoding strategy name.
        config: the strategy's options.
        max_queue: jobs that may wait while one runs; more are refused with 429.
        metrics: where counters and gauges go.
    """

    def __init__(
        self,
        name: str,
        runtime: Runtime,
        *,
        strategy: str,
        config: Any,
        max_queue: int,
        metrics: Metrics,
    ) -> None:
        self.name, self.runtime, self.strategy, self.config = name, runtime, strategy, config
        self.max_queue, self.metrics = max_queue, metrics
        self.running: Job | None = None
        self.last_cancelled: Job | None = None
        self._queue: asyncio.Queue[Job] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"edgespec-gen-{name}")
        self._loop: asyncio.AbstractEventLoop | None = None
        metrics.watch(name, self)

    # ---- life cycle (on the event loop) ----------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # the queue holds waiting jobs only: the consumer takes a job off before running it
        self._queue = asyncio.Queue(maxsize=max(self.max_queue, 1))
        self._task = asyncio.create_task(self._consume(), name=f"edgespec-worker-{self.name}")

    async def stop(self) -> None:
        """Cancel waiting and running jobs and wait for the thread to let go of the model."""
        if self._queue is not None:
            while not self._queue.empty():
                self._queue.get_nowait().cancel()
        if self.running is not None:
            self.running.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    @property
    def queue_depth(self) -> int:
        """Jobs waiting (not counting the one running)."""
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def busy(self) -> bool:
        return self.running is not None

    # ---- requests ------------------------------------------------------------------------

    def encode(self, req: CompletionRequest) -> list[int]:
        """The prompt's token ids, checked against the vocabulary and the context.

        Raises:
            ApiError: 400 for a prompt the model cannot take.
        """
        rt, field_name = self.runtime, "prompt"
        try:
            if req.messages is not None:
                field_name = "messages"
                ids = self._encode_chat(req.messages)
            elif isinstance(req.prompt, list):
                ids = req.prompt
                bad = [t for t in ids if not 0 <= t < rt.tokenizer.vocab_size]
                if bad:
                    raise bad_request(
                        f"token id {bad[0]} is outside the vocabulary "
                        f"(0..{rt.tokenizer.vocab_size - 1})",
                        "prompt",
                    )
            else:
                ids = rt.encode_prompt(str(req.prompt))
        except EdgespecError as exc:
            raise bad_request(str(exc), field_name) from None
        n_ctx = rt.options.n_ctx
        if len(ids) >= n_ctx:
            raise ApiError(
                400,
                f"the prompt is {len(ids)} tokens but the context holds {n_ctx} tokens "
                f"(prompt and completion together); send at most {n_ctx - 1} prompt tokens "
                "or restart the server with a larger context",
                code="context_length_exceeded",
                param=field_name,
            )
        return ids

    def _encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        tok = self.runtime.tokenizer
        if not tok.chat_template:
            raise bad_request(
                f"model '{self.name}' has no chat template; use /v1/completions", "messages"
            )
        return self.runtime.encode_messages(messages)

    def max_new_tokens(self, req: CompletionRequest, prompt_len: int, default: int | None) -> int:
        """The request's ``max_tokens``; else ``default``; else up to the context's end."""
        if req.max_tokens is not None:
            return req.max_tokens
        return default if default is not None else self.runtime.options.n_ctx - prompt_len

    def submit(self, prompt_ids: list[int], params: GenerationParams) -> Job:
        """Queue a job; 429 when ``max_queue`` jobs already wait (or, with ``max_queue`` 0,
        when one is running)."""
        assert self._queue is not None, "ModelWorker.start() was not awaited"
        full = self._queue.full() or (self.max_queue == 0 and self.busy)
        if full:
            self.metrics.rejected.labels(self.name).inc()
            raise ApiError(
                429,
                f"the server is busy: {self.queue_depth} request(s) already wait for model "
                f"'{self.name}' (--max-queue {self.max_queue}); retry later",
                type="rate_limit_error",
                code="queue_full",
            )
        job = Job(prompt_ids, params)
        self._queue.put_nowait(job)
        return job

    # ---- the consumer (loop) and the generation (thread) --------------------------------

    async def _consume(self) -> None:
        assert self._queue is not None and self._loop is not None
        while True:
            job = await self._queue.get()
            if job.cancelled:  # the client left while waiting
                self._finish(job, ("cancelled", None))
                continue
            job.queue_s = time.perf_counter() - job.enqueued
            self.running = job
            try:
                await self._loop.run_in_executor(self._executor, self._run, job)
            finally:
                self.running = None

    def _run(self, job: Job) -> None:
        """Generate ``job`` on the worker thread, sending events back to the loop."""
        try:
            gen = self.runtime.start(
                job.prompt_ids, strategy=self.strategy, config=self.config, params=job.params
            )
            pieces = iter(gen)
            try:
                for piece in pieces:
                    job.pieces += 1
                    if job.cancelled:
                        break
                    self._send(job, ("delta", piece))
            finally:
                # a generator: close() runs its finally, which stops the strategy's steps
                getattr(pieces, "close", lambda: None)()  # the model is free
            if job.cancelled:
                self._on_cancelled(job)
                self._finish(job, ("cancelled", None))
                return
            assert gen.result is not None
            self.metrics.record(self.name, gen.result.stats)
            self._finish(job, ("done", gen.result))
        except Exception as exc:  # a failed generation answers its request, never the process
            log.error("generation failed on model '%s': %s: %s", self.name, type(exc).__name__, exc)
            self._finish(job, ("error", exc))

    def _on_cancelled(self, job: Job) -> None:
        job.pieces_after_cancel = job.pieces - (job.pieces_at_cancel or 0)
        self.last_cancelled = job
        self.metrics.cancelled.labels(self.name).inc()
        log.info(
            "model '%s': client went away; generation stopped after %d more token(s)",
            self.name,
            job.pieces_after_cancel,
        )

    def _finish(self, job: Job, event: Event) -> None:
        job.finished = True
        self._send(job, event)

    def _send(self, job: Job, event: Event) -> None:
        loop = self._loop
        assert loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
            loop.call_soon_threadsafe(job.events.put_nowait, event)
