"""What an int8-activation kernel's hot loops issue, and what this core can issue.

Two instruments for the question "is this loop as fast as this core can run it?":

- ``--format FMT --k K --n N``: compiles one :mod:`edgespec.kernels` int8-activation kernel
  (``qlinear_q8.kernel``; ``--isa`` builds it with another dot product, as
  ``qlinear_q8.building_with`` does) for this host, and prints, for its ``--top`` loops with
  the most multiplies (a loop: a block of the assembly that jumps back to its own label), the
  instructions per pass by class: vector integer multiplies (:data:`MULTIPLIES`), other
  vector arithmetic, vector moves, memory reads and writes, and how many of those touch the
  stack (spills). Divide by the pass's work (rows x weights / 32) to get instructions per
  row and 32 weights.
- ``--rates``: compiles a small C program with ``cc -O2 -mavx2`` and prints how many
  ``vpmaddubsw``, ``vpaddw``, and both in turn, this core retires per nanosecond from
  registers (eight independent chains each; no memory). With the counts above, a loop's floor
  on this core is its multiplies over the ``vpmaddubsw`` rate, or its vector arithmetic
  over the mixed rate, whichever is larger.

    .venv/bin/python benchmarks/tvm_kernel_asm.py --format Q4_K@q8 --k 1536 --n 8960
    .venv/bin/python benchmarks/tvm_kernel_asm.py --rates

Needs ``cc`` for ``--rates`` (Debian: ``gcc``, which ``./install.sh`` installs).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: the vector integer multiplies (the int8 dot products on AVX2 and VNNI, and int32 / int16)
MULTIPLIES = ("vpmaddubsw", "vpmaddwd", "vpdpbusd", "vpdpwssd", "vpmulld", "vpmullw")

RATES_C = r"""
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(void) {
  struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9;
}
#define KEEP __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), \
                                   "+x"(a5), "+x"(a6), "+x"(a7))
