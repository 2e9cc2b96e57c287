"""``/metrics``: Prometheus text exposition through ``prometheus_client``, one registry per app
(so two servers in one process, as in the tests, never share counters).

Series (label ``model``): generated and prompt tokens, decode seconds (``rate(tokens) /
rate(seconds)`` is the served tokens/s), tokens/s and acceptance of the last generation,
proposed and accepted draft tokens, queue depth, busy, refusals (429) and cancellations;
and HTTP responses by endpoint and status.
"""

from __future__ import annotations

from typing import Any

from edgespec.stats import Stats


class Metrics:
    """The server's counters and gauges."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = r = CollectorRegistry()
        m = ["model"]
        self.responses = Counter(
            "edgespec_http_responses",
            "HTTP responses by endpoint and status",
            ["path", "status"],
            registry=r,
        )
        self.generated = Counter("edgespec_generated_tokens", "new tokens generated", m, registry=r)
        self.prompt = Counter("edgespec_prompt_tokens", "prompt tokens processed", m, registry=r)
        self.decode_seconds = Counter(
            "edgespec_generation_seconds",
            "wall seconds spent generating, prefill included",
            m,
            registry=r,
        )
        self.generations = Counter("edgespec_generations", "finished generations", m, registry=r)
        self.tokens_per_s = Gauge(
            "edgespec_tokens_per_second",
            "decode tokens/s of the last finished generation (prefill excluded)",
            m,
            registry=r,
        )
        self.acceptance = Gauge(
            "edgespec_acceptance_rate",
            "accepted / proposed draft tokens of the last generation that drafted",
            m,
            registry=r,
        )
        self.proposed = Counter(
            "edgespec_draft_tokens_proposed", "draft tokens proposed", m, registry=r
        )
        self.accepted = Counter(
            "edgespec_draft_tokens_accepted", "draft tokens accepted", m, registry=r
        )
        self.rejected = Counter(
            "edgespec_rejected_requests", "requests refused with 429 (queue full)", m, registry=r
        )
        self.cancelled = Counter(
            "edgespec_cancelled_generations",
            "generations stopped because the client went away",
            m,
            registry=r,
        )
        self._queue_depth = Gauge(
            "edgespec_queue_depth", "requests waiting for the model", m, registry=r
        )
        self._busy = Gauge("edgespec_busy", "1 while the model generates", m, registry=r)

    def watch(self, model: str, worker: Any) -> None:
        """Read ``worker.queue_depth`` and ``worker.busy`` at every scrape."""
        self._queue_depth.labels(model).set_function(lambda: worker.queue_depth)
        self._busy.labels(model).set_function(lambda: float(worker.busy))
        for c in (self.rejected, self.cancelled, self.generated, self.generations):
            c.labels(model)  # present from the start, at 0

    def record(self, model: str, stats: Stats) -> None:
        """Count one finished generation."""
        self.generations.labels(model).inc()
        self.generated.labels(model).inc(stats.new_tokens)
        self.prompt.labels(model).inc(stats.prompt_tokens)
        self.decode_seconds.labels(model).inc(stats.wall_s)
        self.tokens_per_s.labels(model).set(stats.tokens_per_s)
        proposed = sum(stats.k_trace)
        if proposed:
            accepted = sum(n * c for n, c in stats.accept_hist.items())
            self.proposed.labels(model).inc(proposed)
            self.accepted.labels(model).inc(accepted)
            self.acceptance.labels(model).set(accepted / proposed)

    def text(self) -> tuple[bytes, str]:
        """The exposition and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
