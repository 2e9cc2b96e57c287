"""Start-up: from a fresh process to the first token, per backend (and per source tree).

Each sample is one fresh ``python -m edgespec generate PROMPT -m MODEL --backend B -n 1
--json --quiet`` process: its wall time from spawn to exit (interpreter, imports, model
load, the prompt's forward, one token, exit), its peak resident memory (``VmHWM``, which the
child writes at exit: :data:`PEAK`) and the time to first token that it reports. Configurations
run in turn within every round, so a drift of the host lands on all of them; the table gives
medians and each configuration's ratio to the first one's median.

``--tree LABEL PYTHONPATH`` runs the same command with ``PYTHONPATH`` first on the path (a
``git worktree`` of another revision, and any packages to shadow the environment's, e.g. an
older ml_dtypes installed with ``pip install --target``); without it, the working tree.
``--imports`` adds fresh-process timings of the imports that dominate a tvm start.

With two trees or more, each runs with its own ``EDGESPEC_HOME``
(``$EDGESPEC_HOME/bench/startup/<label>``: every entry of the real one linked, but its own
``tvm/``): the tvm backend deletes the packed-weights cache of other code for the same file,
so trees sharing one home would repack each other's weights on every start.

    python benchmarks/startup.py --model smollm2-135m --backends tvm llamacpp --rounds 5
    python benchmarks/startup.py --model qwen2.5-coder-1.5b --backends tvm --rounds 5 \\
        --tree before /tmp/wt:/tmp/ml070 --tree after . --imports

Run each configuration once before timing (``--warmup``, default 1) so that compiled
libraries and packed weights are cached: this measures a start with warm caches, which is
every start after the first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: fresh-process import timings (``--imports``): label -> code whose run time is printed
IMPORTS = {
    "import ml_dtypes": "import numpy, time; t = time.perf_counter(); import ml_dtypes",
    "import tvm (torch allowed)": "import numpy, time; t = time.perf_counter(); import tvm",
    "tvm_module() (torch kept out)": (
        "import numpy, time; t = time.perf_counter()\n"
        "from edgespec.kernels.compiled import tvm_module; tvm_module()"
    ),
}


#: for a ``--tree``: ``python -c`` puts the working directory (this tree) first on the path,
#: ahead of ``PYTHONPATH``; take it off before anything imports edgespec
NO_CWD = "import sys\nsys.path[:] = [p for p in sys.path if p != '']\n"
#: ``python -m edgespec``, as ``-c`` code
MAIN = "import runpy\nrunpy.run_module('edgespec', run_name='__main__')\n"
#: run first in every timed child: at exit it writes its own peak RSS in kB (``VmHWM``, the
#: high-water mark of this process image) to ``$STARTUP_PEAK_FILE``. ``wait4``'s
#: ``ru_maxrss`` cannot tell it: Linux carries the parent's peak into the child at exec
#: (measured: 2.7 GB for a 200 MB child of the test suite's process). Written out rather
#: than ``edgespec.bench.metrics.peak_rss_mb``: importing edgespec would be timed too.
PEAK = (
    "import atexit, os\n"
    "def _peak():\n"
    "    try:\n"
    "        with open('/proc/self/status') as f:\n"
    "            kb = next(line.split()[1] for line in f if line.startswith('VmHWM:'))\n"
    "        with open(os.environ['STARTUP_PEAK_FILE'], 'w') as f:\n"
    "            f.write(kb)\n"
    "    except (OSError, KeyError, StopIteration):\n"
    "        pass\n"
    "atexit.register(_peak)\n"
)


def tree_home(label: str) -> Path:
    """``$EDGESPEC_HOME/bench/startup/<label>``: the real home's entries linked, but ``tvm/``
    (compiled libraries and packed weights) its own."""
    from edgespec.home import edgespec_home

    real = edgespec_home()
    home = real / "bench" / "startup" / "".join(c if c.isalnum() else "-" for c in label)
    home.mkdir(parents=True, exist_ok=True)
    for entry in real.iterdir():
        link = home / entry.name
        if entry.name not in ("tvm", "bench") and not link.exists():
            link.symlink_to(entry)
    return home


def _env(pythonpath: str | None, home: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if home is not None:
        env["EDGESPEC_HOME"] = str(home)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(p).resolve()) for p in pythonpath.split(os.pathsep) if p]
            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
        )
    return env


def python_cmd(code: str, tree: bool = False) -> list[str]:
    """``python -c`` of ``code`` after :data:`PEAK` (and :data:`NO_CWD` for a tree)."""
    return [sys.executable, "-c", PEAK + (NO_CWD if tree else "") + code]


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """``(wall seconds, peak RSS in MB, stdout)`` of one fresh process: the peak that a
    :func:`python_cmd` child wrote, else ``wait4``'s (which includes the parent's)."""
    import tempfile

    fd, peak_file = tempfile.mkstemp(prefix="startup-peak-")
    os.close(fd)
    env = {**env, "STARTUP_PEAK_FILE": peak_file}
    r, w = os.pipe()
    t = time.perf_counter()
    pid = os.posix_spawn(
        cmd[0],
        cmd,
        env,
        file_actions=[
            (os.POSIX_SPAWN_DUP2, w, 1),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_CLOSE, r),
        ],
    )
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        chunks.append(f.read())
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t
    peak = Path(peak_file).read_text().strip()
    os.unlink(peak_file)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd[:3])} ... exited {os.waitstatus_to_exitcode(status)}")
    rss = int(peak) if peak else usage.ru_maxrss
    return wall, rss / 1024, b"".join(chunks).decode()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--backends", nargs="+", default=["tvm", "llamacpp"])
    p.add_argument("--tree", nargs=2, action="append", metavar=("LABEL", "PYTHONPATH"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--prompt", default="Write a haiku about the sea")
    p.add_argument("--imports", action="store_true", help="also time the imports alone")
    a = p.parse_args(argv)
    trees = a.tree or [["this tree", ""]]
    homes = {label: tree_home(label) if len(trees) > 1 else None for label, _ in trees}
    configs = [(label, path, b) for label, path in trees for b in a.backends]
    rows: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for rnd in range(a.warmup + a.rounds):
        for label, path, backend in configs:
            cmd = [*python_cmd(MAIN, bool(path)), "generate", a.prompt, "-m", a.model]
            cmd += ["--backend", backend, "-n", "1", "--json", "--quiet"]
            wall, rss, out = run_measured(cmd, _env(path, homes[label]))
            ttft = float(json.loads(out)["stats"]["ttft_s"])
            if rnd >= a.warmup:
                rows.setdefault((label, backend), []).append((wall, rss, ttft))
            print(f"round {rnd}: {label} {backend}: {wall:.2f} s, {rss:.0f} MB", file=sys.stderr)
    imports: dict[tuple[str, str], list[float]] = {}
    if a.imports:
        for _ in range(a.rounds):
            for label, path in trees:
                for what, code in IMPORTS.items():
                    cmd = python_cmd(code + "\nprint(time.perf_counter() - t)", bool(path))
                    _, _, out = run_measured(cmd, _env(path))
                    imports.setdefault((label, what), []).append(float(out.strip()))

    print(f"## Start-up to the first token: {a.model}\n")
    print(f"`{' '.join(['python', 'benchmarks/startup.py', *(argv or sys.argv[1:])])}`\n")
    print(f"medians of {a.rounds} fresh processes per configuration, rounds interleaved\n")
    print("| tree | backend | process wall s | ratio | peak RSS MB | ttft s (in-process) |")
    print("|---|---|---|---|---|---|")
    base = None
    for (label, backend), got in rows.items():
        wall = statistics.median(g[0] for g in got)
        base = base or wall
        rss = statistics.median(g[1] for g in got)
        ttft = statistics.median(g[2] for g in got)
        spread = f"{min(g[0] for g in got):.2f}-{max(g[0] for g in got):.2f}"
        print(
            f"| {label} | {backend} | {wall:.2f} ({spread}) | {wall / base:.2f}x | {rss:.0f} | "
            f"{ttft:.3f} |"
        )
    if imports:
        print("\n| tree | import, fresh process | median s | min-max |")
        print("|---|---|---|---|")
        for (label, what), ts in imports.items():
            med = statistics.median(ts)
            print(f"| {label} | {what} | {med:.3f} | {min(ts):.3f}-{max(ts):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
