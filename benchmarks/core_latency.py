"""Core-to-core round trip: how far apart two of this machine's CPUs are.

Two threads, pinned to two CPUs, pass one cache line back and forth (each waits for the
other's write, then answers); the time per round trip is the cost of moving a line between
the two cores and back. On chiplet CPUs it tells where the CPUs sit: two cores of one L3
(one CCD on AMD) answer in tens of nanoseconds to about a hundred, two cores on different
L3s several times that, which a virtual machine's ``lscpu`` does not show (its vCPUs move).
``benchmarks/tvm_backend.py --core-probe`` prints it beside its timings
(docs/benchmarks.md section 21).

Threads cannot do this in Python, so a small C function is compiled once with the system's
``cc`` (which ``./install.sh`` requires for llama-cpp-python) under ``$EDGESPEC_HOME/bench``
and called through ctypes; the caller's own thread and affinity are left alone.

    .venv/bin/python benchmarks/core_latency.py --cpus 0 1 --reps 5
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

struct side { int cpu, n, first; _Atomic int *flag; int ok; };

static int pin(int cpu) {
    cpu_set_t s; CPU_ZERO(&s); CPU_SET(cpu, &s);
    return pthread_setaffinity_np(pthread_self(), sizeof s, &s) == 0;
}

/* the first side writes 1 and waits for 0, the second waits for 1 and writes 0 (2: stop) */
static void *play(void *arg) {
    struct side *p = arg;
    p->ok = pin(p->cpu);
    for (int i = 0; i < p->n; i++) {
        if (p->first) {
            atomic_store_explicit(p->flag, 1, memory_order_release);
            while (atomic_load_explicit(p->flag, memory_order_acquire) != 0)
                ;
        } else {
            int v;
            while ((v = atomic_load_explicit(p->flag, memory_order_acquire)) != 1)
                if (v == 2) return 0;  /* the other side never started */
            atomic_store_explicit(p->flag, 0, memory_order_release);
        }
    }
    return 0;
}

/* nanoseconds per round trip between cpu_a and cpu_b over n trips; -1 when a CPU cannot be
   used (not in this process's affinity mask) */
double es_round_trip_ns(int cpu_a, int cpu_b, int n) {
    static _Atomic int flag __attribute__((aligned(64)));
    atomic_store(&flag, 0);
    struct side b = {cpu_b, n, 0, &flag, 0}, a = {cpu_a, n, 1, &flag, 0};
    pthread_t tb, ta;
    struct timespec t0, t1;
    if (pthread_create(&tb, 0, play, &b)) return -1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (pthread_create(&ta, 0, play, &a)) {
        atomic_store(&flag, 2);
        pthread_join(tb, 0);
        return -1;
    }
    pthread_join(ta, 0);
    pthread_join(tb, 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (!a.ok || !b.ok) return -1;
    return ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n;
}
"""

_LIB: ctypes.CDLL | None = None


def _library() -> ctypes.CDLL:
    """The compiled probe, built once per source text under ``$EDGESPEC_HOME/bench``."""
    global _LIB
    if _LIB is None:
        from edgespec.home import edgespec_home

        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            raise SystemExit("core_latency: no C compiler (cc); run ./install.sh")
        digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:12]
        out = edgespec_home() / "bench" / f"core_latency-{digest}.so"
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
                src, part = Path(tmp) / "probe.c", Path(tmp) / out.name
                src.write_text(SOURCE)
                cmd = [cc, "-O2", "-shared", "-fPIC", "-pthread", str(src), "-o", str(part)]
                subprocess.run(cmd, check=True)
                os.replace(part, out)
        lib = ctypes.CDLL(str(out))
        lib.es_round_trip_ns.restype = ctypes.c_double
        lib.es_round_trip_ns.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        _LIB = lib
    return _LIB


def cpu_pair() -> tuple[int, int] | None:
    """The first two CPUs this process may run on, or None with fewer than two."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else None


def round_trip_ns(cpus: tuple[int, int] | None = None, n: int = 50_000) -> float:
    """Nanoseconds per round trip of a cache line between two CPUs (median of one run of ``n``
    trips; about ``n`` x 0.1-0.4 us of spinning on both CPUs).

    Raises:
        SystemExit: fewer than two CPUs, or a CPU outside this process's affinity.
    """
    pair = cpus or cpu_pair()
    if pair is None:
        raise SystemExit("core_latency: this process may run on one CPU only")
    if pair[0] == pair[1]:
        raise SystemExit(f"core_latency: name two different CPUs, not {pair[0]} twice")
    allowed = os.sched_getaffinity(0)
    if not set(pair) <= allowed:
        raise SystemExit(
            f"core_latency: CPUs {pair[0]} and {pair[1]}: this process may run on "
            f"{sorted(allowed)} only"
        )
    ns = _library().es_round_trip_ns(pair[0], pair[1], n)
    if ns < 0:
        raise SystemExit(f"core_latency: cannot pin threads to CPUs {pair[0]} and {pair[1]}")
    return float(ns)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpus", type=int, nargs=2, default=None, help="default: the first two")
    p.add_argument("--trips", type=int, default=50_000)
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()
    pair = tuple(a.cpus) if a.cpus else cpu_pair()
    times = [round_trip_ns(pair, a.trips) for _ in range(a.reps)]  # type: ignore[arg-type]
    print(
        f"CPUs {pair}: round trip median {statistics.median(times):.0f} ns "
        f"(min {min(times):.0f}, max {max(times):.0f}, {a.reps} runs of {a.trips})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
