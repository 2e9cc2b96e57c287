"""runtimes/embed_rows.py: an embedding table's rows, dequantized a row at a time from the
file's blocks, equal the whole table dequantized (gguf.quants) bit for bit, through the row
cache, its restart, and a prompt longer than it.

On the zoo's three GGUF files (SmolLM2's Q8_0 table, the Qwen 1.5B's Q4_K, the 0.5B's Q5_0)
and a float32 table.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from edgespec.runtimes import embed_rows  # noqa: E402
from edgespec.runtimes.embed_rows import EmbeddingRows  # noqa: E402

pytestmark = [pytest.mark.backend]


def _table(path: Path) -> EmbeddingRows:
    from edgespec.gguf_file import open_gguf

    (t,) = [t for t in open_gguf(path).reader.tensors if t.name == "token_embd.weight"]
    return EmbeddingRows.from_gguf(t)


@pytest.mark.parametrize("model", ["smollm2_path", "qwen15b_path", "qwen05b_path"])
def test_rows_of_a_quantized_table_are_its_dequantized_rows(
    model: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    emb = _table(request.getfixturevalue(model))
    assert emb.qtype is not None and emb.table.dtype == np.uint8  # the file's blocks
    rng = np.random.default_rng(0)
    ids = rng.integers(0, emb.vocab, size=300)
    want = emb.dense()[ids]  # the whole table, as the load used to dequantize it
    assert want.shape == (300, emb.dim)
    monkeypatch.setattr(embed_rows, "CACHED_ROWS", 64)
    for step in (1, 1, 9, 4, 16, 1):  # single tokens and chunks, through cache restarts
        for s in range(0, 40, step):
            np.testing.assert_array_equal(emb.rows(ids[s : s + step]), want[s : s + step])
    assert 0 < len(emb._rows) <= 64
    out = np.zeros((ids.size, emb.dim), np.float32)  # longer than the cache: rows alone
    assert emb.rows(ids, out=out) is out
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(emb.rows(ids[::-1][:5]), want[::-1][:5])


def test_a_float32_table_is_indexed() -> None:
    table = np.arange(40, dtype=np.float32).reshape(10, 4)
    emb = EmbeddingRows(table)
    assert emb.dim == 4 and emb.vocab == 10 and emb.dense() is emb.table
    np.testing.assert_array_equal(emb.rows(np.array([3, 3, 0])), table[[3, 3, 0]])
