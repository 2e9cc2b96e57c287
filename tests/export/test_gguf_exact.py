"""gguf-exact ONNX graphs: MatMulNBits holding a GGUF file's own quantized weights.

Fast tests (measured with ORT 1.32, then given headroom):

- every type of :data:`LAYOUTS`, random blocks: the MatMulNBits form dequantizes to
  ``gguf.quants.dequantize`` exactly (max difference 0.0; asserted within 1e-6 relative).
- a hand-made graph with the ``gqa`` builder's MatMul names and a tiny GGUF file (llama
  arch, so Q/K rows are permuted; fused qkv with mixed types; gate/up sharing an input; an
  F16 tensor kept fp32): the exact graph with ``accuracy_level`` 0 reproduces the fp32 graph
  to 8e-7 relative (``EXACT_RTOL = 1e-5``); with 4 (int8 activations) to 7e-3
  (``INT8_RTOL = 3e-2``). A graph weight that does not match its GGUF tensor is refused.

The slow test runs smollm2-135m against its fp32 ``gqa`` graph and llama.cpp; the floors and
what they were measured at are beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx_ir")

import onnx  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf import GGUFWriter, quants  # noqa: E402
from gguf.constants import GGML_QUANT_SIZES  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402

from edgespec.errors import EdgespecError  # noqa: E402
from edgespec.export.gguf_exact import build_exact_onnx, gguf_parts  # noqa: E402
from edgespec.export.gguf_export import _permute  # noqa: E402
from edgespec.export.gguf_nbits import LAYOUTS, concat_rows, from_gguf  # noqa: E402

EXACT_RTOL = 1e-5
INT8_RTOL = 3e-2

_SCALE_FIELDS = {  # byte offsets of float16 scale/min fields, to keep random blocks finite
    T.Q4_0: (0,),
    T.Q5_0: (0,),
    T.Q8_0: (0,),
    T.Q4_1: (0, 2),
    T.Q5_1: (0, 2),
    T.Q4_K: (0, 2),
    T.Q5_K: (0, 2),
    T.Q6_K: (208,),
}


def random_blocks(qtype: T, n: int, k: int, seed: int = 0) -> np.ndarray:
    """``uint8[n, bytes]``: random codes and scales of ``qtype`` (scales in 0.001 .. 0.05)."""
    rng = np.random.default_rng(seed)
    block, size = GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, (n * k // block, size), dtype=np.uint8)
    for at in _SCALE_FIELDS[qtype]:
        f16 = rng.uniform(0.001, 0.05, len(b)).astype(np.float16)
        b[:, at : at + 2] = f16.view(np.uint8).reshape(-1, 2)
    return b.reshape(n, -1)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(1.0, float(np.abs(b).max())))


@pytest.mark.unit
@pytest.mark.parametrize("qtype", list(LAYOUTS), ids=lambda t: t.name)
def test_nbits_form_equals_gguf_dequantize(qtype: T) -> None:
    raw = random_blocks(qtype, 8, 512)
    w = from_gguf(raw, qtype)
    assert w.bits == (4 if LAYOUTS[qtype].code_bits == 4 else 8)
    assert w.packed().shape == (8, 512 // w.block, w.block * w.bits // 8)
    assert _rel(w.dequantize(), quants.dequantize(raw, qtype)) <= 1e-6


@pytest.mark.unit
@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0], ids=lambda t: t.name)
def test_nbits_form_of_quantized_weights(qtype: T) -> None:
    """Real quantizer output (offsets near -min, zero points in range)."""
    data = np.random.default_rng(1).standard_normal((16, 256)).astype(np.float32) * 0.05
    raw = quants.quantize(data, qtype)
    w = from_gguf(raw, qtype)
    assert _rel(w.dequantize(), quants.dequantize(raw, qtype)) <= 1e-6
    if w.zero_points is not None:
        assert w.zero_points.max() > 0  # offsets are negative minima: zp is not clipped to 0


@pytest.mark.unit
def test_concat_mixes_symmetric_and_affine() -> None:
    a, b = (
        from_gguf(random_blocks(T.Q4_0, 4, 64), T.Q4_0),
        from_gguf(random_blocks(T.Q4_1, 4, 64), T.Q4_1),
    )
    both = concat_rows([a, b])
    assert both.zero_points is not None and both.residual is not None
    want = np.concatenate([a.dequantize(), b.dequantize()])
    assert _rel(both.dequantize(), want) <= 1e-6


# --------------------------------------------------------------------------- tiny model

HIDDEN, FFN, VOCAB, N_HEAD, N_KV = 256, 512, 64, 2, 1
HEAD_DIM = HIDDEN // N_HEAD
#: (layer, GGUF short name) -> type; layer 1 mixes a 4-bit affine v into a 4-bit symmetric qkv
TYPES = {
    (0, "attn_q"): T.Q4_K,
    (0, "attn_k"): T.Q4_K,
    (0, "attn_v"): T.Q6_K,
    (0, "attn_output"): T.Q5_K,
    (0, "ffn_gate"): T.Q4_1,
    (0, "ffn_up"): T.Q8_0,
    (0, "ffn_down"): T.Q5_0,
    (1, "attn_q"): T.Q4_0,
    (1, "attn_k"): T.Q4_0,
    (1, "attn_v"): T.Q4_1,
    (1, "attn_output"): T.Q5_1,
    (1, "ffn_gate"): T.Q6_K,
    (1, "ffn_up"): T.Q5_K,
    (1, "ffn_down"): T.F16,
}
SHAPES = {  # GGUF short name -> (N rows, K)
    "attn_q": (HIDDEN, HIDDEN),
    "attn_k": (N_KV * HEAD_DIM, HIDDEN),
    "attn_v": (N_KV * HEAD_DIM, HIDDEN),
    "attn_output": (HIDDEN, HIDDEN),
    "ffn_gate": (FFN, HIDDEN),
    "ffn_up": (FFN, HIDDEN),
    "ffn_down": (HIDDEN, FFN),
}


def _tiny(tmp: Path) -> tuple[Path, Path]:
    """A llama-arch GGUF and a graph with the builder's MatMul names over its weights.

    Returns ``(gguf file, fp32 folder)``. The graph's fp32 weights are the dequantized
    tensors in HF row order; the GGUF holds Q/K rows permuted as llama.cpp's converter does.
    """
    writer = GGUFWriter(str(tmp / "tiny.gguf"), "llama")
    writer.add_block_count(2)
    writer.add_context_length(64)
    writer.add_embedding_length(HIDDEN)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_KV)
    hf: dict[str, np.ndarray] = {}  # HF-order float32 [N, K]
    seed = 0
    for (layer, short), qtype in TYPES.items():
        n, k = SHAPES[short]
        seed += 1
        if qtype == T.F16:
            w16 = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float16)
            hf[f"{layer}.{short}"] = w16.astype(np.float32)
            writer.add_tensor(f"blk.{layer}.{short}.weight", w16)
            continue
        raw = random_blocks(qtype, n, k, seed)
        hf[f"{layer}.{short}"] = quants.dequantize(raw, qtype)
        heads = {"attn_q": N_HEAD, "attn_k": N_KV}.get(short)
        stored = _permute(raw, heads) if heads else raw
        writer.add_tensor(f"blk.{layer}.{short}.weight", stored, raw_dtype=qtype)
    embd = random_blocks(T.Q8_0, VOCAB, HIDDEN, 99)  # tied: lm_head comes from token_embd
    hf["embd"] = quants.dequantize(embd, T.Q8_0)
    writer.add_tensor("token_embd.weight", embd, raw_dtype=T.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    inits, nodes, outputs = [], [], []
    x = {HIDDEN: "x_hidden", FFN: "x_ffn"}

    def matmul(node: str, weight: str, a: str, w: np.ndarray) -> None:
        """``MatMul(a, weight)`` named like the builder's; w: float32[N, K] (nn.Linear)."""
        inits.append(nh.from_array(np.ascontiguousarray(w.T), weight))
        out = f"{node}/output_0"
        nodes.append(helper.make_node("MatMul", [a, weight], [out], name=node))
        outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))

    for i in range(2):
        for proj, parts, a in (
            ("attn/qkv_proj", ("attn_q", "attn_k", "attn_v"), HIDDEN),
            ("attn/o_proj", ("attn_output",), HIDDEN),
            ("mlp/gate_proj", ("ffn_gate",), HIDDEN),
            ("mlp/up_proj", ("ffn_up",), HIDDEN),
            ("mlp/down_proj", ("ffn_down",), FFN),
        ):
            weight = f"model.layers.{i}.{proj.replace('/', '.')}.MatMul.weight"
            w = np.concatenate([hf[f"{i}.{p}"] for p in parts])
            matmul(f"/model/layers.{i}/{proj}/MatMul", weight, x[a], w)
    inits.append(nh.from_array(np.ascontiguousarray(hf["embd"].T), "lm_head.MatMul.weight"))
    nodes.append(helper.make_node("MatMul", [x[HIDDEN], "lm_head.MatMul.weight"], ["logits"]))
    nodes.append(helper.make_node("Transpose", ["lm_head.MatMul.weight"], ["embed"]))
    outputs += [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("logits", "embed")
    ]
    inputs = [
        helper.make_tensor_value_info(v, TensorProto.FLOAT, [1, None, k]) for k, v in x.items()
    ]
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    fp32 = tmp / "fp32"
    fp32.mkdir()
    onnx.save(
        model, str(fp32 / "model.onnx"), save_as_external_data=True, location="model.onnx.data"
    )
    (fp32 / "config.json").write_text("{}\n")
    (fp32 / "genai_config.json").write_text("{}\n")
    return tmp / "tiny.gguf", fp32


