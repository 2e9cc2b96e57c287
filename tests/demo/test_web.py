"""The demo web app in headless Chromium: the same tokens as the Python runtime.

Each test serves a bundle with ``edgespec demo serve``, drives the page through
``window.demo`` (android_demo/tests/drive.mjs) and compares with ``edgespec.load(bundle,
backend="onnx")``: the prompt's token ids, greedy output (plain) and speculative (prompt lookup)
output, with and without COOP/COEP. Screenshots land in the test's tmp_path.
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


def _runs(prompts: list[str], n: int, k: int = 4) -> list[dict[str, Any]]:
    return [
        {"prompt": p, "maxNewTokens": n, "strategy": s, "k": k, "greedy": True}
        for p in prompts
        for s in ("plain", "ngram")
    ]


@pytest.mark.parametrize("isolate", [True, False], ids=["coop-coep", "no-isolation"])
def test_tiny_bundle_matches_python(
    tiny_bundle: Path, serve, drive, isolate: bool, tmp_path: Path
) -> None:
    want = _python_greedy(tiny_bundle, TINY_PROMPTS, N_TOKENS)
    server = serve([tiny_bundle], isolate=isolate)
    shot = tmp_path / "page.png"
    got = drive(server.url, _runs(TINY_PROMPTS, N_TOKENS), screenshot=shot)
    assert got["error"] is None, (got["error"], got["console"])
    info = got["info"]
    assert info["isolated"] is isolate
    assert info["backend"] == "wasm" and info["quantization"] == "fp32"
    if not isolate:
        assert info["threads"] == 1  # no SharedArrayBuffer without COOP/COEP: one WASM thread
    results = got["results"]
    proposed = 0
    for i, (prompt_ids, tokens) in enumerate(want):
        plain, spec = results[2 * i], results[2 * i + 1]
        assert plain["promptIds"] == prompt_ids  # transformers.js encodes as edgespec does
        assert plain["tokens"] == tokens  # greedy: token for token
        assert spec["tokens"] == plain["tokens"]  # lossless speculation
        assert plain["stats"]["proposed"] == 0
        proposed += spec["stats"]["proposed"]
        assert spec["stats"]["forwards"] <= plain["stats"]["forwards"]
    assert proposed > 0  # the prompts make prompt lookup propose drafts
    # the stats panel shows numbers, one box per run
    assert len(re.findall(r"tokens/s", got["statsText"])) == len(results)
    assert re.search(r"\d+ ms", got["statsText"]) and "estimated" in got["statsText"]
    assert shot.stat().st_size > 10_000


def _copy(bundle: Path, dst: Path) -> Path:
    shutil.copytree(bundle, dst)
    return dst


def test_bad_bundles_say_what_is_wrong(tiny_bundle: Path, serve, drive, tmp_path: Path) -> None:
    """A tampered file, a bundle without an ONNX target: one clear line in the page."""
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
    server = serve([tampered, no_onnx])
    got = drive(f"{server.url}?bundle=models/tampered/", [])
    assert "model.onnx.data fails its checksum" in (got["error"] or "")
    got = drive(f"{server.url}?bundle=models/no-onnx/", [])
    assert "has no ONNX target" in (got["error"] or "")
    got = drive(f"{server.url}?bundle=models/absent/", [])
    assert "is not an edgespec bundle" in (got["error"] or "")
    got = drive(f"{server.url}?bundle=models/no-onnx/&backend=webgpu", [])
    assert "has no ONNX target" in (got["error"] or "") or "WebGPU" in (got["error"] or "")
