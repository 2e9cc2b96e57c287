"""The vectorized ``exp`` the tvm graph's softmax and SiLU use (kernels/expf.py).

Exactness: bit for bit glibc's ``expf`` (the FMA build glibc runs on x86-64 CPUs with FMA),
with either table lookup, value by value: here against the C library's own ``expf`` (TVM's
``T.exp`` compiles to a call of it) on every float32 of the ranges where its branches and the
table's rounding meet, random softmax and SiLU inputs, the special values, and a stride over
all 2^32 bit patterns. The whole 2^32 were compared once (about 90 s on this 2-core VM: no
value differs, NaN payloads aside): ``.venv/bin/python benchmarks/expf_exhaustive.py``.
Independently of any libm: within one unit in the last place of float64 ``exp`` rounded to
float32 (glibc documents this routine's error as 0.502 ULP).
"""

from __future__ import annotations

import functools
import platform
import re
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tvm")

from edgespec.errors import EdgespecError  # noqa: E402
from edgespec.kernels import expf  # noqa: E402
from edgespec.kernels.qlinear_q8 import _cpu_flags  # noqa: E402

LOOKUPS = [
    pytest.param(k, marks=pytest.mark.skipif(not expf.cpu_has(k), reason=f"needs {expf.FLAGS[k]}"))
    for k in expf.LOOKUPS
]
#: glibc's FMA build is what the CPU runs where glibc finds FMA (its ifunc picks it)
GLIBC_FMA = platform.libc_ver()[0] == "glibc" and "fma" in _cpu_flags()
W = 16  # exp_func's vector


@functools.cache
def _kernel(kind: str) -> Any:
    """The compiled :func:`expf.exp_func`: ``kind`` a lookup, or "libm" (the C library's
    ``expf``, one call a value)."""
    import tvm

    from edgespec.kernels.tuning import host_target

    with expf.building_with(None if kind == "libm" else kind):
        func = expf.exp_func(libm=kind == "libm").with_attr("global_symbol", "main")
        return tvm.compile(tvm.IRModule({"main": func}), target=host_target())


def _exp(lib: Any, x: np.ndarray) -> np.ndarray:
    import tvm

    x = np.concatenate([x.astype(np.float32), np.zeros(-len(x) % W, np.float32)])
    y = tvm.runtime.empty(x.shape, "float32", tvm.cpu(0))
    lib["main"](tvm.runtime.tensor(x, tvm.cpu(0)), y)
    return y.numpy()


def _between(lo: float, hi: float) -> np.ndarray:
    """Every float32 in [lo, hi] (same sign)."""
    a, b = sorted(np.array([lo, hi], np.float32).view(np.uint32))
    return np.arange(a, b + 1, dtype=np.uint32).view(np.float32)


def _inputs() -> np.ndarray:
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 88.0, -88.0], np.float32)
    edges = [
        _between(expf.UNDERFLOW - 0.5, -103.0),  # underflow, and glibc's may-underflow branch
        _between(87.5, expf.OVERFLOW + 0.25),  # overflow
        _between(-1.01e-8, -1e-8),  # k = 0, r near 0
        _between(1e-8, 1.01e-8),
    ]
    strided = (np.arange(1 << 16, dtype=np.uint64) * 65537 + 12345).astype(np.uint32)
    return np.concatenate(
        [
            special,
            *edges,
            rng.uniform(-40, 0, 1 << 18).astype(np.float32),  # softmax: x - max
            rng.standard_normal(1 << 18).astype(np.float32) * 8,  # SiLU: -gate
            strided.view(np.float32),
        ]
    )


@pytest.mark.parametrize("lookup", LOOKUPS)
@pytest.mark.skipif(not GLIBC_FMA, reason="the reference is glibc's expf on a CPU with FMA")
def test_bit_for_bit_glibc(lookup: str) -> None:
    x = _inputs()
    got, want = _exp(_kernel(lookup), x), _exp(_kernel("libm"), x)
    nan = np.isnan(got) & np.isnan(want)
    differ = (got.view(np.uint32) != want.view(np.uint32)) & ~nan
    print(f"{lookup}: {x.size} values, {int(differ.sum())} differ from libm's expf")
    assert not differ.any(), np.stack([x, got, want])[:, differ][:, :5]


@pytest.mark.parametrize("lookup", LOOKUPS)
def test_within_one_ulp_of_float64_exp(lookup: str) -> None:
    x = _inputs()
    x = x[np.isfinite(x) & (x > -87.0) & (x < 88.0)]  # normal float32 results
    got = _exp(_kernel(lookup), x)[: x.size]
    want = np.exp(x.astype(np.float64))
    ulp = np.spacing(want.astype(np.float32)).astype(np.float64)
    err = np.abs(got.astype(np.float64) - want) / ulp
    print(f"{lookup}: max error {err.max():.3f} ULP over {x.size} values")
    assert err.max() <= 1.0


def test_special_values() -> None:
    got = _exp(_kernel(expf.lookup()), np.array([-np.inf, np.inf, np.nan, 0.0, -200.0, 200.0]))
    assert got[0] == 0.0 and got[1] == np.inf and np.isnan(got[2]) and got[3] == 1.0
    assert got[4] == 0.0 and got[5] == np.inf


@pytest.mark.parametrize("lookup", LOOKUPS)
def test_no_libm_call_and_the_lookup_is_built(lookup: str) -> None:
    asm = _kernel(lookup).mod.inspect_source("asm")
    calls = re.findall(r"call\w*\s+(\S+)", asm)
    assert not [c for c in calls if "exp" in c], calls
    if lookup == "avx512":
        assert re.search(r"vperm[it]2pd\s.*zmm", asm)


def test_table_is_exp2_of_i_over_32() -> None:
    for i, bits in enumerate(expf.TABLE):
        v = np.array([bits + (i << 47)], np.uint64).view(np.float64)[0]
        assert abs(v / 2.0 ** (i / 32) - 1) <= 2**-53  # 2^(i/32) rounded to float64


def test_unknown_lookup_is_one_line() -> None:
    with pytest.raises(EdgespecError, match="unknown exp table lookup sve; known: avx512"):
        with expf.building_with("sve"):
            pass
