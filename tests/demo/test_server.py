"""``edgespec demo serve``: headers, content types, routes, and one-line errors."""

from __future__ import annotations

import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgespec.demo.server import DemoSite, bundle_names, make_server
from edgespec.errors import EdgespecError

pytestmark = pytest.mark.unit


def _demo(tmp_path: Path) -> Path:
    """A stand-in android_demo/ with the app and vendor folders the server checks for."""
    d = tmp_path / "android_demo"
    (d / "web").mkdir(parents=True)
    (d / "web" / "index.html").write_text("<html></html>")
    (d / "web" / "app.mjs").write_text("export {}")
    ort = d / "node_modules" / "onnxruntime-web" / "dist"
    ort.mkdir(parents=True)
    (ort / "x.wasm").write_bytes(b"\0asm")
    (d / "node_modules" / "@huggingface" / "transformers" / "dist").mkdir(parents=True)
    return d


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    bundle = tmp_path / "b"
    (bundle / "target").mkdir(parents=True)
    (bundle / "edgespec.json").write_text("{}")
    (bundle / "target" / "model.onnx").write_bytes(b"onnx")
    s = DemoSite(demo_dir=_demo(tmp_path), bundles=bundle_names([bundle]))
    server = make_server(s, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    server.shutdown()
    server.server_close()


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), b""


def test_routes_headers_and_types(site: tuple[str, Path]) -> None:
    url, _ = site
    status, h, body = _get(f"{url}/")
    assert status == 200 and body == b"<html></html>"
    assert h["Cross-Origin-Opener-Policy"] == "same-origin"
    assert h["Cross-Origin-Embedder-Policy"] == "require-corp"
    assert _get(f"{url}/app.mjs")[1]["Content-Type"] == "text/javascript"
    status, h, body = _get(f"{url}/vendor/ort/x.wasm")
    assert status == 200 and h["Content-Type"] == "application/wasm" and body == b"\0asm"
    assert _get(f"{url}/models/index.json")[2] == b'[{"name": "b", "url": "models/b/"}]'
    assert _get(f"{url}/models/b/target/model.onnx")[2] == b"onnx"
    for bad in (
        "/models/b/../../b/edgespec.json",
        "/vendor/ort/%2e%2e/%2e%2e/web/index.html",
        "/models/other/x",
        "/nope.html",
    ):
        assert _get(url + bad)[0] == 404, bad


def test_no_isolation_and_errors(tmp_path: Path) -> None:
    demo = _demo(tmp_path)
    server = make_server(DemoSite(demo_dir=demo, isolate=False), port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        h = _get(f"http://127.0.0.1:{server.server_address[1]}/")[1]
        assert "Cross-Origin-Opener-Policy" not in h
        with pytest.raises(EdgespecError, match="pick another --port"):
            make_server(DemoSite(demo_dir=demo), port=server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(EdgespecError, match="is not an edgespec bundle"):
        make_server(DemoSite(demo_dir=demo, bundles={"x": tmp_path}), port=0)
    shutil.rmtree(demo / "node_modules")
    with pytest.raises(EdgespecError, match="npm ci --ignore-scripts"):
        make_server(DemoSite(demo_dir=demo), port=0)
    with pytest.raises(EdgespecError, match="not part of the wheel"):
        make_server(DemoSite(demo_dir=demo / "web"), port=0)
    assert list(bundle_names(["/a/m", "/b/m"])) == ["m", "m-2"]
