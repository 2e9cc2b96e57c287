"""Export pipeline: tiny random llama -> ONNX + GGUF bundles, verification, integrity, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgespec.errors import EdgespecError
from edgespec.testing import add_byte_tokenizer

pytestmark = pytest.mark.backend
pytest.importorskip("optimum.exporters.onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def tiny_tok_dir(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-llama-tok") / "m"
    shutil.copytree(tiny_llama_dir, out)
    add_byte_tokenizer(out)
    return out


def _export(**kw):
    from edgespec.export.pipeline import ExportOptions, run_export

    return run_export(ExportOptions(progress=False, **kw))


@pytest.fixture(scope="module")
def bundle(tiny_tok_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    _export(
        target=str(tiny_tok_dir),
        out=str(out),
        draft="layerskip:first:2",
        formats=("onnx", "gguf"),
        # int8 goes to both formats (onnx int8, gguf q8_0); FORMAT:NAME pins the others
        quants=("onnx:fp32", "int8", "onnx:int4", "fp16"),
        block_size=16,
    )
    return out


def _hf_greedy(folder: Path, prompt: list[int], n: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = m.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt) :].tolist()


def _greedy(model, prompt: list[int], n: int) -> list[int]:
    model.truncate(0)
    logits = model.forward(prompt)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits[-1])))
        logits = model.forward([out[-1]])
    return out


def test_manifest(bundle: Path) -> None:
    m = json.loads((bundle / "edgespec.json").read_text())
    assert m["format_version"] == 1
    assert set(m["roles"]) == {"target", "draft"}
    t = m["roles"]["target"]
    assert t["architecture"] == {
        "arch": "llama",
        "layers": 3,
        "hidden_size": 64,
        "vocab_size": 256,
        "context_length": 512,
        "intermediate_size": 128,
    }
    assert m["roles"]["draft"]["architecture"]["layers"] == 2
    got = {(a["format"], a["quantization"]) for a in t["artifacts"]}
    assert got == {
        ("onnx", "fp32"),
        ("onnx", "int8"),
        ("onnx", "int4"),
        ("gguf", "f16"),
        ("gguf", "q8_0"),
    }
    for a in t["artifacts"]:
        assert len(a["sha256"]) == 64 and a["size"] > 0
        v = a["verification"]
        assert v["greedy_agreement"] >= v["min_agreement"]
    by = {a["quantization"]: a["verification"] for a in t["artifacts"]}
    assert by["fp32"]["greedy_agreement"] == 1.0 and by["fp32"]["max_logit_diff"] < 1e-3
    assert by["f16"]["greedy_agreement"] == 1.0
    assert m["tokenizer"]["vocab_digest"] and m["tokenizer"]["vocab_size"] == 256


@pytest.mark.parametrize("backend", ["onnx", "llamacpp"])
def test_bundle_loads_and_matches_hf(bundle: Path, tiny_tok_dir: Path, backend: str) -> None:
    import edgespec

    prompt, n = [1, 17, 99, 4, 250, 33], 12
    want = _hf_greedy(tiny_tok_dir, prompt, n)
    with edgespec.load(str(bundle), backend=backend, n_ctx=256, progress=False) as rt:
        assert rt.backend == backend
        assert _greedy(rt.target, prompt, n) == want
        # the layerskip draft role becomes the runtime's draft, with the target's vocabulary
        assert rt.draft is not None and rt.draft.info.n_layers == 2
        assert rt.draft.info.vocab_size == rt.target.info.vocab_size


def test_layerskip_vocab_equals_target(bundle: Path) -> None:
    from edgespec.bundle import pick, read_manifest
    from edgespec.tokenizer import load_tokenizer

    m = read_manifest(bundle)
    t = load_tokenizer(pick(bundle, m, "target", kind="onnx"))
    d = load_tokenizer(pick(bundle, m, "draft", kind="onnx"))
    assert t.vocab() == d.vocab() and t.vocab_digest() == m["tokenizer"]["vocab_digest"]


def test_bundle_verify_and_tamper(bundle: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import edgespec
    from edgespec import cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ("edgespec.export.cli",))
    assert cli.main(["bundle", "verify", str(bundle), "-q"]) == 0
    assert "ok" in capsys.readouterr().out
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    cfg = copy / "target" / "onnx-fp32" / "config.json"
    cfg.write_text(cfg.read_text().replace("512", "513"))
    assert cli.main(["bundle", "verify", str(copy), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "target/onnx-fp32/config.json" in err
    with pytest.raises(EdgespecError, match="config.json"):
        edgespec.load(str(copy), backend="onnx", progress=False)


def _assert_nothing_left(parent: Path) -> None:
    assert [p.name for p in parent.iterdir()] == []


def test_dry_run_writes_nothing(tiny_tok_dir: Path, tmp_path: Path) -> None:
    r = _export(
        target=str(tiny_tok_dir),
        out=str(tmp_path / "b"),
        formats=("onnx", "gguf"),
        quants=("int4", "q8_0"),
        dry_run=True,
    )
    assert "  artifact: gguf q8_0" in r["plan"]
    _assert_nothing_left(tmp_path)


def test_bad_inputs(tiny_tok_dir: Path, tiny_llama_dir: Path, tmp_path: Path) -> None:
    import torch
    import transformers

    out = tmp_path / "out" / "b"
    (tmp_path / "out").mkdir()
    # unsupported architecture
    gpt2 = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)
    ).save_pretrained(gpt2)
    with pytest.raises(EdgespecError, match="supports llama, qwen2"):
        _export(target=str(gpt2), out=str(out))
    # corrupt source (truncated weights)
    bad = tmp_path / "bad"
    shutil.copytree(tiny_llama_dir, bad)
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(EdgespecError, match="corrupt"):
        _export(target=str(bad), out=str(out))
    # draft/target vocabulary mismatch
    torch.manual_seed(0)
    other = tmp_path / "v300"
    transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=300,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ).save_pretrained(other)
    with pytest.raises(EdgespecError, match="300 tokens"):
        _export(target=str(tiny_tok_dir), draft=str(other), out=str(out))
    # failed verification
    with pytest.raises(EdgespecError, match="verification failed"):
        _export(target=str(tiny_tok_dir), out=str(out), quants=("int4",), min_agreement=1.0)
    # gguf-exact needs a GGUF source
    with pytest.raises(EdgespecError, match="is not a GGUF; use int4") as info:
        _export(target=str(tiny_tok_dir), out=str(out), quants=("gguf-exact",))
    assert "\n" not in str(info.value)
    # a quantization no format takes (GGUF spellings such as q4_0 name int4, which onnx has)
    with pytest.raises(EdgespecError, match="takes fp32, int8, int4"):
        _export(target=str(tiny_tok_dir), out=str(out), quants=("fp16",))
    _assert_nothing_left(tmp_path / "out")
    # an existing output folder without --force
    out.mkdir()
    with pytest.raises(EdgespecError, match="--force"):
        _export(target=str(tiny_tok_dir), out=str(out))
    assert list(out.iterdir()) == []


def test_gguf_q4_0_and_qwen2(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    m = _export(
        target=str(tiny_qwen2_dir),
        out=str(tmp_path / "q"),
        formats=("gguf",),
        quants=("f16", "q4_0"),
        min_agreement=0.2,
    )
    arts = {a["quantization"]: a for a in m["roles"]["target"]["artifacts"]}
    assert arts["f16"]["verification"]["greedy_agreement"] == 1.0
    assert arts["q4_0"]["tensor_types"].get("Q4_0", 0) > 0


def test_role_quant_gives_the_draft_its_own_bits(tiny_tok_dir: Path, tmp_path: Path) -> None:
    """``--quant f16,draft:q4_0``: the target's one artifact is f16 and the draft's is Q4_0
    (nothing else for either); the bundle loads the draft role's Q4_0 file as the draft, and
    speculation with it equals plain decoding token for token."""
    import edgespec
    from edgespec.losslessness import plain_reference
    from edgespec.speculative.config import SpecConfig

    out = tmp_path / "b"
    m = _export(
        target=str(tiny_tok_dir),
        out=str(out),
        draft=str(tiny_tok_dir),
        formats=("gguf",),
        quants=("f16", "draft:q4_0"),
        min_agreement=0.2,
    )
    kinds = {
        role: [(a["format"], a["quantization"]) for a in r["artifacts"]]
        for role, r in m["roles"].items()
    }
    assert kinds == {"target": [("gguf", "f16")], "draft": [("gguf", "q4_0")]}
    (art,) = m["roles"]["draft"]["artifacts"]
    assert set(art["tensor_types"]) >= {"Q4_0"}
    assert list(m["export_options"]["quants"]) == ["f16", "draft:q4_0"]
    prompt = [1, 17, 99, 4, 250, 33, 1, 17, 99, 4]
    with edgespec.load(str(out), backend="llamacpp", n_ctx=256, progress=False) as rt:
        assert rt.draft is not None and rt.draft_source is not None
        assert rt.draft_source.path == (out / art["path"]).resolve()
        ref = plain_reference(rt.target, prompt, 24).tokens
        res = rt.generate(
            prompt,
            max_new_tokens=24,
            strategy="speculative",
            ignore_eos=True,
            config=SpecConfig(proposers=("draft",), k=3),
        )
    assert res.token_ids == ref


def test_gguf_q4_k_m_by_llamacpps_quantizer(
    tiny_qwen2_dir: Path, tiny_q4km_gguf: Path, tmp_path: Path
) -> None:
    """``--quant q4_k_m``: the f16 file quantized by llama.cpp's own quantizer (its rows of 64
    are not K-quant rows: llama.cpp picks its 32-block fallbacks), verified like the others,
    file type 15 (MOSTLY_Q4_K_M), no f16 or .part file left; the function itself on a model
    wide enough for K-quants gives Q4_K and Q6_K."""
    from gguf import GGUFReader

    m = _export(
        target=str(tiny_qwen2_dir),
        out=str(tmp_path / "q"),
        formats=("gguf",),
        quants=("Q4_K_M",),
        min_agreement=0.2,
    )
    (art,) = m["roles"]["target"]["artifacts"]
    assert art["quantization"] == "q4_k_m" and art["verification"]["greedy_agreement"] >= 0.2
    path = tmp_path / "q" / art["path"]
    reader = GGUFReader(str(path))
    assert int(reader.fields["general.file_type"].contents()) == 15
    assert sum(art["tensor_types"].values()) == len(reader.tensors)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".") or p.suffix == ".part"]
    types = {t.tensor_type.name for t in GGUFReader(str(tiny_q4km_gguf)).tensors}
    assert {"Q4_K", "Q6_K"} <= types


def test_llamacpp_quantize_bad_input_is_one_line(tmp_path: Path) -> None:
    from edgespec.export.gguf_export import llamacpp_quantize

    with pytest.raises(EdgespecError, match="unknown llama.cpp quantization 'Q3_X'"):
        llamacpp_quantize(tmp_path / "in.gguf", tmp_path / "out.gguf", "Q3_X")
    bad = tmp_path / "in.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 60)
    with pytest.raises(EdgespecError, match="could not quantize") as err:
        llamacpp_quantize(bad, tmp_path / "out.gguf")
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.gguf"]


@pytest.mark.slow
def test_smollm2_onnx_bundle_matches_numpy_reference(smollm2_path: Path, tmp_path: Path) -> None:
    """The zoo's GGUF -> HF -> ONNX bundle: greedy tokens equal the NumPy reference running
    the same (dequantized) GGUF weights, on a few prompts."""
    import edgespec
    from edgespec.runtimes import BACKENDS, LoadOptions, ModelSource

    out = tmp_path / "smollm2-bundle"
    _export(
        target=str(smollm2_path), out=str(out), formats=("onnx",), quants=("fp32", "gguf-exact")
    )
    m = json.loads((out / "edgespec.json").read_text())
    fp32, exact = m["roles"]["target"]["artifacts"]
    assert fp32["quantization"] == "fp32" and fp32["verification"]["greedy_agreement"] == 1.0
    # the GGUF's own blocks vs their fp32 dequantization in transformers (measured 0.979)
    assert exact["quantization"] == "gguf-exact"
    assert exact["verification"]["greedy_agreement"] >= 0.9
    ref = BACKENDS.get("numpy").load(
        ModelSource("gguf", smollm2_path, "smollm2-135m"), LoadOptions(n_ctx=64, progress=False)
    )
    prompts = [
        [1, 504, 3458, 282, 4649, 314, 253, 1345, 28, 357],
        [1, 2683, 253, 7263, 2030, 327, 23617, 260, 1345, 282],
        [1, 1389, 2210, 28, 702, 3135, 30, 378],
    ]
    with edgespec.load(str(out), backend="onnx", n_ctx=64, progress=False) as rt:
        assert rt.target.layout == "shared"  # the GroupQueryAttention graph, KV via IOBinding
        for prompt in prompts:
            assert _greedy(rt.target, prompt, 16) == _greedy(ref, prompt, 16)


def test_export_records_the_compressor_role_backend_and_ratio(
    tiny_tok_dir: Path, tmp_path: Path
) -> None:
    from edgespec.compress.prompt import compressor_source_of
    from edgespec.sources import resolve

    out = tmp_path / "b"
    _export(
        target=str(tiny_tok_dir),
        out=str(out),
        compressor=str(tiny_tok_dir),
        compress_ratio=0.3,
        formats=("gguf",),
        verify=False,
    )
    role = json.loads((out / "edgespec.json").read_text())["roles"]["compressor"]
    assert role["backend"] == "llamacpp" and role["default_ratio"] == 0.3
    # and the loader reads it back: the bundle's compressor, its ratio and backend
    source, ratio, backend = compressor_source_of(resolve(str(out)), None, False)
    assert source is not None and (ratio, backend) == (0.3, "llamacpp")


def test_quiet_export_turns_off_transformers_gguf_bar() -> None:
    """``export -q``: transformers' GGUF dequantization bar (a plain tqdm there) is disabled
    while the GGUF is read, shown with progress, and the module's own tqdm restored after."""
    gguf_utils = pytest.importorskip("transformers.modeling_gguf_pytorch_utils")
    from edgespec.export.hf_onnx import _gguf_bar

    own = gguf_utils.tqdm
    with _gguf_bar(False):
        assert gguf_utils.tqdm(range(3)).disable
    assert gguf_utils.tqdm is own
    with _gguf_bar(True):
        assert gguf_utils.tqdm is own
