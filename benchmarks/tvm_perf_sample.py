"""Where a tvm forward's CPU time goes, thread by thread: samples of Linux perf's software clock.

Loads one tvm build of the model (``--weights``, ``--threads``) in a child process, fills
``--context`` cached tokens, and runs ``--k``-token forwards (each rolled back) while ``perf
record -e cpu-clock`` samples that process for ``--seconds`` (a software event: it needs no
hardware counters, so it works in VMs that have none). Each sample's instruction pointer is
given to the compiled model's kernel it falls in (the library's symbols by address: a kernel's
parallel loop bodies follow its own code, so they count as that kernel), or else to the shared
object it is in; ``[kernel]`` is the operating system, where TVM's pool threads wait
(``sched_yield``) for work. Prints, for each thread, the share of its samples per kernel: the
time a worker spends waiting while the calling thread runs serial work, or for the other
thread's larger share of a split, shows here, which the VM's instrument hook
(``benchmarks/tvm_profile.py --ops``, one clock per call on the calling thread) cannot show.

Needs ``perf`` (Debian: ``linux-perf``), allowed to sample one's own processes
(``kernel.perf_event_paranoid`` at most 2), and ``nm`` (binutils).

    .venv/bin/python benchmarks/tvm_perf_sample.py --model smollm2-135m --threads 2 --k 9
    .venv/bin/python benchmarks/tvm_perf_sample.py --model qwen2.5-coder-1.5b --threads 2 --k 1
"""

from __future__ import annotations

import argparse
import bisect
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

#: the mapping of the model's compiled library in ``perf script --show-mmap-events``: start,
#: length, file offset and path of an executable (``r-xp``) mapping of a ``lib.so``
_MMAP = re.compile(
    r"PERF_RECORD_MMAP2? .*\[(0x[0-9a-f]+)\((0x[0-9a-f]+)\) @ (0x[0-9a-f]+)[^\]]*\]: "
    r"r-xp (\S*lib\.so)$"
)


def model_mapping(lines: Iterable[str], library: str) -> tuple[int, int] | None:
    """``(load bias, end)`` of ``library``'s executable mapping in ``perf script
    --show-mmap-events`` output (an address minus the bias is the library's own), or None
    when it was not mapped while perf recorded."""
    for line in lines:
        m = _MMAP.search(line.rstrip())
        if m and m.group(4) == library:
            start, length, offset = (int(m.group(i), 16) for i in (1, 2, 3))
            return start - offset, start + length
    return None


def attribute(
    lines: Iterable[str], library: str, symbols: list[tuple[int, str]], bias: int, end: int
) -> dict[str, Counter[str]]:
    """``{thread id: Counter({where: samples})}`` from ``perf script -F tid,ip,dso`` lines:
    samples in ``library`` (addresses ``< end``) count for the last of ``symbols`` (``(address,
    name)`` ascending, the library's own addresses) at or below ``ip - bias``, a kernel's
    ``_compute_`` suffix dropped; others for their shared object's file name (``[kernel]``
    for the OS)."""
    addrs = [a for a, _ in symbols]
    per: dict[str, Counter[str]] = {}
    for line in lines:
        parts = line.split()
        if len(parts) < 3 or "PERF_RECORD" in line:
            continue
        tid, ip_text, dso = parts[0], parts[1], parts[-1].strip("()")
        try:
            ip = int(ip_text, 16)
        except ValueError:
            continue
        if dso == library and ip < end:
            i = bisect.bisect_right(addrs, ip - bias) - 1
            where = symbols[i][1].removesuffix("_compute_") if i >= 0 else library
        elif "kernel.kallsyms" in dso:
            where = "[kernel]"
        else:
            where = Path(dso).name
        per.setdefault(tid, Counter())[where] += 1
    return per


def library_symbols(library: str) -> list[tuple[int, str]]:
    """The text symbols of ``library`` (``nm -n``), ``(address, name)`` ascending."""
    out = subprocess.run(["nm", "-n", library], check=True, capture_output=True, text=True)
    syms = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tT":
            syms.append((int(parts[0], 16), parts[2]))
    return syms


