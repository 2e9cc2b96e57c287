"""The ONNX backend's ``inputs_embeds`` entry (export.embeds_inputs, OnnxModel.forward_embeds).

Exactness: the graph's ``Where`` copies one branch bit for bit, so the embedding rows of the
ids fed through :meth:`OnnxModel.forward_embeds` give the same logits as :meth:`forward` of
the ids, bit for bit, when both calls have the same shapes (measured: max |diff| 0.0 on the
tiny llama, both graph styles: ``pytest tests/backends/test_ort_embeds.py``). The ids path of
an edited graph equals the same graph before the edit, bit for bit.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("optimum.exporters.onnx")

from edgespec.errors import EdgespecError  # noqa: E402
from edgespec.export import hf_onnx  # noqa: E402
from edgespec.export.embeds_inputs import (  # noqa: E402
    EMBEDS_INPUT,
    FLAG_INPUT,
    HIDDEN_OUTPUT,
    ensure_embeds_inputs,
    remove_embeds_inputs,
)
from edgespec.runtimes import LoadOptions, ModelSource  # noqa: E402
from edgespec.runtimes.ort import OnnxModel, load_onnx_dir  # noqa: E402

pytestmark = [pytest.mark.backend]

PROMPT = [5, 17, 42, 99, 3, 250, 128, 7, 64, 200]
LATER = [11, 12, 13]
#: hidden_states @ lm_head (NumPy) vs ORT's logits, tiny llama, both graph styles: max |diff|
#: measured 0.0 here (test_hidden_states), logits up to 2.1; the bound is 4 float32 ulps at
#: 2.1 (4 * 2.4e-7), for a BLAS that sums in another order
HEAD_ATOL = 1e-6


@pytest.fixture(scope="module", params=sorted(hf_onnx.ONNX_GRAPHS))
def onnx_dir(request: pytest.FixtureRequest, tiny_llama_dir: Path, onnx_home: Path) -> Path:
    """The tiny llama's conversion in one graph style; the shared ``onnx_home`` means
    test_ort.py's conversion of the same model is reused (a cache hit, not a new export)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGESPEC_HOME", str(onnx_home))
        source = ModelSource("hf", tiny_llama_dir, "tiny-llama")
        return hf_onnx.ensure_onnx(source, progress=False, graph=str(request.param))


@pytest.fixture(scope="module")
def table(onnx_dir: Path) -> np.ndarray:
    """The graph's token-embedding table ``float32[V, D]`` (the tiny llama has no scale)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_dir / "model.onnx"))
    gather = next(n for n in proto.graph.node if n.op_type == "Gather" and "input_ids" in n.input)
    init = next(t for t in proto.graph.initializer if t.name == gather.input[0])
    return numpy_helper.to_array(init).astype(np.float32)


def _open(folder: Path, *, exact: bool = False) -> OnnxModel:
    options = LoadOptions(n_ctx=128, n_threads=2, progress=False, exact=exact)
    return load_onnx_dir(folder, options)


def test_one_call_equals_ids_and_continues(onnx_dir: Path, table: np.ndarray) -> None:
    by_ids, by_embeds = _open(onnx_dir), _open(onnx_dir)
    want = by_ids.forward(PROMPT)
    got = by_embeds.forward_embeds(table[PROMPT])
    assert got.shape == want.shape == (len(PROMPT), table.shape[0])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert by_embeds.n_past == len(PROMPT)
    # token ids continue over the cache the embeddings filled
    np.testing.assert_array_equal(by_embeds.forward(LATER), by_ids.forward(LATER))
    np.testing.assert_array_equal(by_embeds.forward([9]), by_ids.forward([9]))


def test_chunks_and_last_row(onnx_dir: Path, table: np.ndarray) -> None:
    by_ids, by_embeds = _open(onnx_dir), _open(onnx_dir)
    want = np.concatenate([by_ids.forward(PROMPT[:4]), by_ids.forward(PROMPT[4:])])
    first = by_embeds.forward_embeds(table[PROMPT[:4]])
    last = by_embeds.forward_embeds(table[PROMPT[4:]], all_logits=False)
    np.testing.assert_array_equal(first, want[:4])
    np.testing.assert_array_equal(last, want[-1:])
    # truncation into the embedded rows and ids after it: the same as the ids model
    by_ids.truncate(6)
    by_embeds.truncate(6)
    np.testing.assert_array_equal(by_embeds.forward(LATER), by_ids.forward(LATER))


def test_exact_mode_one_row(onnx_dir: Path, table: np.ndarray) -> None:
    by_ids, by_embeds = _open(onnx_dir, exact=True), _open(onnx_dir, exact=True)
    by_ids.forward(PROMPT)
    by_embeds.forward(PROMPT)
    np.testing.assert_array_equal(by_embeds.forward_embeds(table[[77]]), by_ids.forward([77]))
    assert by_embeds.n_past == by_ids.n_past == len(PROMPT) + 1


def test_bad_embeds_are_one_line(onnx_dir: Path, table: np.ndarray) -> None:
    model = _open(onnx_dir)
    for bad in (table[:0], table[0], table[:2, :10]):
        with pytest.raises(EdgespecError, match="inputs_embeds must have shape"):
            model.forward_embeds(bad)
    with pytest.raises(EdgespecError, match="context full"):
        model.forward_embeds(np.zeros((129, table.shape[1]), dtype=np.float32))
    assert model.n_past == 0


def test_old_conversion_is_upgraded_and_ids_path_unchanged(
    onnx_dir: Path, table: np.ndarray, tmp_path: Path
) -> None:
    old = tmp_path / "old"
    shutil.copytree(onnx_dir, old)
    assert remove_embeds_inputs(old / "model.onnx") is True
    before = _open(old)
    with pytest.raises(EdgespecError, match="no inputs_embeds input; re-convert"):
        before.forward_embeds(table[PROMPT])
    ids_before = before.forward(PROMPT)
    with pytest.raises(EdgespecError, match="no hidden_states output; re-convert"):
        before.hidden_states(PROMPT)
    assert ensure_embeds_inputs(old) is True
    assert ensure_embeds_inputs(old) is False  # idempotent
    inputs, outputs = hf_onnx.graph_io(old / "model.onnx")
    assert {EMBEDS_INPUT, FLAG_INPUT} <= set(inputs)
    assert HIDDEN_OUTPUT in outputs
    after = _open(old)
    np.testing.assert_array_equal(after.forward(PROMPT), ids_before)  # the ids path: unchanged
    np.testing.assert_array_equal(_open(old).forward_embeds(table[PROMPT]), ids_before)


def _lm_head(onnx_dir: Path) -> np.ndarray:
    """The weight ``float32[D, V]`` of the MatMul that makes ``logits``."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(onnx_dir / "model.onnx"))
    head = next(n for n in proto.graph.node if "logits" in n.output)
    init = next(t for t in proto.graph.initializer if t.name == head.input[1])
    return numpy_helper.to_array(init).astype(np.float32)


