"""benchmarks/tvm_stream_floor.py: the streaming yardstick reads what it says it reads."""

from __future__ import annotations

import numpy as np
import pytest

from edgespec.testing import load_script

pytest.importorskip("tvm")


@pytest.mark.parametrize(("order", "side", "stores"), [("seq", False, 0), ("kernel", True, 3)])
def test_stream_kernel_sums_every_byte(order: str, side: bool, stores: int) -> None:
    """Each 64-byte load of every 1 KB step, ``work`` times, into accumulator ``line % 4``
    as ``vpdpbusd`` with the activations (and the side streams once per 8 KB): the sums equal
    NumPy's, so the timed kernel really reads the whole stream."""
    import tvm

    from edgespec.kernels.qlinear_q8 import cpu_has
    from edgespec.kernels.tuning import host_target

    if not cpu_has("vnni"):
        pytest.skip("the yardstick kernel needs AVX512-VNNI")
    mod = load_script("tvm_stream_floor.py")
    kb, work = 16, 2
    func = mod.stream_kernel(kb, work, 8, order == "kernel", side, stores)
    fn = tvm.compile(tvm.IRModule({"stream": func}), target=host_target())["stream"]
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (kb + 64, 1024), dtype=np.uint8)
    q = rng.integers(-128, 128, 64, dtype=np.int8)
    sd = rng.integers(0, 256, (kb // 8 + 8, 512), dtype=np.uint8)
    sm = rng.integers(0, 256, (kb // 8 + 8, 512), dtype=np.uint8)
    dev = tvm.cpu(0)
    out = tvm.runtime.empty((64 + 8 * stores * 16,), "int32", dev)
    args = [tvm.runtime.tensor(a, dev) for a in (codes, q)]
    fn(args[0], args[1], out, tvm.runtime.tensor(sd, dev), tvm.runtime.tensor(sm, dev))
    want = np.zeros((4, 16), np.int64)
    for b in range(kb):
        if side and b % 8 == 0:
            for line in range(8):
                for part in (sd, sm):
                    want[line % 4] += part[b // 8, line * 64 : line * 64 + 64].view(np.int32)
        for line in range(16):
            at = (line % 4) * 256 + (line // 4) * 64 if order == "kernel" else line * 64
            w = codes[b, at : at + 64].astype(np.int64) * q.astype(np.int64)
            want[line % 4] += work * w.reshape(16, 4).sum(axis=1)
    got = out.numpy()[:64].reshape(4, 16).astype(np.int64)
    wrap = ((want + 2**31) % 2**32) - 2**31  # int32 accumulators wrap
    np.testing.assert_array_equal(got, wrap)
