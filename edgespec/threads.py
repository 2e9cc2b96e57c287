"""The default thread count: the fastest one measured on this device, per backend and model.

``edgespec.load(..., n_threads=None)`` loads a model with the count stored for this device,
backend, model content and load options (:func:`~edgespec.speculative.cost_curves.threads_key`).
When none is stored, it times a few one-token forwards at each count on the loaded model
(:func:`tune`: a couple of seconds), keeps the fastest, stores it in the cost-curve store and
tells the user in one line; ``edgespec calibrate`` re-measures at every count from 1 to the
number of CPUs with more repetitions. An explicit thread count is always kept as given.

Libraries' own defaults are not the best everywhere: llama-cpp-python decodes one token with
half the cores, which ran edgespec's plain decoding at 0.63x of llama.cpp with both cores of
the 2-core build machine.

Changing the count on a loaded model is cheap for llama.cpp (``llama_set_n_threads``) and the
NumPy reference (a BLAS limit); the onnx backend builds a new ORT session per count (about as
slow as loading the graph once more), so its probe costs one session build per count.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from typing import Any

from edgespec.model import Model
from edgespec.runtimes import BACKENDS, LoadOptions, ModelSource
from edgespec.runtimes.base import ThreadTunable
from edgespec.speculative import cost_curves

#: timed one-token forwards per thread count: the first-use probe / ``edgespec calibrate``
PROBE_REPS = 5
CALIBRATE_REPS = 7
#: turns each count takes (interleaved, so that a burst of background load hits all alike)
PROBE_ROUNDS = 2
#: a first-use probe is not cached when the 1-minute load average was at least this many
#: times the CPU count: other work then decided the result (on the 2-core build machine,
#: with 4 busy processes, llama.cpp ran 52 ms per token with 1 thread and 373 ms with 2)
BUSY_LOAD = 1.0
#: above this many CPUs the first-use probe times a spread of counts, not every one
PROBE_ALL_UP_TO = 8


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count a model runs with, and where it came from.

    Attributes:
        threads: the count; None when the model cannot change it (its library decides).
        source: "user" (given explicitly), "stored" (measured earlier on this device),
            "probe" (measured now), "calibrate" (measured by ``edgespec calibrate``) or
            "fixed" (the model cannot change its count).
        one_token_s: {threads: seconds per one-token forward} when measured now.
    """

    threads: int | None
    source: str
    one_token_s: dict[int, float] = field(default_factory=dict)