def _run(folder: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed), strict=True))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _tiny(tmp_path_factory.mktemp("gguf-exact"))


@pytest.mark.unit
@pytest.mark.parametrize("level", [0, 4])
def test_exact_graph_reproduces_fp32_graph(
    tiny: tuple[Path, Path], tmp_path: Path, level: int
) -> None:
    gguf_path, fp32 = tiny
    build_exact_onnx(gguf_path, fp32, tmp_path, accuracy_level=level)
    meta = json.loads((tmp_path / "edgespec-onnx.json").read_text())
    assert meta["dtype"] == "gguf-exact" and meta["graph"] == "gqa"
    assert meta["fp32_matmuls"] == {"/model/layers.1/mlp/down_proj/MatMul": "F16"}
    want = {t.name: 0 for t in LAYOUTS}
    for (_, _), qtype in TYPES.items():
        if qtype in LAYOUTS:
            want[qtype.name] += 1
    want["Q8_0"] += 1  # token_embd as lm_head
    assert meta["tensor_types"] == {k: v for k, v in sorted(want.items()) if v}
    assert (tmp_path / "config.json").exists() and (tmp_path / "genai_config.json").exists()

    proto = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in proto.graph.node]
    # layer 0 qkv splits into Q4_K (4-bit) and Q6_K (8-bit, block 16) nodes joined by a Concat
    assert ops.count("MatMulNBits") == 11 and ops.count("Concat") == 1
    # 6 affine MatMulNBits get a residual MatMul; the F16 down_proj stays a plain MatMul
    assert ops.count("MatMul") == 6 + 1
    # every residual reads x_hidden with block 32: one shared block sum
    assert ops.count("ReduceSum") == 1

    rng = np.random.default_rng(3)
    feed = {
        "x_hidden": rng.standard_normal((1, 5, HIDDEN)).astype(np.float32),
        "x_ffn": rng.standard_normal((1, 5, FFN)).astype(np.float32),
    }
    ref, got = _run(fp32, feed), _run(tmp_path, feed)
    assert ref.keys() == got.keys()
    rtol = EXACT_RTOL if level == 0 else INT8_RTOL
    for name in ref:
        assert _rel(got[name], ref[name]) <= rtol, name


