"""edgespec.gguf_file's reader parses metadata arrays in bulk and builds the same fields as
gguf-py's ``GGUFReader`` (parts, indices, types, contents), which took 26 s on the Qwen 1.5B's
vocabulary (load average 9; ours 1.3 s)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from edgespec.gguf_file import _fast_reader, open_gguf  # noqa: E402


def _same(path: Path) -> None:
    a, b = gguf.GGUFReader(path), _fast_reader()(path)
    assert list(a.fields) == list(b.fields)
    for k, fa in a.fields.items():
        fb = b.fields[k]
        assert (fa.offset, fa.types, list(fa.data)) == (fb.offset, fb.types, list(fb.data)), k
        assert len(fa.parts) == len(fb.parts), k
        for x, y in zip(fa.parts, fb.parts, strict=True):
            assert (x.dtype, x.shape, x.tobytes()) == (y.dtype, y.shape, y.tobytes()), k
        assert fa.contents() == fb.contents(), k
    assert a.data_offset == b.data_offset
    for x, y in zip(a.tensors, b.tensors, strict=True):
        assert (x.name, x.tensor_type, x.data_offset) == (y.name, y.tensor_type, y.data_offset)
        np.testing.assert_array_equal(x.data, y.data)


def test_fields_equal_gguf_py(tmp_path: Path) -> None:
    path = tmp_path / "arrays.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_array("t.strings", ["a", "", "héllo", "x" * 300])
    w.add_array("t.ints", [1, -2, 3])
    w.add_array("t.floats", [0.5, -1.25])
    w.add_array("t.bools", [True, False, True])
    w.add_array("t.empty", [])
    w.add_array("t.nested", [[1, 2], [3]])
    w.add_string("t.one", "scalar")
    w.add_uint32("t.u32", 7)
    w.add_tensor("w", np.arange(12, dtype=np.float32).reshape(3, 4))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _same(path)
    gf = open_gguf(path)
    assert gf.get("t.strings") == ["a", "", "héllo", "x" * 300]
    assert gf.get("t.ints") == [1, -2, 3]


@pytest.mark.slow
def test_fields_equal_gguf_py_on_smollm2(smollm2_path: Path) -> None:
    _same(smollm2_path)
