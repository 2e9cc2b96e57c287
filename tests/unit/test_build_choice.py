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


def _tvm_backend_benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "tvm_backend.py"
    spec = importlib.util.spec_from_file_location("tvm_backend_benchmark", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_builds_as_another_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """``benchmarks/tvm_backend.py --cpu znver3`` builds for an AVX2 core on an AVX-512 one:
    the target names that CPU, the int8 dot product falls to AVX2 and the exp lookup to the
    table loads; a CPU LLVM does not know is refused in one line."""
    pytest.importorskip("tvm")
    from edgespec.kernels import expf, qlinear_q8, tuning

    flags = frozenset({"fpu", "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni"})
    monkeypatch.setattr(qlinear_q8, "_cpu_flags", lambda: flags)  # (restored after the test)
    monkeypatch.setattr(tuning, "host_cpu", tuning.host_cpu)
    assert qlinear_q8.int8_isa() == "vnni" and expf.lookup() == "avx512"
    bench = _tvm_backend_benchmark()
    bench.build_as_cpu("znver3")
    assert tuning.host_cpu() == "znver3"
    assert qlinear_q8._cpu_flags() == frozenset({"fpu", "sse4_2", "avx", "avx2", "fma"})
    assert qlinear_q8.int8_isa() == "avx2" and expf.lookup() == "generic"
    assert tuning.host_target().attrs["mcpu"] == "znver3"
    with pytest.raises(SystemExit, match="--cpu nosuchcpu: not a CPU LLVM knows"):
        bench.build_as_cpu("nosuchcpu")
