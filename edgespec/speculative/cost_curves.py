"""Cost curves: the measured cost of a target forward of n tokens on this machine.

Stored as JSON under ``$EDGESPEC_HOME/cost_curves/<device fingerprint>.json``, keyed by
backend, model content (sha256) and thread count, so the controller starts from real numbers.
The same file keeps the measured one-token time per thread count (section ``threads``),
from which the default thread count and the automatic backend choice come.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from edgespec.fileutil import atomic_path
from edgespec.home import edgespec_home
from edgespec.model import Model


def device_description() -> str:
    """A human-readable description: CPU model, core count, machine, OS."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [cpu or "unknown cpu", f"{os.cpu_count()} cpus", platform.machine(), platform.system()]
    return " | ".join(parts)


def device_fingerprint() -> str:
    """A short stable id of this device (hash of :func:`device_description`)."""
    return hashlib.sha256(device_description().encode()).hexdigest()[:16]


def _device_suffix(device: str) -> str:
    """``|device=X`` for a device other than the CPU; keys of CPU runs stay as they were."""
    return "" if device == "cpu" else f"|device={device}"


def curve_key(
    backend: str, digest: str, threads: int | None, variant: str = "", device: str = "cpu"
) -> str:
    """The key of a stored cost curve.

    Args:
        backend: the backend name.
        digest: the model's content sha256 (:meth:`ModelSource.digest`); keys hold its first
            16 hex digits, so two files of one name never share a curve (entries stored by
            older versions under the file's name are simply not found).
        threads: the thread count asked for; None ("default") means the measured best.
        variant: what one backend can make of one file (the onnx backend's graph and
            weights, e.g. ``shared-gguf-exact``).
        device: where the model runs (``--device``): one backend's curve on the CPU says
            nothing of its curve on a GPU.
    """
    label = f"{backend}:{variant}" if variant else backend
    return f"{label}|{digest[:16]}|threads={threads or 'default'}{_device_suffix(device)}"


def threads_key(
    backend: str, digest: str, weights: str = "auto", spin: bool = True, device: str = "cpu"
) -> str:
    """The key of a stored thread choice: backend, model content and the load options that
    change what the backend builds (``weights``, ``spin``: the onnx backend's variant;
    ``device``).

    Unlike :func:`curve_key` it needs nothing from the loaded model, so the stored count can
    be passed to the backend at load time (an ORT session is built once, with it).
    """
    key = f"{backend}|{digest[:16]}|weights={weights}|spin={int(spin)}"
    return key + _device_suffix(device)


def _curves_path() -> Path:
    return edgespec_home() / "cost_curves" / f"{device_fingerprint()}.json"


def _read_store() -> dict[str, Any]:
    path = _curves_path()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_store(section: str, key: str, entry: dict[str, Any]) -> Path:
    """Set ``store[section][key] = entry``, keep every other section, write atomically."""
    data = _read_store()
    table = data.get(section)
    table = table if isinstance(table, dict) else {}
    table[key] = entry
    data.update(
        {"device": device_description(), "fingerprint": device_fingerprint(), section: table}
    )
    path = _curves_path()
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1))
    return path


def load_curves() -> dict[str, Any]:
    """Every stored cost curve of this device: {key: {"verify": {n: seconds}, ...}}."""
    curves = _read_store().get("profiles", {})
    return curves if isinstance(curves, dict) else {}


def load_threads(key: str) -> dict[str, Any] | None:
    """The stored thread measurement under ``key`` (:func:`threads_key`), or None:
    ``{"one_token_s": {"<threads>": seconds}, "best": threads (absent when only some counts
    were timed), "source": "probe" | "calibrate", ...}``."""
    return _stored("threads", key)


def _stored(section: str, key: str) -> dict[str, Any] | None:
    """``store[section][key]`` when it is a dict, else None."""
    table = _read_store().get(section, {})
    entry = table.get(key) if isinstance(table, dict) else None
    return entry if isinstance(entry, dict) else None


def save_threads(key: str, entry: dict[str, Any]) -> Path:
    """Store a thread measurement under ``key``, atomically; returns the store's path."""
    return _write_store("threads", key, entry)