@pytest.mark.unit
def test_mismatched_weight_is_refused(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    gguf_path, fp32 = tiny
    bad = tmp_path / "bad"
    bad.mkdir()
    model = onnx.load(str(fp32 / "model.onnx"))
    for init in model.graph.initializer:
        if init.name == "model.layers.0.attn.qkv_proj.MatMul.weight":
            w = nh.to_array(init).copy()
            w[:, [0, 1]] = w[:, [1, 0]]  # two Q rows swapped: a wrong rope un-permutation
            init.CopyFrom(nh.from_array(w, init.name))
    onnx.save(
        model, str(bad / "model.onnx"), save_as_external_data=True, location="model.onnx.data"
    )
    with pytest.raises(EdgespecError, match="mapping is wrong"):
        build_exact_onnx(gguf_path, bad, tmp_path / "out")
    assert not (tmp_path / "out" / "model.onnx").exists()


@pytest.mark.unit
def test_gguf_parts_names() -> None:
    tensors = {"output.weight": 0, "token_embd.weight": 0}
    llama = gguf_parts("model.layers.3.attn.qkv_proj.MatMul.weight", tensors, "llama", (9, 3))
    assert [(p.name, p.heads) for p in llama] == [
        ("blk.3.attn_q.weight", 9),
        ("blk.3.attn_k.weight", 3),
        ("blk.3.attn_v.weight", 0),
    ]
    qwen = gguf_parts("model.layers.0.attn.qkv_proj.MatMul.weight", tensors, "qwen2", (14, 2))
    assert all(p.heads == 0 for p in qwen)
    assert [p.name for p in gguf_parts("lm_head.MatMul.weight", tensors, "qwen2", (1, 1))] == [
        "output.weight"
    ]
    assert gguf_parts("model.layers.0.attn.rotary.MatMul.weight", tensors, "llama", (1, 1)) == []


@pytest.mark.unit
def test_ensure_exact_needs_a_gguf(tmp_path: Path) -> None:
    from edgespec.export.gguf_exact import ensure_exact_onnx
    from edgespec.runtimes import ModelSource

    with pytest.raises(EdgespecError, match="needs a GGUF source"):
        ensure_exact_onnx(ModelSource("hf", tmp_path, "folder"), progress=False)


# --------------------------------------------------------------------------- smollm2

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village,",
    "The three laws of thermodynamics are",
    "import numpy as np\n\ndef softmax(x):",
]
N_NEW = 48
#: measured on 5 prompts x 48 teacher-forced tokens (240 positions; 2 threads, ORT 1.32; this
#: test prints every number): on the earlier VM (x86-64 with AVX512-VNNI) gguf-exact
#: (accuracy_level 4) agreed 0.979 with the fp32 graph's greedy tokens (5 misses) and 0.954
#: with llama.cpp's (11 misses); accuracy_level 0 1.000 with fp32 (0 misses, max |logit diff|
#: 3.4e-4); RTN int4 re-quantization 0.742 / 0.783. On the AVX2 VM (AMD EPYC): 3 misses, 6
#: misses, 0 misses, 3.1e-4. Asserted: no more misses than the most measured of the two
#: machines, and the logit difference at most the largest measured (rounded up at its second
#: digit); each is deterministic on one machine, and all stay far from RTN's 62 misses.
MAX_MISSES_VS_FP32 = 5
MAX_MISSES_VS_LLAMACPP = 11
MAX_MISSES_ACC0_VS_FP32 = 0
ACC0_LOGIT_ATOL = 3.5e-4


