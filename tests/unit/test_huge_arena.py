"""kernels/compiled.py HugeArena: the tvm backend's weights in one huge-page-advised map."""

from __future__ import annotations

import numpy as np
import pytest

from edgespec.errors import EdgespecError
from edgespec.kernels.compiled import HUGE_PAGE, HugeArena, address


def test_places_copies_on_page_boundaries() -> None:
    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal((3, 5)).astype(np.float32),
        rng.integers(0, 255, (4097,), dtype=np.uint8),
        np.asfortranarray(rng.standard_normal((6, 7))),  # not C-contiguous: copied C-order
    ]
    arena = HugeArena(sum(HugeArena.footprint(a) for a in arrays))
    placed = [arena.place(a) for a in arrays]
    assert address(placed[0]) % HUGE_PAGE == 0  # the first on a huge page boundary
    for a, p in zip(arrays, placed, strict=True):
        np.testing.assert_array_equal(p, a)
        assert p.dtype == a.dtype and p.flags.c_contiguous and address(p) % 4096 == 0
    # one page per small array, two for 4097 bytes: they follow each other
    assert address(placed[1]) - address(placed[0]) == 4096
    assert address(placed[2]) - address(placed[1]) == 8192
    arrays[0][0, 0] = 99.0
    assert placed[0][0, 0] != 99.0  # copies, not views


def test_full_arena_is_one_line() -> None:
    arena = HugeArena(4096)
    arena.place(np.zeros(4096, np.uint8))
    big = np.zeros(HUGE_PAGE + 1, np.uint8)
    with pytest.raises(EdgespecError, match="huge-page arena full"):
        arena.place(big)


def test_tvm_tensor_uses_it_in_place() -> None:
    tvm = pytest.importorskip("tvm")
    arena = HugeArena(4096)
    placed = arena.place(np.arange(16, dtype=np.float32))
    t = tvm.runtime.from_dlpack(placed)
    placed[3] = -1.0
    assert t.numpy()[3] == -1.0  # the tensor's memory is the arena's


def test_zeros_are_zero_and_follow_each_other() -> None:
    arena = HugeArena(4 * 4096)
    a = arena.zeros((2, 3, 5), np.float16)
    b = arena.zeros((1025,), np.float32)  # 4100 bytes: two pages
    c = arena.zeros((7,), np.int64)
    assert a.shape == (2, 3, 5) and a.dtype == np.float16 and not a.any()
    assert b.shape == (1025,) and not b.any() and b.flags.c_contiguous
    assert address(b) - address(a) == 4096 and address(c) - address(b) == 8192
    b[:] = 1.0
    assert not a.any() and not c.any()  # disjoint