def candidate_counts(nproc: int | None = None, *, every: bool = False) -> list[int]:
    """Thread counts worth timing: 1..nproc, or (many CPUs, ``every`` False) powers of two
    plus 1/2, 3/4 and all of the CPUs."""
    n = max(1, nproc or os.cpu_count() or 1)
    if every or n <= PROBE_ALL_UP_TO:
        return list(range(1, n + 1))
    counts = {n, n // 2, (3 * n) // 4}
    p = 1
    while p < n:
        counts.add(p)
        p *= 2
    return sorted(c for c in counts if c >= 1)


def stored_weights(source: ModelSource, backend: str, options: LoadOptions) -> str:
    """The weights name ``backend``'s measurements of ``source`` with ``options`` are stored
    under (:meth:`~edgespec.runtimes.base.Backend.stored_weights`: "auto" resolved where its
    meaning depends on the machine); ``options.weights`` for a name not registered."""
    if backend not in BACKENDS.names():
        return options.weights
    return BACKENDS.get(backend).stored_weights(source, options)


def key_for(source: ModelSource, backend: str, options: LoadOptions) -> str:
    """The store key of ``source`` on ``backend`` with ``options``."""
    weights = stored_weights(source, backend, options)
    return cost_curves.threads_key(backend, source.digest(), weights, options.spin, options.device)


def stored_best(source: ModelSource, backend: str, options: LoadOptions) -> int | None:
    """The fastest thread count stored for this device, backend, model and options."""
    entry = cost_curves.load_threads(key_for(source, backend, options))
    best = entry.get("best") if entry else None
    return int(best) if best else None


def tune(
    model: Model,
    source: ModelSource,
    backend: str,
    options: LoadOptions,
    *,
    counts: list[int] | None = None,
    reps: int = PROBE_REPS,
    origin: str = "probe",
) -> ThreadChoice:
    """Time one-token forwards of the loaded ``model`` at each thread count, switch it to
    the fastest, store the timings (and the best count) and tell the user in one line.

    Args:
        counts: thread counts to time (default :func:`candidate_counts`). With
            ``options.n_threads`` set, only that count is timed and kept: the stored
            timing then serves backend choice, and no "best" is recorded.
        reps: timed forwards per count (medians are stored).
        origin: "probe" or "calibrate", stored with the entry.

    Returns:
        the :class:`ThreadChoice` (``source`` "fixed" when the model cannot change its
        count: nothing is measured or stored then).
    """
    from tqdm.auto import tqdm

    explicit = options.n_threads is not None
    counts = [options.n_threads] if options.n_threads is not None else counts or candidate_counts()
    if not isinstance(model, ThreadTunable) or not model.set_threads(counts[0]):
        return ThreadChoice(None, "fixed")
    label = source.name or source.path.name
    with tqdm(
        total=len(counts) * PROBE_ROUNDS,
        desc=f"timing {backend} threads",
        unit="count",
        disable=not options.progress or explicit,
        leave=False,
        file=sys.stderr,
    ) as bar:
        times = cost_curves.measure_threads(
            model,
            counts,
            model.set_threads,
            reps=reps,
            vocab=max(2, min(1000, model.info.vocab_size)),
            rounds=PROBE_ROUNDS,
            on_step=lambda n: bar.update(),
        )
    best = min(times, key=lambda n: (times[n], n))
    model.set_threads(best)
    load = load_average()
    cpus = os.cpu_count() or 1
    busy = origin == "probe" and load is not None and load >= BUSY_LOAD * cpus
    key = key_for(source, backend, options)
    old = cost_curves.load_threads(key) or {}
    entry: dict[str, Any] = {
        "backend": backend,
        "model": source.name,
        "weights": stored_weights(source, backend, options),
        "spin": options.spin,
        "one_token_s": {**old.get("one_token_s", {}), **{str(n): s for n, s in times.items()}},
        "source": origin,
        "reps": reps,
        "load_average": load,
    }
    if explicit:
        entry.update({k: old[k] for k in ("best",) if k in old})
    else:
        entry["best"] = best
    if busy:  # used now, measured again next time
        where = (
            f"not cached: the machine was busy (load average {load:.1f} on {cpus} CPUs), "
            "so the next run measures again"
        )
    else:
        where = f"cached in {cost_curves.save_threads(key, entry)}"
    if options.progress and not explicit:
        per = ", ".join(f"{n}: {s * 1000:.1f}" for n, s in sorted(times.items()))
        print(
            f"edgespec: {backend} decodes {label} fastest with {best} thread(s) on this device "
            f"(ms per token: {per}); {where} (edgespec calibrate re-measures, "
            "--threads overrides)",
            file=sys.stderr,
        )
    return ThreadChoice(best, origin, times)


def load_average() -> float | None:
    """The 1-minute load average, or None where the platform has none."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


def load_tuned(
    source: ModelSource, backend: str, options: LoadOptions
) -> tuple[Model, ThreadChoice]:
    """Load ``source`` on ``backend`` with the fastest thread count for this device.

    ``options.n_threads`` set: kept as given. Else the stored best is passed to the backend
    at load time; with none stored, the model is loaded with its library's default and
    :func:`tune` measures, switches and stores. The choice is also recorded in
    ``model.info.extra["threads"]`` and ``["threads_source"]``.
    """
    cls = BACKENDS.get(backend)
    if options.n_threads is not None:
        model, choice = cls.load(source, options), ThreadChoice(options.n_threads, "user")
    elif (best := stored_best(source, backend, options)) is not None:
        model = cls.load(source, replace(options, n_threads=best))
        choice = ThreadChoice(best, "stored")
    else:
        model = cls.load(source, options)
        try:
            choice = tune(model, source, backend, options)
        except BaseException:
            model.close()
            raise
    model.info.extra.update(threads=choice.threads, threads_source=choice.source)
    return model, choice


def calibrate(runtime: Any, *, reps: int = CALIBRATE_REPS) -> ThreadChoice:
    """``edgespec calibrate``: time the runtime's target at every count from 1 to the
    number of CPUs (median of ``reps``), switch it to the fastest and store that as this
    device's default for the backend and model."""
    return tune(
        runtime.target,
        runtime.source,
        runtime.backend,
        runtime.options,
        counts=candidate_counts(every=True),
        reps=reps,
        origin="calibrate",
    )
