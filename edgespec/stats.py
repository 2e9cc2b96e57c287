"""Per-generation statistics: a mutable recorder during the run, a frozen :class:`Stats` after.

Times are seconds (wall clock from ``time.perf_counter``, CPU from ``time.process_time``).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stats:
    """What one generation cost and how speculation behaved.

    Attributes:
        backend: backend of the target model.
        strategy: strategy name.
        lossy: True when the output may differ from the target's own decoding.
        prompt_tokens: tokens in the prompt.
        new_tokens: tokens generated (returned to the caller).
        wall_s: wall-clock seconds from the first forward to the last token.
        cpu_s: process CPU seconds over the same span (all threads).
        ttft_s: seconds to the first new token (includes prefill).
        tokens_per_s: new_tokens / decode time, where decode time excludes prefill when
            more than one token was generated (the llama.cpp convention).
        prefill_s: seconds spent in the prompt forward.
        target_forwards: forward calls on the target model, prefill included.
        draft_forwards: forward calls on a draft model: the ``--draft`` model or a layer-skip
            self-draft, while drafting or (two-model strategies) writing (0 without one).
        draft_s: seconds spent proposing drafts.
        verify_s: seconds in target forwards after prefill.
        accept_hist: {accepted draft tokens in a step: number of steps}.
        mean_accepted_per_forward: new tokens per target forward after prefill.
        k_trace: the draft length chosen at each step (0 = plain decoding).
        proposer_trace: the proposer that drafted at each step ("" for a plain step), in
            step with ``k_trace``.
        accepted_trace: the draft tokens accepted at each step, in step with ``k_trace``.
        token_share: {"target": fraction, "draft": fraction} of new tokens by producer.
        stop_reason: "eos", "stop_string", "max_new_tokens" or "context".
        notes: human-readable events (fallbacks, warnings).
        switches: model switches of a two-model lossy strategy (entropy-switch, sentence-lead).
        entropy_trace: per new token, the entropy (nats) of the distribution it came from.
        model_trace: per new token, "d" when the small (draft) model was in charge, "t" when
            the target was ("" for single-model strategies).
        probe_s: seconds spent timing this device's verify cost before the generation
            started (the first speculative run of a runtime without a stored cost curve;
            ``edgespec calibrate`` stores one). Not part of ``wall_s``.
        compressed_from: target tokens of the prompt before context compression (0: the
            prompt was not compressed; see :mod:`edgespec.compress`).
        compressed_to: target tokens the target received after compression.
        compress_s: wall seconds the compressor spent; part of ``ttft_s`` and ``wall_s``.
        compress_cpu_s: process CPU seconds the compressor spent; part of ``cpu_s``.
        compressor: the compressor model's name ("" without compression).
        kv_cache: the target's KV-cache type ("f16", "q8", ...; "" when the backend does
            not say). q8 and q4 are lossy.
        kv_cache_mb: the target's KV cache for its whole context, in MB (1e6 bytes).
        kv_cache_f16_mb: the same cache in f16 (llama.cpp's default), for comparison.
        kv_cache_default: the backend's own KV type without ``--kv-cache`` ("f16" on
            llama.cpp, "f32" on numpy; "" when the backend does not say).
        kv_cache_default_mb: the same cache in that type, in MB: what ``--stats`` reports
            the memory saved against.
        sparsity: the target's chunk-sparse FFN over this generation (empty for dense
            models): :meth:`edgespec.sparse.stats.ForwardSparsity.to_dict`, token-level and
            chunk-level sparsity per layer and per chunk size, units computed per forward.
    """

    backend: str
    strategy: str
    lossy: bool
    prompt_tokens: int
    new_tokens: int
    wall_s: float
    cpu_s: float
    ttft_s: float
    tokens_per_s: float
    prefill_s: float
    target_forwards: int
    draft_forwards: int
    draft_s: float
    verify_s: float
    accept_hist: dict[int, int]
    mean_accepted_per_forward: float
    k_trace: list[int]
    token_share: dict[str, float]
    stop_reason: str
    notes: list[str]
    switches: int = 0
    entropy_trace: list[float] = field(default_factory=list)
    model_trace: str = ""
    proposer_trace: list[str] = field(default_factory=list)
    accepted_trace: list[int] = field(default_factory=list)
    probe_s: float = 0.0
    compressed_from: int = 0
    compressed_to: int = 0
    compress_s: float = 0.0
    compress_cpu_s: float = 0.0
    compressor: str = ""
    kv_cache: str = ""
    kv_cache_mb: float = 0.0
    kv_cache_f16_mb: float = 0.0
    kv_cache_default: str = ""
    kv_cache_default_mb: float = 0.0
    sparsity: dict[str, Any] = field(default_factory=dict)

    @property
    def large_share(self) -> float | None:
        """Share of new tokens written while the target (the large model) was in charge;
        None for single-model strategies (no ``model_trace``)."""
        if not self.model_trace:
            return None
        return self.model_trace.count("t") / len(self.model_trace)

    def steps_by_proposer(self) -> str:
        """``plain 80, draft 30 (2.87 accepted a step), ngram 6 (0.50)``: the steps each
        proposer drafted (plain steps first), with their mean accepted draft tokens."""
        count: Counter[str] = Counter()
        accepted: Counter[str] = Counter()
        for name, n in zip(self.proposer_trace, self.accepted_trace, strict=True):
            count[name] += 1
            accepted[name] += n
        parts = [f"plain {count.pop('')}"] if "" in count else []
        for i, (name, steps) in enumerate(count.most_common()):
            mean = f"{accepted[name] / steps:.2f}" + (" accepted a step" if i == 0 else "")
            parts.append(f"{name} {steps} ({mean})")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["accept_hist"] = {str(k): v for k, v in sorted(self.accept_hist.items())}
        return d

    def summary(self) -> str:
        """A few human-readable lines (what ``--stats`` prints)."""
        hist = " ".join(f"{k}:{v}" for k, v in sorted(self.accept_hist.items())) or "-"
        lines = [
            f"backend={self.backend} strategy={self.strategy}" + (" (lossy)" if self.lossy else ""),
            f"prompt {self.prompt_tokens} tok, new {self.new_tokens} tok, stop: {self.stop_reason}",
            f"{self.tokens_per_s:.1f} tok/s, ttft {self.ttft_s * 1000:.0f} ms, "
            f"wall {self.wall_s:.2f} s, cpu {self.cpu_s:.2f} s",
            f"target forwards {self.target_forwards}, "
            f"mean accepted/forward {self.mean_accepted_per_forward:.2f}, "
            f"draft {self.draft_s * 1000:.0f} ms, verify {self.verify_s * 1000:.0f} ms",
            f"acceptance histogram {hist}",
        ]
        if self.proposer_trace:
            lines.append("steps: " + self.steps_by_proposer())
        if self.model_trace:
            lines.append(
                f"switches {self.switches}, small model in charge for "
                f"{self.model_trace.count('d')}/{len(self.model_trace)} tokens"
            )
        if self.probe_s:
            lines.append(
                f"probe {self.probe_s:.2f} s before the first token (no stored cost curve; "
                "`edgespec calibrate` stores one)"
            )
        if self.compressed_from:
            lines.append(
                f"context compressed (lossy) by {self.compressor}: prompt "
                f"{self.compressed_from} -> {self.compressed_to} tok in "
                f"{self.compress_s * 1000:.0f} ms, {self.compress_cpu_s:.2f} CPU-s "
                "(included in ttft and cpu)"
            )
        if self.kv_cache:
            from edgespec.runtimes.base import LOSSY_KV_CACHE_TYPES

            # against the backend's own default type (f32 on numpy), f16 when it does not say
            ref, ref_mb = (self.kv_cache_default, self.kv_cache_default_mb)
            if not ref:
                ref, ref_mb = "f16", self.kv_cache_f16_mb
            lines.append(
                f"KV cache {self.kv_cache}"
                + (" (lossy)" if self.kv_cache in LOSSY_KV_CACHE_TYPES else "")
                + f": {self.kv_cache_mb:.1f} MB for the context"
                + (
                    f" ({self.kv_cache_mb / ref_mb:.2f}x of {ref}, the default, "
                    f"{abs(ref_mb - self.kv_cache_mb):.1f} MB "
                    f"{'saved' if ref_mb >= self.kv_cache_mb else 'more'})"
                    if ref_mb and self.kv_cache != ref
                    else ""
                )
            )
        if self.sparsity:
            from edgespec.sparse.stats import summary_lines

            lines += summary_lines(self.sparsity)
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class StatsRecorder:
    """Mutable counters that strategies update while generating."""

    backend: str
    strategy: str
    lossy: bool = False
    prompt_tokens: int = 0
    target_forwards: int = 0
    draft_forwards: int = 0
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    k_trace: list[int] = field(default_factory=list)
    proposer_trace: list[str] = field(default_factory=list)
    accepted_trace: list[int] = field(default_factory=list)
    from_draft: int = 0
    notes: list[str] = field(default_factory=list)
    switches: int = 0
    entropy_trace: list[float] = field(default_factory=list)
    model_trace: str = ""
    #: seconds of device probing before this generation (see :attr:`Stats.probe_s`)
    probe_s: float = 0.0
    #: context compression before this generation (see :class:`Stats`)
    compressed_from: int = 0
    compressed_to: int = 0
    compress_s: float = 0.0
    compress_cpu_s: float = 0.0
    compressor: str = ""
    #: the target's KV cache (see :class:`Stats`)
    kv_cache: str = ""
    kv_cache_mb: float = 0.0
    kv_cache_f16_mb: float = 0.0
    kv_cache_default: str = ""
    kv_cache_default_mb: float = 0.0
    #: the target's live sparsity counters (``ForwardSparsity``), reset when the generation
    #: starts; None for dense models
    sparsity: Any = None
    #: when True, :meth:`phase` and :meth:`span` record (name, start offset s, seconds)
    trace_phases: bool = False
    phases: list[tuple[str, float, float]] = field(default_factory=list)
    _t0: float = field(default_factory=time.perf_counter)
    _c0: float = field(default_factory=time.process_time)

    @property
    def accept_hist(self) -> Counter[int]:
        """{accepted draft tokens in a step: steps}, over the steps that drafted."""
        return Counter(n for n, k in zip(self.accepted_trace, self.k_trace, strict=True) if k)

    def span(self, name: str, start: float, seconds: float) -> None:
        """Record a phase that began at ``start`` (perf_counter) and took ``seconds``."""
        if self.trace_phases:
            self.phases.append((name, start - self._t0, seconds))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name`` (tokenize, prefill, draft, verify, ...)."""
        if not self.trace_phases:
            yield
            return
        t = time.perf_counter()
        try:
            yield
        finally:
            self.span(name, t, time.perf_counter() - t)

    def restart_clock(self) -> None:
        self._t0 = time.perf_counter()
        self._c0 = time.process_time()

    def finish(self, new_tokens: int, ttft_s: float, stop_reason: str) -> Stats:
        # the compressor ran before the clock started: its time is part of the answer's
        wall = time.perf_counter() - self._t0 + self.compress_s
        cpu = time.process_time() - self._c0 + self.compress_cpu_s
        ttft_s = ttft_s + self.compress_s if new_tokens else ttft_s
        decode = wall - ttft_s if new_tokens > 1 else wall
        rate_tokens = new_tokens - 1 if new_tokens > 1 else new_tokens
        steps = max(self.target_forwards - 1, 0)
        share_draft = self.from_draft / new_tokens if new_tokens else 0.0
        return Stats(
            backend=self.backend,
            strategy=self.strategy,
            lossy=self.lossy,
            prompt_tokens=self.prompt_tokens,
            new_tokens=new_tokens,
            wall_s=wall,
            cpu_s=cpu,
            ttft_s=ttft_s,
            tokens_per_s=rate_tokens / decode if decode > 0 else 0.0,
            prefill_s=self.prefill_s,
            target_forwards=self.target_forwards,
            draft_forwards=self.draft_forwards,
            draft_s=self.draft_s,
            verify_s=self.verify_s,
            accept_hist=dict(self.accept_hist),
            mean_accepted_per_forward=(new_tokens - 1) / steps if steps else float(new_tokens),
            k_trace=list(self.k_trace),
            token_share={"target": 1.0 - share_draft, "draft": share_draft},
            stop_reason=stop_reason,
            notes=list(self.notes),
            switches=self.switches,
            entropy_trace=list(self.entropy_trace[:new_tokens]),
            model_trace=self.model_trace[:new_tokens],
            proposer_trace=list(self.proposer_trace),
            accepted_trace=list(self.accepted_trace),
            probe_s=self.probe_s,
            compressed_from=self.compressed_from,
            compressed_to=self.compressed_to,
            compress_s=self.compress_s,
            compress_cpu_s=self.compress_cpu_s,
            compressor=self.compressor,
            kv_cache=self.kv_cache,
            kv_cache_mb=self.kv_cache_mb,
            kv_cache_f16_mb=self.kv_cache_f16_mb,
            kv_cache_default=self.kv_cache_default,
            kv_cache_default_mb=self.kv_cache_default_mb,
            sparsity=self.sparsity.to_dict() if self.sparsity is not None else {},
        )