def test_hidden_states(onnx_dir: Path) -> None:
    by_ids, by_hidden = _open(onnx_dir), _open(onnx_dir)
    logits = by_ids.forward(PROMPT)
    hidden = by_hidden.hidden_states(PROMPT)
    assert hidden.shape == (len(PROMPT), 64) and hidden.dtype == np.float32
    assert by_hidden.n_past == len(PROMPT)
    # the LM head in NumPy sums in another order than ORT's MatMul
    np.testing.assert_allclose(hidden @ _lm_head(onnx_dir), logits, rtol=0, atol=HEAD_ATOL)
    # the cache it filled is the one forward fills, and later runs fetch logits again
    np.testing.assert_array_equal(by_hidden.forward(LATER), by_ids.forward(LATER))


def test_memory_prefixed_on_onnx(onnx_dir: Path, table: np.ndarray) -> None:
    from edgespec.compress.dolphin.memory import MemoryPrefixed

    rng = np.random.default_rng(0)
    memory = rng.standard_normal((4, table.shape[1])).astype(np.float32)
    plain = _open(onnx_dir)
    plain.forward_embeds(memory, all_logits=False)
    want = plain.forward(PROMPT)
    target = MemoryPrefixed(_open(onnx_dir), memory)
    assert target.n_past == 4
    np.testing.assert_array_equal(target.forward(PROMPT), want)
    target.reset()  # back to just the memory
    assert target.n_past == 4
    np.testing.assert_array_equal(target.forward(PROMPT), want)


def _graph_table(folder: Path) -> np.ndarray:
    """The embedding table ``float32[V, D]`` that the graph's ``Gather`` by ``input_ids``
    reads: an initializer, or the transpose of the tied LM head (smollm2)."""
    import onnx
    from onnx import numpy_helper
    from onnx.external_data_helper import load_external_data_for_tensor

    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    inits = {t.name: t for t in graph.initializer}
    name = next(n for n in graph.node if n.op_type == "Gather" and "input_ids" in n.input).input[0]
    transpose = name not in inits
    if transpose:
        name = next(n for n in graph.node if name in n.output).input[0]
    tensor = inits[name]
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        load_external_data_for_tensor(tensor, str(folder))
    table = numpy_helper.to_array(tensor).astype(np.float32)
    return np.ascontiguousarray(table.T if transpose else table)


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["fp32", "gguf-exact"])
def test_smollm2_tied_embeddings(smollm2_path: Path, weights: str) -> None:
    """The real model: tied embeddings (the lookup reads a Transpose of the LM head) and, for
    gguf-exact, a MatMulNBits LM head; conversions cached before the edit are upgraded on
    load (runtimes.ort.converted_folder)."""
    from edgespec.runtimes import BACKENDS

    source = ModelSource("gguf", smollm2_path, "smollm2-135m")
    opts = LoadOptions(n_ctx=64, n_threads=2, progress=False, weights=weights)
    load = BACKENDS.get("onnx").load
    by_ids, by_embeds, by_hidden = load(source, opts), load(source, opts), load(source, opts)
    assert isinstance(by_ids, OnnxModel) and by_ids.path is not None
    prompt = [1, 504, 3458, 282, 4649, 314, 253, 1345, 28, 357]
    want = by_ids.forward(prompt)
    table = _graph_table(by_ids.path)
    np.testing.assert_array_equal(by_embeds.forward_embeds(table[prompt]), want)
    hidden = by_hidden.hidden_states(prompt)
    assert hidden.shape == (len(prompt), by_ids.info.hidden_size)
    later = by_ids.forward([2988])
    np.testing.assert_array_equal(by_embeds.forward([2988]), later)
    np.testing.assert_array_equal(by_hidden.forward([2988]), later)