def child(a: argparse.Namespace) -> int:
    """Load the model, say READY on stdout, run forwards for
    ``a.seconds + a.margin`` seconds, print the median forward time."""
    from edgespec import zoo
    from edgespec.runtimes import BACKENDS
    from edgespec.runtimes.base import LoadOptions, ModelSource

    path = zoo.pull(a.model, progress=False)
    opts = LoadOptions(
        n_ctx=a.context + a.k + 8, n_threads=a.threads, progress=False, weights=a.weights
    )
    model = BACKENDS.get("tvm").load(ModelSource("gguf", path, a.model), opts)
    model.forward([1 + (i * 7919) % 20000 for i in range(a.context)], all_logits=False)
    for _ in range(5):
        model.forward([5] * a.k)
        model.truncate(a.context)
    print("READY", flush=True)
    times, t_end = [], time.perf_counter() + a.seconds + a.margin
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        model.forward([5] * a.k)
        times.append(time.perf_counter() - t0)
        model.truncate(a.context)
    print(f"MEDIAN {statistics.median(times) * 1e3:.2f} {len(times)}", flush=True)
    return 0


def _sampled(
    proc: subprocess.Popen[str], a: argparse.Namespace
) -> tuple[list[str] | None, list[str]]:
    """``(perf script lines, the child's MEDIAN line split)`` of the child ``proc`` sampled
    for ``a.seconds``, or ``(None, [])`` after saying in one line what failed."""
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "READY":
        proc.wait()
        print("the model did not load (see above)", file=sys.stderr)
        return None, []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "perf.data"
        rec = subprocess.run(
            ["perf", "record", "-e", "cpu-clock", "-F", str(a.freq), "-p", str(proc.pid),
             "-o", str(data), "--", "sleep", str(a.seconds)],
            capture_output=True, text=True,
        )  # fmt: skip
        if rec.returncode != 0 or not data.exists():
            why = (rec.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"perf record failed: {why}", file=sys.stderr)
            return None, []
        median = proc.stdout.readline().split()
        proc.wait()
        script = subprocess.run(
            ["perf", "script", "-i", str(data), "--show-mmap-events", "-F", "tid,ip,dso"],
            capture_output=True, text=True, check=True,
        ).stdout.splitlines()  # fmt: skip
    return script, median


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--weights", default="gguf-q8act")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--k", type=int, default=1, help="tokens a forward")
    p.add_argument("--context", type=int, default=144)
    p.add_argument("--seconds", type=float, default=15.0, help="how long perf samples")
    p.add_argument("--freq", type=int, default=4000, help="samples a second per thread")
    p.add_argument("--margin", type=float, default=5.0, help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--top", type=int, default=12, help="rows per thread")
    a = p.parse_args()
    if a.child:
        return child(a)
    missing = [tool for tool in ("perf", "nm") if shutil.which(tool) is None]
    if missing:
        print(f"{' and '.join(missing)} not found: install linux-perf / binutils", file=sys.stderr)
        return 2
    argv = [sys.executable, __file__, "--child", *sys.argv[1:]]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        script, median = _sampled(proc, a)
    finally:  # the child ends on its own; not if this process was stopped first
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
    if script is None:
        return 2
    # the model's library: of the lib.so files mapped, the one most samples fell in
    libs = Counter(
        line.split()[-1].strip("()") for line in script if line.rstrip().endswith("lib.so)")
    )
    if not libs:
        print("no compiled library was sampled: is the model on the tvm backend?", file=sys.stderr)
        return 2
    library = libs.most_common(1)[0][0]
    mapping = model_mapping(script, library)
    if mapping is None:
        print(f"{library} was not mapped while perf sampled", file=sys.stderr)
        return 2
    per = attribute(script, library, library_symbols(library), *mapping)
    load = os.getloadavg()[0]
    print(f"`benchmarks/tvm_perf_sample.py {' '.join(sys.argv[1:])}`")
    print(
        f"({a.model}, --weights {a.weights}, {a.threads} thread(s), {a.k}-token forwards, "
        f"context {a.context}; median forward {median[1] if len(median) > 1 else '?'} ms over "
        f"{median[2] if len(median) > 2 else '?'}; perf cpu-clock at {a.freq} Hz for "
        f"{a.seconds:g} s; 1-minute load average {load:.1f})\n"
    )
    # the calling thread (its id is the process's) first, then TVM's workers
    tids = sorted(per, key=lambda t: (t != str(proc.pid), -per[t].total()))
    heads = ["calling thread" if t == str(proc.pid) else f"worker {i}" for i, t in enumerate(tids)]
    print("| where |" + "".join(f" {h} % |" for h in heads))
    print("|---|" + "---|" * len(tids))
    names = Counter[str]()
    for t in tids:
        names.update({k: v / per[t].total() for k, v in per[t].items()})
    for name, _ in names.most_common(a.top):
        cells = "".join(f" {100 * per[t][name] / per[t].total():.1f} |" for t in tids)
        print(f"| {name} |{cells}")
    print("| samples |" + "".join(f" {per[t].total()} |" for t in tids))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
