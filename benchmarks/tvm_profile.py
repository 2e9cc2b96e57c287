"""Where the tvm backend's k-token forward goes: c(k) against the graph's attention kernel.

Loads one tvm build of the model (``--weights``, ``--threads``, default 1), fills
``--context`` cached tokens, and times, interleaved, at each k in ``--ks``: one k-token
forward (all logits, rolled back) and the graph's hand-written attention kernel alone
(``tvm_graph._kernels``) called once per layer at the same cache length on random inputs.
``--against REV`` adds the same two timings with ``edgespec/runtimes/tvm_graph.py`` as it is
at git revision REV (its graph compiled here and run on the same weights, in the same
process), and checks that both graphs' logits agree bit for bit. ``--against-kernels REV``
does the same for the kernels the graph calls (``kernels/qlinear.py``, ``qlinear_q8.py``,
``qlinear_q8k.py``, ``expf.py`` as they are at REV): a second model is loaded with them in
place of this tree's, so that its weights take REV's layout too (twice the memory).
``--isa`` builds every model with that int8 dot product (``qlinear_q8.ISAS``, one this CPU
runs) instead of the CPU's best (compiled for this CPU all the same: on an AVX-512 CPU the
256-bit forms' halves are shuffled between 512-bit registers, which a laptop without
AVX-512 does not do).
Prints a Markdown table of medians. ``--ops`` adds, per graph and k, the time of each
kernel the Relax VM calls (summed per forward, medians; the VM's own builtins summed as one
row) and how many calls a forward makes, timed through the VM's instrument hook: each timed
call carries the hook's overhead (a few microseconds), so the rows are for comparing
kernels, and their sum exceeds c(k); then the builtins by name, calls a forward.

    .venv/bin/python benchmarks/tvm_profile.py --model smollm2-135m --against HEAD~1
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
#: --clock: wall time, or the calling thread's CPU time (at 1 thread TVM runs every kernel on
#: the calling thread, so time the process spent waiting for a core on a loaded machine is
#: left out)
CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


def module_at(rev: str, relpath: str, name: str) -> ModuleType:
    """The repository's file ``relpath`` as it is at git revision ``rev``, run as module
    ``name`` from a copy in a temporary directory (its ``__file__``), registered in
    ``sys.modules`` first (dataclasses, and the imports of modules loaded after it, look it
    up there)."""
    path = Path(tempfile.mkdtemp()) / relpath.rsplit("/", 1)[-1]
    path.write_bytes(
        subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:{relpath}"], check=True, capture_output=True
        ).stdout
    )
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def graph_at(rev: str) -> Any:
    """The module ``edgespec/runtimes/tvm_graph.py`` as it is at git revision ``rev``."""
    from edgespec.runtimes import tvm_graph

    here = Path(str(tvm_graph.__file__)).resolve().relative_to(ROOT)  # edgespec/ has links
    return module_at(rev, here.as_posix(), "tvm_graph_at")


#: the kernel modules ``--against-kernels`` takes from another revision, in import order
KERNELS = ("qlinear", "expf", "qlinear_q8", "qlinear_q8k")


@contextlib.contextmanager
def kernels_at(rev: str) -> Iterator[None]:
    """Within the block, ``edgespec.kernels``'s :data:`KERNELS` are the files as at git
    revision ``rev`` (under their own names, from a temporary directory, so that imports
    made inside the block, and the library cache's digest of their files, see them);
    this tree's modules are back afterwards. The graph and the backend import the kernels
    when they build, so a model loaded in the block is REV's build."""
    import edgespec.kernels as package

    saved = {name: sys.modules.get(f"edgespec.kernels.{name}") for name in KERNELS}
    try:
        for name in KERNELS:
            mod = module_at(rev, f"kernels/{name}.py", f"edgespec.kernels.{name}")
            setattr(package, name, mod)
        yield
    finally:
        for name, ours in saved.items():
            if ours is None:
                sys.modules.pop(f"edgespec.kernels.{name}", None)
            else:
                sys.modules[f"edgespec.kernels.{name}"] = ours
                setattr(package, name, ours)


def attention_fn(graph: Any, spec: Any, target: Any) -> tuple[Any, bool]:
    """The compiled ``attention`` kernel of ``graph`` (a tvm_graph module) for ``spec``, and
    whether it reads the keys with the slots innermost (``[L, KV, hd, C]``; before: the
    values' ``[L, C, KV, hd]``)."""
    import tvm

    kernels = graph._kernels(spec)  # a dict by name; a 3-tuple before the fused kernels
    func = kernels["attention"] if isinstance(kernels, dict) else kernels[1]
    func = func.with_attr("global_symbol", "main")
    slots_last = isinstance(kernels, dict) and "kv_keep_keys" in kernels  # came together
    return tvm.compile(tvm.IRModule({"main": func}), target=target)["main"], slots_last


def _key_layout(cache: np.ndarray) -> np.ndarray:
    """Keys ``[L, C, KV, hd]`` in the graph's blocked layout ``[L, KV, C/16, hd, 16]``
    (``tvm_graph.KEY_BLOCK`` slots a block; C a multiple of it)."""
    from edgespec.runtimes.tvm_graph import KEY_BLOCK

    L, C, KV, hd = cache.shape
    blocks = cache.reshape(L, C // KEY_BLOCK, KEY_BLOCK, KV, hd)
    return np.ascontiguousarray(blocks.transpose(0, 3, 1, 4, 2))


def _slot_layout(keys: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_key_layout`."""
    L, KV, B, hd, block = keys.shape
    return np.ascontiguousarray(keys.transpose(0, 2, 4, 1, 3).reshape(L, B * block, KV, hd))


def attention_seconds(
    kernel: tuple[Any, bool],
    spec: Any,
    n_ctx: int,
    past: int,
    k: int,
    clock: Any = time.perf_counter,
) -> float:
    """Seconds of the kernel (:func:`attention_fn`'s pair) once per layer for k new rows after
    ``past`` cached slots."""
    import tvm

    from edgespec.runtimes.tvm_graph import KEY_BLOCK

    fn, slots_last = kernel
    dev, rng = tvm.cpu(0), np.random.default_rng(0)
    L, KV, hd, H = spec.n_layers, spec.n_head_kv, spec.head_dim, spec.n_head
    n_ctx = -(-n_ctx // KEY_BLOCK) * KEY_BLOCK  # as the backend allocates it
    cache = rng.standard_normal((L, n_ctx, KV, hd)).astype(spec.kv_dtype)  # the model's type
    keys = _key_layout(cache) if slots_last else cache
    kc, vc = tvm.runtime.tensor(keys, dev), tvm.runtime.tensor(cache[::-1].copy(), dev)
    q = tvm.runtime.tensor(rng.standard_normal((k, H, hd)).astype(np.float32), dev)
    mask = tvm.runtime.tensor(np.triu(np.full((k, k), -np.inf, np.float32), 1), dev)
    out = tvm.runtime.empty((k, H, hd), "float32", dev)
    t0 = clock()
    for layer in range(L):
        fn(q, kc, vc, mask, layer, past, out)
    return clock() - t0


def op_seconds(
    model: Any, k: int, reps: int, past: int, clock: Any = time.perf_counter
) -> tuple[dict[str, float], Counter[str]]:
    """``({kernel: median seconds per k-token forward}, {VM call: calls per forward})`` over
    ``reps`` forwards, each VM call timed through ``VirtualMachine.set_instrument``; the
    ``vm.builtin.*`` calls' times summed as ``"VM builtins"``, and counted by name."""
    per: list[dict[str, float]] = []
    start: dict[str, float] = {}
    calls: Counter[str] = Counter()

    def instrument(func: Any, name: str, before: bool, ret: Any, *args: Any) -> int:
        if before:
            start[name] = clock()
            calls[name] += 1
        else:
            key = "VM builtins" if name.startswith("vm.builtin.") else name
            per[-1][key] = per[-1].get(key, 0.0) + clock() - start[name]
        return 0

    model.vm.set_instrument(instrument)
    try:
        for _ in range(reps):
            per.append({})
            model.forward([5] * k)
            model.truncate(past)
    finally:
        model.vm.set_instrument(lambda *_: 0)
    names = {n for p in per for n in p}
    seconds = {n: statistics.median(p.get(n, 0.0) for p in per) for n in names}
    return seconds, Counter({n: c // reps for n, c in calls.items()})


def print_ops(ops: dict[tuple[str, int], tuple[dict[str, float], Counter[str]]]) -> None:
    """A Markdown table: one row per kernel, one column per (graph, k), ms per forward and
    (calls per forward); then the VM's builtins by name, calls per forward."""
    cols = list(ops)
    names = sorted(
        {n for d, _ in ops.values() for n in d},
        key=lambda n: -max(d.get(n, 0.0) for d, _ in ops.values()),
    )

    def calls(c: tuple[str, int], n: str) -> int:
        counted = ops[c][1]
        if n == "VM builtins":
            return sum(v for m, v in counted.items() if m.startswith("vm.builtin."))
        return counted[n]

    print("\n| kernel |" + "".join(f" {g} k={k} ms (calls) |" for g, k in cols))
    print("|---|" + "---|" * len(cols))
    for n in names:
        cells = "".join(f" {ops[c][0].get(n, 0.0) * 1e3:.2f} ({calls(c, n)}) |" for c in cols)
        print(f"| {n} |{cells}")
    for c in cols:
        builtins = [(m, v) for m, v in ops[c][1].most_common() if m.startswith("vm.builtin.")]
        listed = ", ".join(f"{m.removeprefix('vm.builtin.')} {v}" for m, v in builtins)
        print(
            f"\n{c[0]} k={c[1]}: {sum(ops[c][1].values())} VM calls a forward; builtins: {listed}"
        )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--weights", default="gguf-q8act")
    p.add_argument(
        "--kv-cache", default=None, help="f32 or f16 (default: the build's own, f16 for gguf-q8act)"
    )
    p.add_argument("--context", type=int, default=144)
    p.add_argument("--reps", type=int, default=11)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ks", type=int, nargs="+", default=[1, 9])
    p.add_argument("--against", default=None, help="git revision of tvm_graph.py to compare")
    p.add_argument("--against-kernels", default=None, help="git revision of the kernels to compare")
    p.add_argument(
        "--isa",
        default=None,
        help="build every model with this int8 dot product (qlinear_q8.ISAS; default the CPU's)",
    )
    p.add_argument("--ops", action="store_true", help="also time each kernel the VM calls")
    p.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="thread: the calling thread's CPU time (1 thread only; robust to a loaded machine)",
    )
    a = p.parse_args()
    if a.clock == "thread" and a.threads != 1:
        print(
            f"--clock thread needs --threads 1 (got {a.threads}): TVM's other threads' "
            "time would not count; use --clock wall",
            file=sys.stderr,
        )
        return 2
    clock = CLOCKS[a.clock]

    import tvm
    from tvm import relax

    from edgespec import zoo
    from edgespec.runtimes import BACKENDS, tvm_backend, tvm_graph
    from edgespec.runtimes.base import LoadOptions, ModelSource

    specs: list[Any] = []
    load_library = tvm_backend.load_library

    def spy(spec: Any, *args: Any) -> Any:  # the GraphSpec the backend compiles
        specs.append(spec)
        return load_library(spec, *args)

    tvm_backend.load_library = spy  # type: ignore[assignment]
    path = zoo.pull(a.model, progress=False)
    n_ctx = a.context + max(a.ks) + 8
    opts = LoadOptions(
        n_ctx=n_ctx, n_threads=a.threads, progress=False, weights=a.weights, kv_cache=a.kv_cache
    )
    from edgespec.kernels import qlinear_q8

    if a.isa is not None and (a.isa not in qlinear_q8.ISAS or not qlinear_q8.cpu_has(a.isa)):
        print(f"--isa {a.isa}: not one of this CPU's dot products", file=sys.stderr)
        return 2
    with qlinear_q8.building_with(a.isa):
        model: Any = BACKENDS.get("tvm").load(ModelSource("gguf", path, a.model), opts)
    tvm_backend.load_library = load_library  # type: ignore[assignment]
    if not specs:
        print("the model's library was bundled; profile a plain GGUF instead", file=sys.stderr)
        return 2
    spec, target = specs[0], tvm_backend.get_device("cpu").tvm_target(a.threads)
    context = [1 + (i * 7919) % 20000 for i in range(a.context)]
    model.forward(context, all_logits=False)
    graphs: dict[str, tuple[Any, Any]] = {
        "this tree": (model, attention_fn(tvm_graph, spec, target))
    }
    if a.against:
        old = graph_at(a.against)
        other = model.fork()
        with qlinear_q8.building_with(a.isa):
            built = old.build_module(spec)
        other.vm = relax.VirtualMachine(tvm.compile(built, target=target), model.device)
        graphs[a.against] = (other, attention_fn(old, spec, target))
        here_keys, old_keys = graphs["this tree"][1][1], graphs[a.against][1][1]
        if here_keys != old_keys:  # the other graph's key layout (blocks of slots or not)
            keys = other.k_cache.numpy()
            keys = _slot_layout(keys) if here_keys else _key_layout(keys)
            other.k_cache = tvm.runtime.tensor(keys, model.device)
    if a.against_kernels:
        with kernels_at(a.against_kernels):
            from edgespec.kernels import qlinear_q8 as theirs  # REV's, in the block

            with theirs.building_with(a.isa):
                other = BACKENDS.get("tvm").load(ModelSource("gguf", path, a.model), opts)
        other.forward(context, all_logits=False)
        graphs[f"kernels at {a.against_kernels}"] = (other, graphs["this tree"][1])
    fwd: dict[tuple[str, int], list[float]] = {(g, k): [] for g in graphs for k in a.ks}
    att: dict[tuple[str, int], list[float]] = {(g, k): [] for g in graphs for k in a.ks}
    logits: dict[tuple[str, int], np.ndarray] = {}
    load = [os.getloadavg()[0]]
    for _ in range(a.reps):
        for g, (m, fn) in graphs.items():
            for k in a.ks:
                t0 = clock()
                logits[(g, k)] = m.forward([5] * k)
                fwd[(g, k)].append(clock() - t0)
                m.truncate(a.context)
                att[(g, k)].append(attention_seconds(fn, spec, n_ctx, a.context, k, clock))
        load.append(os.getloadavg()[0])
    print(f"`benchmarks/tvm_profile.py {' '.join(sys.argv[1:])}`")
    print(
        f"({a.model}, --weights {a.weights}, {a.threads} thread(s), context {a.context}, "
        f"{a.isa or qlinear_q8.int8_isa()} dot products, "
        f"{a.clock} clock, "
        f"medians of {a.reps}; 1-minute load average {min(load):.1f} to {max(load):.1f})\n"
    )
    ks = a.ks
    head = "| graph |" + "".join(f" c({k}) ms | attention({k}) ms |" for k in ks)
    head += f" c({max(ks)})/c({min(ks)}) |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for g in graphs:
        c = {k: statistics.median(fwd[(g, k)]) for k in ks}
        row = f"| {g} |" + "".join(
            f" {c[k] * 1e3:.2f} | {statistics.median(att[(g, k)]) * 1e3:.1f} |" for k in ks
        )
        print(row + f" {c[max(ks)] / c[min(ks)]:.2f} |")
    for g in list(graphs)[1:]:
        same = all(
            np.array_equal(logits[("this tree", k)].view(np.int32), logits[(g, k)].view(np.int32))
            for k in ks
        )
        print(f"\nlogits bit for bit the same as {g}'s: {same}")
    if a.ops:
        ops = {
            (g, k): op_seconds(m, k, a.reps, a.context, clock)
            for g, (m, _) in graphs.items()
            for k in ks
        }
        print_ops(ops)
    for m, _ in graphs.values():
        m.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
