"""benchmarks/tvm_kernel_asm.py: it finds a kernel's loops and counts what they issue."""

from __future__ import annotations

import shutil

import pytest

from edgespec.testing import load_script

ASM = """
\t.text
func:
\tmovq\t%rdi, %rax
.LBB0_2:
\tvmovdqa\t(%rax), %ymm0
\tvpmaddubsw\t%ymm0, %ymm1, %ymm2
\tvpmaddwd\t%ymm2, %ymm3, %ymm2
\tvpaddd\t%ymm2, %ymm4, %ymm4
\tvmovdqa\t%ymm4, 32(%rsp)
\taddq\t$32, %rax
\tcmpq\t%rax, %rdx
\tjne\t.LBB0_2
\tvpaddd\t%ymm4, %ymm5, %ymm5
.LBB0_3:
\tvpand\t.LCPI0_0(%rip), %ymm5, %ymm5
\tjne\t.LBB0_2
.LBB0_4:
\tvpaddw\t(%rsp), %ymm6, %ymm6  # a comment
\tjmp\t.LBB0_9
"""


def test_loops_are_the_blocks_that_jump_to_themselves() -> None:
    """Only .LBB0_2 jumps back to its own label; what follows its jump is not in its body."""
    mod = load_script("tvm_kernel_asm.py")
    found = mod.loops(ASM)
    assert [label for label, _ in found] == [".LBB0_2"]
    body = found[0][1]
    assert len(body) == 8 and body[-1].startswith("jne")
    c = mod.classify(body)
    assert c == {
        "instructions": 8,
        "multiplies": 2,
        "other vector arithmetic": 1,
        "vector moves": 2,
        "reads": 1,
        "writes": 1,
        "stack": 1,
        "prefetches": 0,
    }


def test_a_real_kernels_dot_loop_is_found() -> None:
    """The int8 Q4_K kernel's hottest loop holds the dot product's multiplies."""
    pytest.importorskip("tvm")
    from edgespec.kernels.qlinear_q8 import int8_isa

    if int8_isa() is None:
        pytest.skip("no int8 dot product on this CPU")
    mod = load_script("tvm_kernel_asm.py")
    found = mod.loops(mod.kernel_asm("Q4_K@q8", 256, 64, None))
    assert found
    assert max(mod.classify(body)["multiplies"] for _, body in found) >= 8


def test_rates_add_faster_than_they_multiply() -> None:
    """Three rounds of each rate; every x86 core with AVX2 has more vector adders than
    multipliers, so ``vpaddw`` retires faster than ``vpmaddubsw`` when both loops run."""
    from edgespec.kernels.qlinear_q8 import cpu_has

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    if not cpu_has("avx2"):
        pytest.skip("--rates times AVX2 instructions")
    got = load_script("tvm_kernel_asm.py").rates()
    assert sorted(got) == ["vpaddw", "vpmaddubsw", "vpmaddubsw+vpaddw"]
    assert all(len(v) == 3 and min(v) > 0 for v in got.values())
    assert max(got["vpaddw"]) > max(got["vpmaddubsw"])