#: untimed one-token forwards run for this long (at least one, at most :data:`SETTLE_MAX`)
#: before a one-token forward is timed after a pause, a prefix or a thread switch: the
#: first ones run slow for about 50 ms (SmolLM2 on tvm at 2 threads, after the prefix or
#: 200 ms idle: 6-8 ms falling to 4 over about ten forwards)
SETTLE_S = 0.2
SETTLE_MAX = 64


def settle(step: Callable[[int], object], at_least: int = 1) -> int:
    """Call ``step(i)`` (an untimed forward) for ``i = 0, 1, ..`` at least ``at_least``
    times and until :data:`SETTLE_S` seconds have passed or :data:`SETTLE_MAX` calls were
    made; returns the number of calls."""
    t0 = time.perf_counter()
    i = 0
    while i < at_least or (time.perf_counter() - t0 < SETTLE_S and i < SETTLE_MAX):
        step(i)
        i += 1
    return i


def measure_threads(
    model: Model,
    counts: Sequence[int],
    set_threads: Callable[[int], object],
    *,
    reps: int = 5,
    rounds: int = 2,
    context: int = 32,
    vocab: int = 1000,
    on_step: Callable[[int], object] | None = None,
) -> dict[int, float]:
    """Median seconds of a one-token forward (plain decoding's step) at each thread count.

    The counts take turns over ``rounds`` rounds (1 2 3 1 2 3 ...), so that a burst of
    background load hits them alike. In each turn ``set_threads(n)`` switches the loaded
    model to ``n`` threads, a ``context``-token prefix and untimed one-token forwards
    follow (:func:`settle`: the switch may rebuild a session or wake a thread pool, and the
    first forwards after the prefix run slow), then about ``reps / rounds`` timed ones at the
    same position. ``on_step(n)`` is called after each turn.

    Returns:
        {threads: median seconds per one-token forward over ``reps`` (at least) forwards}.
    """
    times: dict[int, list[float]] = {n: [] for n in counts}
    per_turn = max(1, -(-reps // max(1, rounds)))
    for _ in range(max(1, rounds)):
        for n in counts:
            set_threads(n)
            model.reset()
            model.forward([(17 * i + 11) % vocab for i in range(context)], all_logits=False)

            def one(r: int) -> float:
                t = time.perf_counter()
                model.forward([(31 * r + 7) % vocab], all_logits=False)
                dt = time.perf_counter() - t
                model.truncate(context)
                return dt

            settle(one)
            times[n] += [one(r) for r in range(per_turn)]
            if on_step is not None:
                on_step(n)
    model.reset()
    return {n: statistics.median(ts) for n, ts in times.items()}


def load_verify_curve(key: str) -> dict[int, float] | None:
    entry = load_curves().get(key)
    if not entry:
        return None
    return {int(n): float(s) for n, s in entry["verify"].items()}


def load_near_tie_bound(key: str) -> float | None:
    """The near-tie bound (logits) that ``edgespec calibrate`` measured and stored with the
    cost curve ``key`` (:func:`edgespec.losslessness.measure_near_tie_bound`), or None when
    there is none (no curve, or one stored before bounds were measured)."""
    bound = (load_curves().get(key) or {}).get("near_tie_bound")
    return None if bound is None else float(bound)


def fastest_backend(
    digest: str,
    candidates: Sequence[str],
    threads: int | None,
    weights: str | Mapping[str, str] = "auto",
    spin: bool = True,
    device: str = "cpu",
) -> tuple[str, float] | None:
    """The backend that decodes one token of the model ``digest`` fastest on this device
    (on ``device``: the CPU or a GPU through ``--device``).

    First the stored cost curves (``edgespec calibrate``) are compared: only those of this
    device, with the same thread setting, the same ``weights`` choice (one name for every
    candidate, or a name per candidate: what each stores its measurements under,
    :func:`edgespec.threads.stored_weights`; entries without one count as "auto") and the
    same ``spin`` setting (default True). When fewer than two
    ``candidates`` have one, the stored thread measurements (:func:`load_threads`: by
    ``calibrate`` or a first-use probe) are compared instead, at ``threads`` or, for None,
    at each backend's best count. Plain decoding runs one token per forward, and every
    strategy falls back to it, so that cost decides.

    Returns:
        ``(backend, seconds per one-token forward)``, or None when fewer than two of the
        ``candidates`` have a measurement (then nothing has been compared).
    """
    suffix = f"|{digest[:16]}|threads={threads or 'default'}{_device_suffix(device)}"

    def weights_of(backend: str) -> str:
        return weights if isinstance(weights, str) else weights.get(backend, "auto")

    best: dict[str, float] = {}
    for key, entry in load_curves().items():
        if not key.endswith(suffix) or entry.get("spin", True) != spin:
            continue
        backend = str(entry.get("backend") or key.split("|")[0].split(":")[0])
        one = entry.get("verify", {}).get("1")
        same = entry.get("weights", "auto") == weights_of(backend)
        if backend in candidates and one and same:
            best[backend] = min(best.get(backend, float("inf")), float(one))
    if len(best) < 2:
        best = {}
        for backend in candidates:
            key = threads_key(backend, digest, weights_of(backend), spin, device)
            one = one_token_seconds(load_threads(key), threads)
            if one is not None:
                best[backend] = one
    if len(best) < 2:
        return None
    return min(best.items(), key=lambda kv: kv[1])


def one_token_seconds(entry: dict[str, Any] | None, threads: int | None) -> float | None:
    """A stored thread measurement's one-token time at ``threads`` (None: at its best)."""
    if entry is None:
        return None
    n = threads if threads is not None else entry.get("best")
    one = entry.get("one_token_s", {}).get(str(n)) if n is not None else None
    return float(one) if one else None


def save_curve(key: str, entry: dict[str, Any]) -> Path:
    """Store ``entry`` (``{"verify": {n: s}, ...}``) under ``key``, atomically."""
    return _write_store("profiles", key, entry)


def measure_verify_curve(
    model: Model,
    sizes: Iterable[int],
    *,
    context: int = 64,
    reps: int = 5,
    vocab: int = 1000,
    progress: bool = False,
    desc: str = "cost curve",
    tokens: Sequence[int] | None = None,
) -> dict[int, float]:
    """Median seconds of ``model.forward`` over n tokens after a ``context``-token prefix,
    timed the way speculation runs them: each n-token forward follows a one-token forward.

    Some backends pay for changing batch shape (llama.cpp rebuilds its graph and switches
    between its single-token and batch thread counts), so an n-token forward measured in a
    run of identical forwards would look cheaper than it is in a speculative loop. ``1`` is
    timed the same way, after a one-token forward (plain decoding). The sizes take turns
    over ``reps`` rounds (1 2 3 .. 1 2 3 ..), after untimed one-token forwards
    (:func:`settle`): the first forwards after the prefix run slow for a while, and when
    ``1`` was timed alone first it came out above ``2`` (SmolLM2 on tvm: 6.1 against 4.8
    ms, live plain decoding 4.4 ms), which made every one-token draft look free to the
    controller. The cache is rolled back after every timed call, so each measures the same
    position.

    Returns:
        {n: seconds}; also ``{0: seconds}``, the extra time a one-token forward takes right
        after a forward of another size (the switch penalty, >= 0).

    ``progress`` shows a tqdm bar on stderr (one step per timed size, labelled ``desc``).

    ``tokens``: real text (token ids, :func:`curve_tokens`): the prefix is its start and every
    timed forward takes consecutive tokens of the rest. A chunk-sparse model's cost depends
    on the blocks a chunk's tokens activate together, which synthetic ids misrepresent.
    """
    import sys

    from tqdm.auto import tqdm

    sizes = sorted(set(sizes) | {1})
    text = list(tokens or [])
    if text and len(text) < context + max(sizes) + 1:
        raise ValueError(f"need {context + max(sizes) + 1} text tokens, got {len(text)}")

    def ids(n: int, r: int, a: int, b: int) -> list[int]:
        """n tokens for repetition r: real text after the prefix, else ``(a*(i+r)+b) % V``."""
        if text:
            off = context + (r * 7919 + a * n) % (len(text) - context - n + 1)
            return text[off : off + n]
        return [(a * (i + r) + b) % vocab for i in range(n)]

    model.reset()
    prefix = text[:context] if text else [(17 * i + 11) % vocab for i in range(context)]
    model.forward(prefix, all_logits=False)
    model.forward(ids(max(sizes), 0, 1, 5) if text else [5] * max(sizes))  # warm-up
    model.truncate(context)

    def timed(toks: list[int]) -> float:
        t = time.perf_counter()
        model.forward(toks, all_logits=len(toks) > 1)
        dt = time.perf_counter() - t
        model.truncate(context)
        return dt

    settle(lambda r: timed(ids(1, r, 23, 1)), reps)  # the first forwards after it run slow
    bar = tqdm(
        total=reps * len(sizes),
        desc=desc,
        unit="forward",
        disable=not progress,
        file=sys.stderr,
        leave=False,
    )
    times: dict[int, list[float]] = {n: [] for n in sizes}
    after_switch: list[float] = []
    for r in range(reps):  # the sizes take turns, so that a slow spell hits them alike
        for n in sizes:
            bar.set_postfix_str(f"{n} tokens")
            timed(ids(1, r, 29, 3))
            times[n].append(timed(ids(n, r, 31, 7)))
            if n > 1:
                after_switch.append(timed(ids(1, r, 37, 5)))
            bar.update(1)
    bar.close()
    out = {n: statistics.median(ts) for n, ts in times.items()}
    if after_switch:
        out[0] = max(0.0, statistics.median(after_switch) - out[1])
    model.reset()
    return out


def curve_tokens(model: Model, tokenizer: Any, context: int, largest: int) -> list[int] | None:
    """Real text for :func:`measure_verify_curve` when ``model`` has a chunk-sparse FFN
    (it keeps ``sparsity`` counters: BlockFFN, sparsified models), else None (a dense
    forward costs the same whatever the ids): ``context + largest + 64`` ids of the fixed
    calibration text (:data:`edgespec.losslessness.CALIBRATION_TEXT`), where ``largest`` is
    the longest forward to time."""
    if getattr(model, "sparsity", None) is None:
        return None
    from edgespec.losslessness import calibration_tokens

    return calibration_tokens(tokenizer, context + largest + 64)


def load_tree_overhead(key: str, n: int) -> float | None:
    """The stored tree / chain forward time ratio of ``n``-node trees under the cost-curve
    key ``key`` (:func:`curve_key`), or None when none was measured."""
    ratio = (_stored("trees", _tree_key(key, n)) or {}).get("ratio")
    return float(ratio) if isinstance(ratio, (int, float)) else None


def _tree_key(key: str, n: int) -> str:
    """Where the ratio of ``n``-node trees under cost-curve ``key`` is stored."""
    return f"{key}|n={n}"


def tree_overhead(
    model: Model, key: str, n: int, *, remeasure: bool = False, source: str = "probe"
) -> float:
    """:func:`measure_tree_overhead` of ``model`` measured once per device, model and backend
    (cost-curve ``key``) and stored: later sessions load it, so whether trees are drafted
    does not change from run to run with timing noise (seeded runs repeat exactly).
    ``remeasure`` (``edgespec calibrate``) measures and stores it again, as ``source``."""
    stored = None if remeasure else load_tree_overhead(key, n)
    if stored is not None:
        return stored
    ratio = measure_tree_overhead(model, n)
    _write_store("trees", _tree_key(key, n), {"ratio": ratio, "source": source})
    return ratio


def measure_tree_overhead(model: Model, n: int, *, context: int = 64, reps: int = 3) -> float:
    """Median time of a bushy n-node tree forward (plus commit) / a chain forward of n tokens.

    Some backends verify trees at nearly the cost of a chain (the NumPy reference); others
    pay for extra bookkeeping (llama.cpp's per-leaf sequences). Returns the ratio.
    """
    model.reset()
    model.forward([(13 * i + 5) % 97 for i in range(context)], all_logits=False)
    parents = [-1] + [(i - 1) // 2 for i in range(1, n)]  # a binary tree
    tokens = [(7 * i + 3) % 97 for i in range(n)]
    chain, tree = [], []
    for _ in range(reps):
        t = time.perf_counter()
        model.forward(tokens, all_logits=True)
        chain.append(time.perf_counter() - t)
        model.truncate(context)
        t = time.perf_counter()
        model.forward_tree(tokens, parents)
        model.commit_tree_path(context, [0])
        tree.append(time.perf_counter() - t)
        model.truncate(context)
    model.reset()
    return statistics.median(tree) / statistics.median(chain)
