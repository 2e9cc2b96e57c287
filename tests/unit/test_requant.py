"""A draft requantized by llama.cpp's quantizer (``edgespec.requant``, ``draft_quant``).

The copy is checked against an independent quantizer (gguf-py's NumPy Q4_0, which must
give the same bytes as llama.cpp's C one for every tensor it requantized), cached by
content digest, written atomically, and refused in one line where it cannot be made.
Speculation with a requantized draft must equal plain decoding token for token.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgespec.errors import EdgespecError
from edgespec.runtimes.base import LoadOptions, ModelSource

pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

pytestmark = pytest.mark.unit


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGESPEC_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _tensors(path: Path) -> dict[str, object]:
    from edgespec.gguf_file import open_gguf

    return {t.name: t for t in open_gguf(path).reader.tensors}


def test_q4_0_copy_is_gguf_py_quantizer_of_the_dequantized_file(
    tiny_q4km_gguf: Path, home: Path
) -> None:
    """Every matrix of the Q4_K_M file (Q4_K, Q6_K, Q5_0, Q8_0) that became Q4_0 holds the
    bytes gguf-py's quantizer makes from the file's dequantized values; 1-D tensors are
    copied; the output matrix may take llama.cpp's own choice for it."""
    from edgespec.requant import requantize

    src = ModelSource("gguf", tiny_q4km_gguf, "tiny")
    out = requantize(src, "q4_0", progress=False)
    assert out.kind == "gguf" and out.name == "tiny@q4_0"
    assert out.path.parent == home / "converted" / "requant"
    before, after = _tensors(tiny_q4km_gguf), _tensors(out.path)
    assert before.keys() == after.keys()
    source_types = set()
    requantized = 0
    for name, t in after.items():
        s = before[name]
        if len(s.data.shape) == 1 or s.tensor_type.name == "F32":
            assert t.tensor_type == s.tensor_type
            np.testing.assert_array_equal(np.asarray(t.data), np.asarray(s.data))
            continue
        if name == "output.weight" and t.tensor_type.name != "Q4_0":
            continue  # llama.cpp keeps the output in a wider type (Q6_K here)
        assert t.tensor_type.name == "Q4_0", (name, t.tensor_type.name)
        values = gguf.quants.dequantize(s.data, s.tensor_type).astype(np.float32)
        want = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q4_0)
        assert np.array_equal(np.asarray(t.data).view(np.uint8), want.view(np.uint8)), name
        source_types.add(s.tensor_type.name)
        requantized += 1
    assert requantized >= 3 * 4, requantized  # every layer's matrices
    assert {"Q4_K", "Q6_K"} <= source_types, source_types


def test_the_copy_is_cached_by_content(tiny_q4km_gguf: Path, home: Path, tmp_path: Path) -> None:
    from edgespec.requant import requantize

    src = ModelSource("gguf", tiny_q4km_gguf, "tiny")
    first = requantize(src, "q8_0", progress=False)
    stamp = first.path.stat().st_mtime_ns
    again = requantize(src, "q8_0", progress=False)
    assert again.path == first.path and again.path.stat().st_mtime_ns == stamp
    # another file under the same name gets its own copy
    other = tmp_path / tiny_q4km_gguf.name
    shutil.copy(tiny_q4km_gguf, other)
    with open(other, "ab") as f:
        f.write(b"\0" * 32)  # tensor data padding: same model, other bytes
    assert requantize(ModelSource("gguf", other, "tiny"), "q8_0", progress=False).path != first.path
    assert not [p for p in first.path.parent.iterdir() if p.name.endswith(".partial")]