def _greedy(model: object, ids: list[int], n: int) -> list[int]:
    model.truncate(0)  # type: ignore[attr-defined]
    logits = model.forward(ids, all_logits=False)  # type: ignore[attr-defined]
    out = list(ids)
    for _ in range(n):
        out.append(int(np.argmax(logits[-1])))
        logits = model.forward([out[-1]], all_logits=False)  # type: ignore[attr-defined]
    return out


@pytest.mark.slow
@pytest.mark.backend
def test_smollm2_exact_agreement(smollm2_path: Path, tmp_path: Path) -> None:
    from edgespec.export.gguf_exact import ensure_exact_onnx
    from edgespec.export.hf_onnx import ensure_onnx
    from edgespec.quality import exact_prefix
    from edgespec.runtimes import BACKENDS, LoadOptions, ModelSource
    from edgespec.runtimes.ort import load_onnx_dir
    from edgespec.tokenizer import load_tokenizer

    if not BACKENDS.get("llamacpp").available():
        pytest.skip("llama-cpp-python is not installed")
    source = ModelSource("gguf", smollm2_path, "smollm2-135m")
    fp32_dir = ensure_onnx(source, progress=False, graph="gqa")
    exact_dir = ensure_exact_onnx(source, progress=False)
    acc0_dir = build_exact_onnx(smollm2_path, fp32_dir, tmp_path / "acc0", accuracy_level=0).parent
    opts = LoadOptions(n_ctx=256, n_threads=2, progress=False)
    models = {
        "llama.cpp": BACKENDS.get("llamacpp").load(source, LoadOptions(n_ctx=256, progress=False)),
        "fp32": load_onnx_dir(fp32_dir, opts),
        "exact": load_onnx_dir(exact_dir, opts),
        "exact-acc0": load_onnx_dir(acc0_dir, opts),
    }
    assert models["exact"].info.extra["dtype"] != models["fp32"].info.extra["dtype"]
    tok = load_tokenizer(source)
    hits: dict[tuple[str, str], list[np.ndarray]] = {}
    prefix: list[int] = []
    acc0_diff = 0.0
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        refs = {r: _greedy(models[r], ids, N_NEW) for r in ("llama.cpp", "fp32")}
        ours = _greedy(models["exact"], ids, N_NEW)
        prefix.append(exact_prefix(ours, refs["llama.cpp"]) - len(ids))
        for ref, seq in refs.items():
            target = np.array(seq[len(ids) :])
            logits = {}
            for name, m in models.items():
                m.truncate(0)
                logits[name] = m.forward(seq[:-1])[len(ids) - 1 :]
                hits.setdefault((name, ref), []).append(logits[name].argmax(-1) == target)
            acc0_diff = max(acc0_diff, float(np.abs(logits["exact-acc0"] - logits["fp32"]).max()))
    agree = {k: float(np.mean(np.concatenate(v))) for k, v in hits.items()}
    misses = {k: int((~np.concatenate(v)).sum()) for k, v in hits.items()}
    print(f"\nteacher-forced top-1 agreement ({len(PROMPTS)} prompts x {N_NEW} tokens):")
    for (name, ref), value in sorted(agree.items()):
        print(f"  {name:11s} vs {ref:9s} greedy: {value:.3f} ({misses[name, ref]} misses)")
    print(f"  exact-acc0 vs fp32 max |logit diff|: {acc0_diff:.3e}")
    print(f"  free-running greedy common prefix, exact vs llama.cpp: {prefix} of {N_NEW}")
    assert misses["exact", "fp32"] <= MAX_MISSES_VS_FP32
    assert misses["exact", "llama.cpp"] <= MAX_MISSES_VS_LLAMACPP
    assert misses["exact-acc0", "fp32"] <= MAX_MISSES_ACC0_VS_FP32
    assert acc0_diff <= ACC0_LOGIT_ATOL
