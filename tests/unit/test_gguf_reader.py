"""edgespec.gguf_file's reader reads metadata arrays lazily and gives the same fields as
gguf-py's ``GGUFReader`` (names, offsets, types, element counts, contents, tensors), which took
26 s on the Qwen 1.5B's vocabulary (load average 9); arrays of strings and numbers keep no
per-element parts (docs/tvm.md, "Start-up time"), nested arrays keep gguf-py's."""

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
        assert (fa.offset, fa.types, len(fa.data)) == (fb.offset, fb.types, len(fb.data)), k
        lazy = len(fa.types) == 2 and fa.types[0] == gguf.GGUFValueType.ARRAY
        if not lazy:  # scalars, nested and empty arrays: gguf-py's own parts
            assert len(fa.parts) == len(fb.parts), k
            for x, y in zip(fa.parts, fb.parts, strict=True):
                assert (x.dtype, x.shape, x.tobytes()) == (y.dtype, y.shape, y.tobytes()), k
            assert list(fa.data) == list(fb.data), k
        assert fa.contents() == fb.contents(), k
        for i in (0, len(fa.data) - 1, slice(1, 3)) if len(fa.data) else ():
            assert fa.contents(i) == fb.contents(i), (k, i)
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


def test_a_lazy_array_is_read_once(tmp_path: Path) -> None:
    """contents() decodes a lazy array on its first call, and later calls reuse the list."""
    path = tmp_path / "one.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_array("t.strings", ["a", "b"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    field = _fast_reader()(path).fields["t.strings"]
    assert field.parts[-1][0] == 2 and len(field.parts) == 5  # key, its length, type, itype, n
    first = field.contents()
    assert first == ["a", "b"] and field.contents(1) == "b"
    assert field.__dict__["_values"] is not None
