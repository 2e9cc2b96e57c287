"""The demo web app in headless Chromium: the same tokens as the Python runtime.

Each test serves a bundle with ``edgespec demo serve``, drives the page through
``window.demo`` (android_demo/tests/drive.mjs) and compares with ``edgespec.load(bundle,
backend="onnx")``: the prompt's token ids, greedy output (plain) and speculative (prompt lookup
and draft model) output, with and without COOP/COEP, on WASM and on WebGPU (SwiftShader), on
the tiny bundle and on SmolLM2. Screenshots land in the test's tmp_path.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.backend
pytest.importorskip("onnxruntime")

#: prompts whose tiny-model greedy continuations vary and repeat (prompt lookup drafts get
#: accepted in part): picked by printing rt.generate(p, max_new_tokens=16).token_ids
TINY_PROMPTS = ["abc abc abc", "1 2 3 4 1 2 3"]
N_TOKENS = 16


def _python_greedy(bundle: Path, prompts: list[str], n: int) -> list[tuple[list[int], list[int]]]:
    import edgespec

    with edgespec.load(str(bundle), backend="onnx", n_ctx=256, progress=False) as rt:
        out = []
        for p in prompts:
            r = rt.generate(p, max_new_tokens=n)
            out.append((r.prompt_token_ids, r.token_ids))
        return out


def _runs(prompts: list[str], n: int, strategies: tuple[str, ...]) -> list[dict[str, Any]]:
    # minConfidence 0: the draft always drafts k tokens (the tiny random draft is rarely sure),
    # so steps accept 0, some or all of a multi-token draft
    return [
        {"prompt": p, "maxNewTokens": n, "strategy": s, "k": 4, "greedy": True, "minConfidence": 0}
        for p in prompts
        for s in strategies
    ]


STRATEGIES = ("plain", "ngram", "draft")


@pytest.mark.parametrize("isolate", [True, False], ids=["coop-coep", "no-isolation"])
def test_tiny_bundle_matches_python(
    tiny_bundle: Path, serve, drive, isolate: bool, tmp_path: Path
) -> None:
    want = _python_greedy(tiny_bundle, TINY_PROMPTS, N_TOKENS)
    server = serve([tiny_bundle], isolate=isolate)
    shot = tmp_path / "page.png"
    # then draft-model sampling twice with one seed: seeded runs repeat exactly
    sampled = {"prompt": TINY_PROMPTS[0], "maxNewTokens": N_TOKENS, "strategy": "draft"}
    sampled |= {"greedy": False, "temperature": 1.0, "seed": 7, "minConfidence": 0}
    runs = _runs(TINY_PROMPTS, N_TOKENS, STRATEGIES) + [sampled, sampled]
    got = drive(server.url, runs, screenshot=shot)
    assert got["error"] is None, (got["error"], got["console"])
    info = got["info"]
    assert info["isolated"] is isolate
    assert info["backend"] == "wasm" and info["quantization"] == "fp32"
    assert info["draft"] == "draft/onnx-fp32"
    # headless Chromium without WebGPU flags has no adapter: the page says so and runs WASM
    assert "no WebGPU (WebGPU has no adapter on this device)" in got["modelText"]
    if not isolate:
        assert info["threads"] == 1  # no SharedArrayBuffer without COOP/COEP: one WASM thread
    results, (sample1, sample2) = got["results"][:-2], got["results"][-2:]
    assert sample1["tokens"] == sample2["tokens"] and sample1["stats"]["proposed"] > 0
    by = {s: results[i :: len(STRATEGIES)] for i, s in enumerate(STRATEGIES)}
    assert sample1["tokens"] != by["draft"][0]["tokens"]  # it sampled, not argmax
    for (prompt_ids, tokens), plain, ngram, draft in zip(
        want, by["plain"], by["ngram"], by["draft"], strict=True
    ):
        assert plain["promptIds"] == prompt_ids  # transformers.js encodes as edgespec does
        assert plain["tokens"] == tokens  # greedy: token for token
        assert ngram["tokens"] == tokens and draft["tokens"] == tokens  # lossless speculation
        assert plain["stats"]["proposed"] == 0
        for spec in (ngram, draft):
            assert spec["stats"]["forwards"] <= plain["stats"]["forwards"]
    assert sum(r["stats"]["proposed"] for r in by["ngram"]) > 0  # prompt lookup drafted
    # the draft model drafted, was partly accepted (both caches rolled back), and some steps
    # kept two or more draft tokens (the draft's cache kept its accepted tail)
    proposed = sum(r["stats"]["proposed"] for r in by["draft"])
    accepted = sum(r["stats"]["accepted"] for r in by["draft"])
    assert 0 < accepted < proposed
    assert any(sum(h or 0 for h in r["stats"]["histogram"][2:]) for r in by["draft"])
    assert all(r["stats"]["draftForwards"] >= r["stats"]["steps"] for r in by["draft"])
    # the stats panel shows numbers, one box per run
    assert len(re.findall(r"tokens/s", got["statsText"])) == len(got["results"])
    assert re.search(r"\d+ ms", got["statsText"]) and "estimated" in got["statsText"]
    assert shot.stat().st_size > 10_000


def test_webgpu_on_swiftshader(tiny_bundle: Path, serve, drive) -> None:
    """WebGPU through Chromium's SwiftShader adapter (CPU Vulkan): the webgpu execution
    provider gives the Python runtime's greedy tokens on the fp32 tiny bundle (measured: equal,
    plain and prompt lookup)."""
    from edgespec.demo.browser import WEBGPU_SWIFTSHADER

    want = _python_greedy(tiny_bundle, TINY_PROMPTS[:1], N_TOKENS)
    server = serve([tiny_bundle])
    got = drive(
        f"{server.url}?backend=webgpu",
        _runs(TINY_PROMPTS[:1], N_TOKENS, ("plain", "ngram")),
        extra_flags=WEBGPU_SWIFTSHADER,
    )
    if got["error"] and "WebGPU was asked for" in got["error"]:
        pytest.skip(f"WebGPU did not come up with {' '.join(WEBGPU_SWIFTSHADER)}: {got['error']}")
    assert got["error"] is None, (got["error"], got["console"])
    assert got["info"]["backend"] == "webgpu", got["info"]
    assert "swiftshader" in got["info"]["adapter"]
    for r in got["results"]:
        assert r["tokens"] == want[0][1]


@pytest.mark.slow
def test_smollm2_matches_python(smollm2_bundle: Path, serve, drive) -> None:
    """SmolLM2-135M's fp32 bundle in the page: 12 greedy tokens (plain and prompt lookup) equal
    the Python runtime's. The bundle comes from the zoo's GGUF, so it has tokenizer.gguf only
    and the page takes token ids (the prompt ids are Python's). The export is cached under
    $EDGESPEC_HOME/demo-bundles/."""
    prompt = "def fibonacci(n):\n    if n < 2:\n        return n\n    return"
    ((prompt_ids, tokens),) = _python_greedy(smollm2_bundle, [prompt], 12)
    server = serve([smollm2_bundle])
    runs = [
        {"promptIds": prompt_ids, "maxNewTokens": 12, "strategy": s, "k": 4, "greedy": True}
        for s in ("plain", "ngram")
    ]
    # verify=0: the page skips hashing 540 MB (test_bad_bundles_say_what_is_wrong checks it)
    got = drive(f"{server.url}?verify=0", runs)
    assert got["error"] is None, (got["error"], got["console"])
    assert got["info"]["quantization"] == "fp32"
    for r in got["results"]:
        assert r["tokens"] == tokens


def _copy(bundle: Path, dst: Path) -> Path:
    shutil.copytree(bundle, dst)
    return dst


def test_bad_bundles_say_what_is_wrong(tiny_bundle: Path, serve, drive, tmp_path: Path) -> None:
    """A tampered file, a bundle without an ONNX target, a missing bundle, a model too large
    for WASM's heap, WebGPU asked for where there is none: one clear line in the page each."""
    tampered = _copy(tiny_bundle, tmp_path / "tampered")
    data = tampered / "target" / "onnx-fp32" / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.write_bytes(bytes(raw))
    no_onnx = _copy(tiny_bundle, tmp_path / "no-onnx")
    m = json.loads((no_onnx / "edgespec.json").read_text())
    for a in m["roles"]["target"]["artifacts"]:
        a["format"] = "gguf"
    (no_onnx / "edgespec.json").write_text(json.dumps(m))
    huge = _copy(tiny_bundle, tmp_path / "huge")  # its manifest claims 5 GiB of weights
    m = json.loads((huge / "edgespec.json").read_text())
    for f in m["roles"]["target"]["artifacts"][0]["files"]:
        f["size"] = 5 * 2**30 if f["path"].endswith(".onnx.data") else f["size"]
    (huge / "edgespec.json").write_text(json.dumps(m))
    server = serve([tampered, no_onnx, huge, tiny_bundle])
    cases = {
        "tampered/": "model.onnx.data fails its checksum",
        "no-onnx/": "has no ONNX target",
        "absent/": "is not an edgespec bundle",
        "huge/": "WASM's heap is 4 GB at most",
        f"{tiny_bundle.name}/&backend=webgpu": "WebGPU was asked for but WebGPU has no adapter",
    }
    got = drive(None, [], pages=[f"{server.url}?bundle=models/{b}" for b in cases])
    for (bundle, message), page in zip(cases.items(), got["pages"], strict=True):
        assert message in (page["error"] or ""), (bundle, page["error"])
