"""Is an int8-activation kernel waiting on memory? One matrix's call, warm against cold.

For one matrix of ``benchmarks/tvm_q8_layout.py``'s ``MATRICES`` (weights from the file), times
one call of ``y = x @ W^T`` at each ``--rows`` on one thread, in thread CPU time (``--threads
N``: on N threads, in wall time; min of ``--reps`` rounds), two ways:

- ``warm``: the same operands call after call (as far as they fit, they stay in the caches);
- ``cold``: ``--copies`` copies of the operands (default: enough for 256 MB), cycled, so that
  each call finds its copy out of the caches, as a forward does with every matrix;

for this tree's kernels and each ``--against`` revision (loaded as tvm_q8_layout.py does);
the cold rounds alternate between the builds (round r times each in turn), so that what the
shared machine gives this thread changes for all of them alike, and the table has each
build's best and median cold round. As
the yardstick of what one thread can stream here, NumPy's sum over a 256 MB array. A kernel
whose cold GB/s is far below both its warm GB/s and NumPy's is held up by how it reads
memory, not by its arithmetic.

    .venv/bin/python benchmarks/tvm_q8_stream.py --matrix "ffn_gate (Q4_K)" --against 5c5740b
    .venv/bin/python benchmarks/tvm_q8_stream.py --model smollm2-135m \
        --tensors blk.0.ffn_up.weight --rows 1 3 9 --against d447926
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tvm_q8_layout import MATRICES, ROOT, modules_at, packed  # noqa: E402


class Run(NamedTuple):
    """One build at one row count: its function and operands, and its timings."""

    fn: Any
    x: Any
    sets: list[list[Any]]  # the cold copies of the operands
    y: Any
    nbytes: int
    warm: float
    cold: list[float]  # seconds, one per round


def numpy_stream_gbs(reps: int = 5) -> float:
    """GB/s of ``np.sum`` over 256 MB of float64 on this thread (the best of ``reps``)."""
    a = np.ones(32 * 1024 * 1024, np.float64)
    a.sum()
    best = min(_timed(a.sum) for _ in range(reps))
    return a.nbytes / best / 1e9


#: the clock of a timed call: this thread's CPU time on one thread (robust to a loaded
#: machine), wall time on several (the other threads' work is not this thread's CPU time)
CLOCK = time.thread_time


def _timed(fn: Any, *args: Any) -> float:
    t0 = CLOCK()
    fn(*args)
    return CLOCK() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen2.5-coder-1.5b")
    p.add_argument("--matrix", default="ffn_gate (Q4_K)", choices=list(MATRICES))
    p.add_argument(
        "--tensors", nargs="+", help="GGUF tensor names instead of --matrix (stacked along N)"
    )
    p.add_argument("--against", nargs="*", default=[], help="git revisions of the kernels")
    p.add_argument("--repo", type=Path, default=ROOT, help="the git checkout of --against")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 9])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--copies", type=int, default=0, help="cold copies (0: enough for 256 MB)")
    p.add_argument(
        "--threads", type=int, default=1, help="TVM threads (more than 1: wall-clock time)"
    )
    p.add_argument(
        "--pages",
        choices=["huge", "small"],
        default="huge",
        help="the operands on transparent huge pages (as the tvm backend places weights) or not",
    )
    a = p.parse_args()
    global CLOCK
    if a.threads > 1:
        CLOCK = time.perf_counter

    import tvm

    from edgespec import zoo
    from edgespec.kernels import qlinear_q8
    from edgespec.kernels.compiled import HugeArena
    from edgespec.kernels.tuning import host_target
    from edgespec.runtimes.tvm_backend import set_tvm_threads

    if qlinear_q8.int8_isa() is None:
        print("this CPU has neither AVX512-VNNI nor AVX2: no int8 kernels to time", file=sys.stderr)
        return 2
    set_tvm_threads(tvm, a.threads)
    dev, rng = tvm.cpu(0), np.random.default_rng(0)
    names = a.tensors or MATRICES[a.matrix]
    w = packed(zoo.pull(a.model, progress=False), names)
    n, k = w.shape
    builds: dict[str, Any] = {"this tree": qlinear_q8}
    builds |= {rev: modules_at(rev, a.repo) for rev in a.against}
    load = [os.getloadavg()[0]]
    runs: dict[tuple[str, int], Run] = {}
    for build, mod in builds.items():
        q = mod.convert(w)
        func = mod.kernel(q.fmt, k, n).with_attr("global_symbol", "main")
        fn = tvm.compile(tvm.IRModule({"main": func}), target=host_target())["main"]
        nbytes = sum(o.nbytes for o in q.operands())
        copies = a.copies or max(2, int(256e6 // nbytes))
        if a.pages == "huge":
            each = sum(HugeArena.footprint(np.asarray(o)) for o in q.operands())
            arena = HugeArena(copies * each)
            sets = [
                [tvm.runtime.from_dlpack(arena.place(np.asarray(o))) for o in q.operands()]
                for _ in range(copies)
            ]
        else:
            sets = [
                [tvm.runtime.tensor(np.array(o), dev) for o in q.operands()] for _ in range(copies)
            ]
        for t in a.rows:
            x = tvm.runtime.tensor(rng.standard_normal((t, k)).astype(np.float32), dev)
            y = tvm.runtime.empty((t, n), "float32", dev)
            fn(x, *sets[0], y)
            warm = min(_timed(fn, x, *sets[0], y) for _ in range(a.reps * copies))
            runs[(build, t)] = Run(fn, x, sets, y, nbytes, warm, [])
    # cold rounds interleaved: round r times every build in turn, so that a change in what
    # the shared machine gives this thread reaches all builds alike
    for _ in range(a.reps):
        for r in runs.values():
            r.cold.append(sum(_timed(r.fn, r.x, *ops, r.y) for ops in r.sets) / len(r.sets))
        load.append(os.getloadavg()[0])
    rows = []
    for (build, t), r in runs.items():
        best, mid = min(r.cold), statistics.median(r.cold)
        rows.append(
            f"| {build} | {t} | {r.warm * 1e6:.0f} | {r.nbytes / r.warm / 1e9:.1f} | "
            f"{best * 1e6:.0f} | {r.nbytes / best / 1e9:.1f} | {mid * 1e6:.0f} |"
        )
    gbs = numpy_stream_gbs()
    print(f"`benchmarks/tvm_q8_stream.py {' '.join(sys.argv[1:])}`")
    print(
        f"({a.model} {' + '.join(names)} ({w.fmt}), {n} x {k}, {qlinear_q8.int8_isa()} dot "
        f"products, {a.threads} thread(s), {a.pages} pages, "
        f"{'thread CPU' if a.threads == 1 else 'wall'} time, min of {a.reps}; "
        f"1-minute load average {min(load):.1f} to "
        f"{max(load):.1f}; NumPy's sum over 256 MB on this thread: {gbs:.1f} GB/s)\n"
    )
    print(
        "| build | T | warm us | warm GB/s | cold us | cold GB/s | cold median us |\n"
        "|---|---|---|---|---|---|---|"
    )
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