def test_what_cannot_be_requantized_is_one_line(
    tiny_q4km_gguf: Path, tiny_llama_dir: Path, home: Path, tmp_path: Path
) -> None:
    from edgespec.requant import requantize

    src = ModelSource("gguf", tiny_q4km_gguf, "tiny")
    with pytest.raises(EdgespecError, match="unknown quantization 'q3_k'; known: q4_0"):
        requantize(src, "q3_k", progress=False)
    with pytest.raises(EdgespecError, match="needs a GGUF model.*edgespec export --format gguf"):
        requantize(ModelSource("hf", tiny_llama_dir, "tiny-hf"), "q4_0", progress=False)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_q4km_gguf.read_bytes()[: tiny_q4km_gguf.stat().st_size // 2])
    with pytest.raises(EdgespecError, match="could not requantize") as err:
        requantize(ModelSource("gguf", cut, "cut"), "q4_0", progress=False)
    assert "\n" not in str(err.value)
    folder = home / "converted" / "requant"
    assert not folder.exists() or not list(folder.iterdir()), "nothing half-written"


def test_draft_quant_option_is_checked_before_loading() -> None:
    from edgespec.requant import draft_choice
    from edgespec.speculative.config import SpecConfig

    assert SpecConfig().draft_quant is None  # the runtime's draft as loaded
    assert SpecConfig(draft_quant="none").draft_quant == "file"
    assert SpecConfig(draft_quant="file").draft_quant == "file"
    assert SpecConfig(draft_quant="q4_0").draft_quant == "q4_0"
    # a flag or bench spec's "none" is the name (the file's types), not an absent value
    assert SpecConfig.parse_value("draft_quant", "none") == "none"
    with pytest.raises(EdgespecError, match="draft_quant must be one of file, none, q4_0"):
        SpecConfig(draft_quant="q2")
    assert [draft_choice(v) for v in (None, "auto", "none", "file", "q8_0")] == [
        "auto",
        "auto",
        "file",
        "file",
        "q8_0",
    ]
    with pytest.raises(EdgespecError, match="unknown draft quantization 'q2'; known: auto, file"):
        draft_choice("q2")


def test_auto_requantizes_a_wide_draft_that_streams_from_memory(
    tiny_q4km_gguf: Path, tiny_llama_dir: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule of ``draft_quant="auto"``: a GGUF file above the CPU's largest cache, whose
    layers average more than 5 bits a weight, on a backend that runs the file's blocks."""
    from edgespec import requant
    from edgespec.runtimes import BACKENDS

    assert requant.cache_bytes() >= 1 << 20  # this CPU's, or the 32 MiB assumed
    tiny = ModelSource("gguf", tiny_q4km_gguf, "tiny")
    monkeypatch.setattr(requant, "cache_bytes", lambda: 0)
    # Q4_K_M with more Q4_K than wider types: 4.80 bits (the Qwen 1.5B's file: 4.81)
    assert 4.5 < requant.layer_bits(tiny) <= 5.0
    assert requant.auto_quant(tiny, BACKENDS.get("tvm")) is None
    wide = requant.requantize(tiny, "q8_0", progress=False)
    assert requant.layer_bits(wide) == 8.5
    size = wide.path.stat().st_size
    monkeypatch.setattr(requant, "cache_bytes", lambda: size)  # fits: the file as it is
    assert requant.auto_quant(wide, BACKENDS.get("tvm")) is None
    monkeypatch.setattr(requant, "cache_bytes", lambda: size - 1)  # streams from memory
    for name in ("tvm", "llamacpp", "onnx"):
        assert requant.auto_quant(wide, BACKENDS.get(name)) == "q4_0", name
    assert requant.auto_quant(wide, BACKENDS.get("numpy")) is None  # dequantizes: no gain
    assert requant.auto_quant(wide, BACKENDS.get("tvm"), weights="fp32") is None
    assert requant.auto_quant(ModelSource("hf", tiny_llama_dir, "hf")) is None
    narrow = requant.requantize(tiny, "q4_0", progress=False)
    monkeypatch.setattr(requant, "cache_bytes", lambda: 0)
    assert requant.layer_bits(narrow) == 4.5  # every layer matrix in Q4_0: nothing to gain
    assert requant.auto_quant(narrow, BACKENDS.get("tvm")) is None


@pytest.mark.backend
def test_load_drafts_with_a_q4_0_copy_of_a_wide_draft(qwen05b_path: Path) -> None:
    """``edgespec.load`` with the real Qwen2.5-Coder 0.5B (Q4_K_M, layers 5.52 bits a weight,
    larger than any CPU cache) as target and draft on llama.cpp: by default the draft runs
    its Q4_0 copy, and speculation with it equals plain decoding token for token; the
    strategies whose output depends on the draft get the file's weights; ``file`` keeps
    them for speculation too."""
    import edgespec
    from edgespec.losslessness import plain_reference
    from edgespec.speculative.config import SpecConfig

    with edgespec.load(
        qwen05b_path, backend="llamacpp", draft=qwen05b_path, n_ctx=256, progress=False
    ) as rt:
        assert rt.draft_quant == "q4_0" and rt.draft_source is not None
        assert rt.draft_source.path == qwen05b_path
        assert rt.draft is not None and rt.draft is not rt.target
        prompt = rt.tokenizer.encode("def fibonacci(n):\n    ")
        ref = plain_reference(rt.target, prompt, 24).tokens
        config = SpecConfig(proposers=("draft",), k=3, draft_head=0)
        res = rt.generate(prompt, max_new_tokens=24, strategy="speculative", config=config)
        assert res.token_ids == ref[: len(res.token_ids)] and len(res.token_ids) > 0
        assert sum(n * c for n, c in res.stats.accept_hist.items()) > 0
        # asking for the type it already runs is the same model, not a second copy
        assert rt.draft_requantized("q4_0") is rt.draft and not rt._drafts
        whole = rt.file_draft()
        assert whole is not None and whole is not rt.draft and rt._drafts.keys() == {"file"}
        assert rt.file_draft() is whole and rt.draft_requantized("file") is whole
        # a lossy two-model strategy's small model, and the drafter sharing its cache
        from edgespec.strategies import STRATEGIES

        prepared = STRATEGIES.get("entropy-switch").prepare(rt, None)
        assert prepared.small is whole
        assert prepared.session is not None
        assert prepared.session.proposers["draft"].model is whole  # llama.cpp: no head
    with edgespec.load(
        qwen05b_path,
        backend="llamacpp",
        draft=qwen05b_path,
        n_ctx=64,
        progress=False,
        draft_quant="file",
    ) as rt:
        assert rt.draft_quant is None and rt.file_draft() is rt.draft


@pytest.mark.backend
def test_speculation_with_a_requantized_draft_equals_plain_decoding(
    tiny_q4km_gguf: Path, home: Path
) -> None:
    """The target and the draft are the tiny Q4_K_M file on tvm; the draft runs its Q4_0
    copy. Its drafts are accepted (the same weights in fewer bits), and the output is plain
    decoding's, token for token."""
    pytest.importorskip("tvm")
    from edgespec.kernels.qlinear_q8 import int8_isa
    from edgespec.losslessness import plain_reference
    from edgespec.runtime import Runtime
    from edgespec.runtimes.tvm_backend import TvmBackend
    from edgespec.speculative.config import SpecConfig
    from edgespec.testing import CharTokenizer

    src = ModelSource("gguf", tiny_q4km_gguf, "tiny")
    weights = "gguf-q8act" if int8_isa() is not None else "gguf-exact"
    opts = LoadOptions(n_ctx=256, n_threads=1, progress=False, weights=weights)
    target = TvmBackend.load(src, opts)
    draft = TvmBackend.load(src, opts)
    alphabet = "".join(chr(0x100 + i) for i in range(256))
    rt = Runtime(
        CharTokenizer(alphabet),
        target,
        "tvm",
        src,
        opts,
        draft,
        draft_source=src,
        draft_backend="tvm",
    )
    prompt = [5, 17, 3, 99, 42, 5, 17, 3, 99, 42]
    ref = plain_reference(target, prompt, 32).tokens
    config = SpecConfig(proposers=("draft",), k=3, draft_quant="q4_0")
    res = rt.generate(
        prompt, max_new_tokens=32, strategy="speculative", ignore_eos=True, config=config
    )
    assert res.token_ids == ref
    (used,) = rt._drafts.values()
    assert used is not draft and rt._drafts.keys() == {"q4_0"}
    hist = res.stats.accept_hist
    assert sum(n * c for n, c in hist.items()) > 0, hist
    rt.close()


def test_the_runtime_needs_a_draft_and_its_file() -> None:
    from dataclasses import replace

    from edgespec.testing import PrefixModel, fake_runtime

    rt = fake_runtime("abcdefgh", progress=False)
    with pytest.raises(EdgespecError, match="needs a draft model; pass --draft"):
        rt.draft_requantized("q4_0")
    rt = replace(rt, draft=PrefixModel(vocab_size=8, scale=3.0))  # a model, not a file
    with pytest.raises(EdgespecError, match="needs to know the draft's file"):
        rt.draft_requantized("q4_0")
    with pytest.raises(EdgespecError, match="unknown quantization 'q4'"):
        rt.draft_requantized("q4")
