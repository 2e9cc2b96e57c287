"""kernels/compiled.py HugeArena: the tvm backend's weights in one huge-page-advised map."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgespec.errors import EdgespecError
from edgespec.kernels.compiled import HUGE_PAGE, HugeArena, address, mapped_file


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


def test_a_whole_mapped_file_is_read_not_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An array that is a whole .npy file's map (as the packed-weights cache loads them), or
    a contiguous view of all of it, is read from the file; a part of one, or a transposed
    view, is copied from memory. Both give the array's values."""
    rng = np.random.default_rng(1)
    want = rng.integers(0, 255, (64, 300), dtype=np.uint8)
    np.save(tmp_path / "w.npy", want)
    m = np.load(tmp_path / "w.npy", mmap_mode="r")
    path = (str(tmp_path / "w.npy"), int(m.offset))
    assert mapped_file(m) == path and m.offset > 0  # after the .npy header
    assert mapped_file(np.ascontiguousarray(m)) == path  # a view of all of it
    assert mapped_file(m[1:]) is None and mapped_file(m.T) is None
    assert mapped_file(want) is None
    reads: list[str] = []
    real_open = open

    def spy(file: str, *a: object, **k: object) -> object:
        reads.append(str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    parts = [m, m[1:], m.T, np.ascontiguousarray(m)]
    arena = HugeArena(sum(HugeArena.footprint(np.ascontiguousarray(a)) for a in parts))
    for a in parts:
        np.testing.assert_array_equal(arena.place(a), a)
    assert reads == [path[0], path[0]]  # the whole map and its view: read from the file
