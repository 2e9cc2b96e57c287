"""kernels/compiled.py's BuildChoice: the CPU's best choice unless a block overrides it."""

from __future__ import annotations

import pytest

from edgespec.errors import EdgespecError
from edgespec.kernels.compiled import BuildChoice

pytestmark = [pytest.mark.unit]


def test_override_holds_inside_its_block_only() -> None:
    best = ["b"]
    choice = BuildChoice("widget", ["a", "b"], lambda: best[0])
    assert choice.current() == "b"
    with choice.building_with("a"):
        assert choice.current() == "a"
    assert choice.current() == "b"
    with choice.building_with(None):  # None: the CPU's best, whatever it is now
        best[0] = "a"
        assert choice.current() == "a"
    with pytest.raises(RuntimeError), choice.building_with("b"):
        raise RuntimeError("a failed build")
    assert choice.current() == "a"  # restored after the failure too


def test_unknown_choice_is_one_line() -> None:
    choice = BuildChoice("widget", ["a", "b"], lambda: "a")
    with pytest.raises(EdgespecError, match="^unknown widget c; known: a, b$"):
        with choice.building_with("c"):
            pass


def test_building_for_another_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """``tuning.build_for("znver3")`` on an AVX-512 machine: the target names that CPU, the
    int8 dot product falls to AVX2 and the exp lookup to the table loads (the AVX flags
    znver3 lacks are taken off this machine's); ``build_for(None)`` is this machine again;
    a CPU LLVM does not know is refused in one line."""
    pytest.importorskip("tvm")
    from tvm.target import codegen

    from edgespec.kernels import expf, qlinear_q8, tuning

    here = frozenset({"fpu", "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni"})
    monkeypatch.setattr(tuning, "_PROC_FLAGS", here)
    monkeypatch.setattr(tuning, "_BUILD_CPU", None)  # (restored after the test)
    assert qlinear_q8.int8_isa() == "vnni" and expf.lookup() == "avx512"
    tuning.build_for("znver3")
    assert tuning.host_cpu() == "znver3"
    assert tuning.host_target().attrs["mcpu"] == "znver3"
    assert tuning.cpu_flags() == frozenset({"fpu", "sse4_2", "avx", "avx2", "fma"})
    assert qlinear_q8.int8_isa() == "avx2" and expf.lookup() == "generic"
    tuning.build_for("icelake-server")  # AVX512-VNNI, no AVX-VNNI
    assert qlinear_q8.int8_isa() == "vnni" and "avx_vnni" not in tuning.cpu_flags()
    with pytest.raises(EdgespecError, match="being built for icelake-server .*tune on the CPU"):
        tuning.tune(None, "k", lambda *a: None)  # type: ignore[arg-type]  # (refused first)
    tuning.build_for(None)
    assert tuning.cpu_flags() == here
    assert tuning.host_cpu() == str(codegen.llvm_get_system_cpu())  # this machine's (znver3 too)
    with pytest.raises(EdgespecError, match="^'nosuchcpu' is not a CPU LLVM knows"):
        tuning.build_for("nosuchcpu")
