"""The int8-activation kernels' code layout, this tree against another revision, per matrix.

For the Q6_K matrices of a Q4_K_M file (default the Qwen2.5-Coder-1.5B: ``ffn_down`` 1536 x
8960, the output head 151936 x 1536, the fused QKV of a layer whose ``attn_v`` is Q6_K, in
the mixed Q4_K/Q6_K layout) and one Q4_K matrix as a control (``ffn_gate``), times one call
of ``y = x @ W^T`` at T = 1 and 9 rows on one thread, weights from the file:

- ``this tree``: ``kernels/qlinear_q8.py`` / ``qlinear_q8k.py`` as they are here;
- each ``REV`` of ``--against`` (default 455bb83: before the 6-bit layout, Q5_x/Q6_K codes a
  byte each): both modules as they are at that git revision, loaded under other names in
  this process, built with this tree's dot product (``qlinear_q8._vnni``: AVX512-VNNI or
  AVX2) so that it runs on this CPU. On AVX2 455bb83's byte-wide codes (up to 159) can
  saturate ``vpmaddubsw``: that row is timed, not checked;
- ``gguf-exact``: the float-activation kernel (``kernels/qlinear.py``).

Rounds interleave the builds, matrices and row counts. A call is timed in CPU seconds of the
calling thread (TVM runs a one-thread kernel there), so that time the thread waits for a core
of a loaded machine is not counted; the minimum over ``--reps`` rounds. The builds of a
matrix run in a fixed order, so its first build always follows the previous matrix's calls
(after the output head's 191 MB, a colder cache: the same code measured 1.18-1.26x at T = 1
there against a later position); ``--rotate`` rotates the builds' order every round and
reports medians, which takes that bias out (the minimum would pick each build's luckiest
position). Prints a Markdown
table: MB of operands (what one call streams), microseconds, and each build's time as a
fraction of the first ``REV``'s; and whether this tree's output equals the NumPy reference's bit for
bit (``reference.qlinear_q8k``) on each matrix at T = 9.

    .venv/bin/python benchmarks/tvm_q8_layout.py --reps 21
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
#: the matrices timed: label -> the GGUF tensors stacked along the output features
MATRICES: dict[str, list[str]] = {
    "ffn_down (Q6_K)": ["blk.0.ffn_down.weight"],
    "output (Q6_K)": ["output.weight"],
    "qkv (Q4_K+Q6_K)": [f"blk.0.attn_{p}.weight" for p in "qkv"],
    "ffn_gate (Q4_K)": ["blk.0.ffn_gate.weight"],
}


def modules_at(rev: str, repo: Path = ROOT) -> ModuleType:
    """``kernels/qlinear_q8.py`` at git revision ``rev`` (its K-quant kernel module loaded
    alongside, both under names of their own), building with this tree's dot product."""
    from edgespec.kernels import qlinear_q8

    def source(name: str) -> str:
        return subprocess.run(
            ["git", "-C", str(repo), "show", f"{rev}:kernels/{name}.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    tag = "".join(ch if ch.isalnum() else "_" for ch in rev)
    tmp = Path(tempfile.mkdtemp())
    mods: dict[str, ModuleType] = {}
    for name in ("qlinear_q8", "qlinear_q8k"):
        text = source(name).replace(
            "edgespec.kernels.qlinear_q8 import", f"qlinear_q8_at_{tag} import"
        )
        text = text.replace(
            "from edgespec.kernels import qlinear_q8k",
            f"import qlinear_q8k_at_{tag} as qlinear_q8k",
        )
        path = tmp / f"{name}_at_{tag}.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        mods[name] = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mods[name]
        spec.loader.exec_module(mods[name])
        mods[name]._vnni = qlinear_q8._vnni  # type: ignore[attr-defined]
    return mods["qlinear_q8"]


def packed(path: Path, names: list[str]) -> Any:
    """The GGUF tensors ``names`` stacked along N in the float path's layout."""
    from edgespec.gguf_file import open_gguf
    from edgespec.kernels import qlinear

    tensors = {str(t.name): t for t in open_gguf(path).reader.tensors}
    parts = [tensors[n] for n in names]
    fmt = qlinear.common_format({t.tensor_type.name for t in parts})
    assert fmt is not None
    blocks = [
        qlinear.QBlocks.from_gguf(np.asarray(t.data), t.tensor_type.name).to(fmt) for t in parts
    ]
    return qlinear.pack(qlinear.concat(blocks))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen2.5-coder-1.5b")
    p.add_argument("--against", nargs="+", default=["455bb83"], help="git revisions of the kernels")
    p.add_argument("--repo", type=Path, default=ROOT, help="the git checkout of --against")
    p.add_argument("--reps", type=int, default=21)
    p.add_argument("--rows", type=int, nargs="+", default=[1, 9])
    p.add_argument(
        "--rotate",
        action="store_true",
        help="rotate the builds' order within each matrix every round and report medians "
        "(the fixed order times each matrix's first build right after the previous matrix, "
        "and the minimum favours whichever build follows a warm one)",
    )
    a = p.parse_args()

    import tvm

    from edgespec import zoo
    from edgespec.kernels import qlinear, qlinear_q8, reference
    from edgespec.kernels.tuning import host_target
    from edgespec.runtimes.tvm_backend import set_tvm_threads

    if qlinear_q8.int8_isa() is None:
        print("this CPU has neither AVX512-VNNI nor AVX2: no int8 kernels to time", file=sys.stderr)
        return 2
    base = a.against[0]  # the ratios' denominator
    path = zoo.pull(a.model, progress=False)
    set_tvm_threads(tvm, 1)
    dev, rng, target = tvm.cpu(0), np.random.default_rng(0), host_target()
    calls: dict[tuple[str, str, int], Any] = {}
    sizes: dict[tuple[str, str], float] = {}
    shapes: dict[str, tuple[int, int]] = {}
    same: dict[str, bool] = {}
    builds: dict[str, Any] = {"this tree": qlinear_q8}
    builds |= {rev: modules_at(rev, a.repo) for rev in a.against}
    builds["gguf-exact"] = None
    for label, names in MATRICES.items():
        w = packed(path, names)
        n, k = shapes[label] = w.shape
        xs = {t: rng.standard_normal((t, k)).astype(np.float32) for t in a.rows}
        for build, mod in builds.items():
            q = w if mod is None else mod.convert(w)
            func = (
                qlinear.qlinear_kernel(q.fmt, k, n) if mod is None else mod.kernel(q.fmt, k, n)  # type: ignore[attr-defined]
            ).with_attr("global_symbol", "main")
            fn = tvm.compile(tvm.IRModule({"main": func}), target=target)["main"]
            ops = [tvm.runtime.tensor(np.ascontiguousarray(o), dev) for o in q.operands()]
            sizes[(label, build)] = sum(o.nbytes for o in q.operands()) / 1e6
            for t in a.rows:
                x = tvm.runtime.tensor(xs[t], dev)
                y = tvm.runtime.empty((t, n), "float32", dev)
                calls[(label, build, t)] = (fn, x, ops, y)
            if mod is qlinear_q8:  # this tree: bit for bit its reference, on the file's weights
                fn(x, *ops, y)
                o = {part: qlinear.untile(arr) for part, arr in w.ops.items() if part != "c"}
                want = reference.qlinear_q8k(
                    xs[a.rows[-1]],
                    w.codes(),
                    o["d"].astype(np.float32),
                    o["m"].astype(np.float32) if "m" in o else None,
                    o["sd"].astype(np.int32),
                    o["sm"].astype(np.int32) if "sm" in o else None,
                )
                same[label] = bool(np.array_equal(y.numpy(), want))
        del w
    times: dict[tuple[str, str, int], list[float]] = {key: [] for key in calls}
    load = [os.getloadavg()[0]]
    order = list(builds)
    for rep in range(a.reps):
        shift = rep % len(order) if a.rotate else 0
        turn = order[shift:] + order[:shift]  # the builds' order this round
        for label in shapes:
            for build in turn:
                for t in a.rows:
                    fn, x, ops, y = calls[(label, build, t)]
                    t0 = time.thread_time()
                    fn(x, *ops, y)
                    times[(label, build, t)].append(time.thread_time() - t0)
        load.append(os.getloadavg()[0])
    pick = statistics.median if a.rotate else min
    med = {key: pick(v) * 1e6 for key, v in times.items()}
    print(f"`benchmarks/tvm_q8_layout.py {' '.join(sys.argv[1:])}`")
    print(
        f"({a.model}, {qlinear_q8.int8_isa()} dot products, 1 thread, thread CPU time, "
        f"{'median, builds rotated,' if a.rotate else 'min'} of {a.reps}; 1-minute load "
        f"average {min(load):.1f} to {max(load):.1f})\n"
    )
    head = "| matrix | N x K | build | MB |" + "".join(f" T = {t} us |" for t in a.rows)
    head += "".join(f" T = {t} vs {base} |" for t in a.rows)
    print(head + "\n|" + "---|" * (head.count("|") - 1))
    for label, (n, k) in shapes.items():
        for build in builds:
            row = f"| {label} | {n} x {k} | {build} | {sizes[(label, build)]:.1f} |"
            row += "".join(f" {med[(label, build, t)]:.0f} |" for t in a.rows)
            row += "".join(
                f" {med[(label, build, t)] / med[(label, base, t)]:.2f} |" for t in a.rows
            )
            print(row)
    print(
        "\nthis tree equals reference.qlinear_q8k bit for bit at T = "
        f"{a.rows[-1]}: " + ", ".join(f"{k} {v}" for k, v in same.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