#define EIGHT(S) S(a0) S(a1) S(a2) S(a3) S(a4) S(a5) S(a6) S(a7)
int main(void) {
  const long n = 100000000L;
  __m256i a0 = _mm256_set1_epi16(1), a1 = _mm256_set1_epi16(2), a2 = _mm256_set1_epi16(3),
          a3 = _mm256_set1_epi16(4), a4 = _mm256_set1_epi16(5), a5 = _mm256_set1_epi16(6),
          a6 = _mm256_set1_epi16(7), a7 = _mm256_set1_epi16(8);
  __m256i w = _mm256_set1_epi8(3);
  double t;
#define MUL(x) x = _mm256_maddubs_epi16(w, x);
#define ADD(x) x = _mm256_add_epi16(w, x);
#define MIX(x) x = _mm256_add_epi16(w, _mm256_maddubs_epi16(w, x));
  for (int round = 0; round < 3; round++) {
    t = now(); for (long i = 0; i < n; i++) { EIGHT(MUL) KEEP; }
    printf("vpmaddubsw %.3f\n", 8.0 * n / (now() - t) / 1e9);
    t = now(); for (long i = 0; i < n; i++) { EIGHT(ADD) KEEP; }
    printf("vpaddw %.3f\n", 8.0 * n / (now() - t) / 1e9);
    t = now(); for (long i = 0; i < n; i++) { EIGHT(MIX) KEEP; }
    printf("vpmaddubsw+vpaddw %.3f\n", 16.0 * n / (now() - t) / 1e9);
  }
  __m256i s = _mm256_add_epi16(_mm256_add_epi16(a0, a1), _mm256_add_epi16(a2, a3));
  s = _mm256_add_epi16(s, _mm256_add_epi16(_mm256_add_epi16(a4, a5), _mm256_add_epi16(a6, a7)));
  return _mm256_extract_epi16(s, 0) == 12345;
}
"""


def loops(asm: str) -> list[tuple[str, list[str]]]:
    """The assembly's loops: ``(label, instructions)`` for each block that ends in a jump back
    to its own label (a compiler's innermost loop body, unrolled as it was emitted)."""
    out: list[tuple[str, list[str]]] = []
    label, body = None, []
    for raw in asm.splitlines():
        line = raw.split("#")[0].strip()
        m = re.match(r"^(\.LBB\w+):", line)
        if m:
            label, body = m.group(1), []
            continue
        if not line or line.startswith(".") or label is None:
            continue
        body.append(line)
        op = line.split()[0]
        if op.startswith("j"):
            if line.split()[-1] == label:
                out.append((label, body))
                label = None
            elif op == "jmp":
                label = None
    return out


def classify(body: list[str]) -> dict[str, int]:
    """Instruction counts of one loop body by class: vector multiplies, other vector
    arithmetic (what the vector pipes execute; a memory source operand included), vector
    moves (loads, stores, broadcasts from memory), memory reads and writes, and how many of
    those touch the stack."""
    ops = Counter(i.split()[0] for i in body)
    vector = [i for i in body if i.split()[0].startswith("v")]
    moves = [i for i in vector if re.match(r"v(p?broadcast|mov)", i.split()[0]) and "(" in i]
    writes = [i for i in moves if i.endswith(")")]
    reads = [i for i in body if "(" in i and i not in writes and not i.startswith("prefetch")]
    multiplies = sum(ops[m] for m in MULTIPLIES)
    return {
        "instructions": len(body),
        "multiplies": multiplies,
        "other vector arithmetic": len(vector) - multiplies - len(moves),
        "vector moves": len(moves),
        "reads": len(reads),
        "writes": len(writes),
        "stack": sum("(%rsp" in i or "(%rbp" in i for i in body),
        "prefetches": sum(i.startswith("prefetch") for i in body),
    }


def kernel_asm(fmt: str, k: int, n: int, isa: str | None) -> str:
    """The host assembly of ``qlinear_q8.kernel(fmt, k, n)`` (built with ``isa``'s dot
    product, if given)."""
    import tvm

    from edgespec.kernels import qlinear_q8
    from edgespec.kernels.tuning import host_target

    with qlinear_q8.building_with(isa) if isa else nullcontext():
        f = qlinear_q8.kernel(fmt, k, n)
        mod = tvm.IRModule({"main": f.with_attr("global_symbol", "main")})
        ex = tvm.compile(mod, target=host_target())
    return str(ex.mod.inspect_source("asm"))


def print_loops(asm: str, top: int) -> None:
    """A table of the ``top`` loops with the most multiplies (ties: the longer first)."""
    found = sorted(loops(asm), key=lambda lb: (-classify(lb[1])["multiplies"], -len(lb[1])))
    keys = list(classify([]).keys())
    print("| loop | " + " | ".join(keys) + " | most frequent |")
    print("|---|" + "---|" * (len(keys) + 1))
    for label, body in found[:top]:
        c = classify(body)
        common = Counter(i.split()[0] for i in body).most_common(8)
        mix = ", ".join(f"{op} {n}" for op, n in common)
        print(f"| {label} | " + " | ".join(str(c[key]) for key in keys) + f" | {mix} |")


def rates() -> dict[str, list[float]]:
    """Per nanosecond, three rounds each: ``vpmaddubsw``, ``vpaddw``, and the two in turn."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("tvm_kernel_asm.py: --rates needs a C compiler (Debian: gcc)")
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "rates.c", Path(tmp) / "rates"
        src.write_text(RATES_C)
        subprocess.run([cc, "-O2", "-mavx2", "-o", str(exe), str(src)], check=True)
        out = subprocess.run([str(exe)], capture_output=True, text=True, check=False).stdout
    got: dict[str, list[float]] = {}
    for line in out.splitlines():
        name, value = line.rsplit(" ", 1)
        got.setdefault(name, []).append(float(value))
    return got


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--format", help="a kernel format, e.g. Q4_K@q8, Q4_1@q8, Q4_K_Q6_K@q8")
    p.add_argument("--k", type=int, help="input features (K)")
    p.add_argument("--n", type=int, help="output features (N)")
    p.add_argument("--isa", help="build with this dot product (qlinear_q8.ISAS)")
    p.add_argument("--top", type=int, default=4, help="loops to show")
    p.add_argument("--rates", action="store_true", help="time this core's vector issue rates")
    a = p.parse_args(argv)
    if not a.rates and not (a.format and a.k and a.n):
        p.error("give --format, --k and --n, or --rates")
    if a.format:
        print(
            f"`benchmarks/tvm_kernel_asm.py --format {a.format} --k {a.k} --n {a.n}"
            + (f" --isa {a.isa}" if a.isa else "")
            + "`\n"
        )
        print_loops(kernel_asm(a.format, a.k, a.n, a.isa), a.top)
    if a.rates:
        got = rates()
        print("\n`benchmarks/tvm_kernel_asm.py --rates` (per ns, 3 rounds, one thread)\n")
        print("| instruction | per ns |")
        print("|---|---|")
        for name, values in got.items():
            print(f"| {name} | " + ", ".join(f"{v:.2f}" for v in values) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
