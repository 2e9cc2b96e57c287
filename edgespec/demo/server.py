"""A static HTTP server for the demo web app, with the headers onnxruntime-web needs.

Routes (all relative to the page, so the same app runs here and in the Android WebView, whose
``MainActivity`` serves the same layout from its assets)::

    /                      android_demo/web/ (index.html, app.mjs, ...)
    /vendor/ort/           android_demo/node_modules/onnxruntime-web/dist/
    /vendor/transformers/  android_demo/node_modules/@huggingface/transformers/dist/
    /models/index.json     [{"name": NAME, "url": "models/NAME/"}] for each served bundle
    /models/NAME/          the bundle folder given with --bundle

Every response carries ``Cross-Origin-Opener-Policy: same-origin`` and
``Cross-Origin-Embedder-Policy: require-corp`` (unless ``isolate=False``), so the page is
cross-origin isolated and onnxruntime-web may use WASM threads; ``.wasm`` is served as
``application/wasm`` and ``.mjs`` as JavaScript.
"""

from __future__ import annotations

import json
import mimetypes
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from edgespec.errors import EdgespecError

#: the repository's android_demo/ folder (the app is not part of the wheel)
DEMO_DIR = Path(__file__).resolve().parents[2] / "android_demo"

#: URL prefix -> folder under android_demo/
VENDOR = {
    "vendor/ort/": "node_modules/onnxruntime-web/dist",
    "vendor/transformers/": "node_modules/@huggingface/transformers/dist",
}

#: content types the app depends on (Python's table lacks or varies on some of them)
CONTENT_TYPES = {
    ".wasm": "application/wasm",
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css",
    ".onnx": "application/octet-stream",
    ".data": "application/octet-stream",
}

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@dataclass(frozen=True)
class DemoSite:
    """What the server serves.

    Attributes:
        demo_dir: the ``android_demo`` folder (``web/`` and ``node_modules/`` inside).
        bundles: ``{name: bundle folder}`` served under ``/models/NAME/``.
        isolate: send COOP/COEP (cross-origin isolation: WASM threads).
    """

    demo_dir: Path = DEMO_DIR
    bundles: dict[str, Path] = field(default_factory=dict)
    isolate: bool = True

    def resolve(self, url_path: str) -> Path | None:
        """The file behind ``url_path`` (``/models/x/edgespec.json``), or None. Never a file
        outside the served folders."""
        rel = unquote(url_path).lstrip("/")
        if rel == "":
            rel = "index.html"
        roots: list[tuple[str, Path]] = [
            (prefix, self.demo_dir / sub) for prefix, sub in VENDOR.items()
        ]
        roots += [(f"models/{name}/", folder) for name, folder in self.bundles.items()]
        for prefix, root in roots:
            if rel.startswith(prefix):
                return _inside(root, rel[len(prefix) :])
        return _inside(self.demo_dir / "web", rel)

    def model_index(self) -> list[dict[str, str]]:
        """The ``/models/index.json`` body."""
        return [{"name": name, "url": f"models/{name}/"} for name in self.bundles]


def _inside(root: Path, rel: str) -> Path | None:
    if not rel or ".." in Path(rel).parts:
        return None
    path = (root / rel).resolve()
    if not path.is_file() or not path.is_relative_to(root.resolve()):
        return None
    return path


def check_site(site: DemoSite) -> None:
    """One-line errors for a checkout without the app, its npm packages, or a bad bundle."""
    if not (site.demo_dir / "web" / "index.html").is_file():
        raise EdgespecError(
            f"the demo web app is not at {site.demo_dir / 'web'}; run edgespec demo serve "
            "from a source checkout (android_demo/ is not part of the wheel)"
        )
    for sub in VENDOR.values():
        if not (site.demo_dir / sub).is_dir():
            raise EdgespecError(
                f"{site.demo_dir / sub} is missing; run 'npm ci --ignore-scripts' in "
                f"{site.demo_dir} (./install.sh does)"
            )
    for name, folder in site.bundles.items():
        if not (folder / "edgespec.json").is_file():
            raise EdgespecError(
                f"'{folder}' is not an edgespec bundle (no edgespec.json); make one with "
                f"edgespec export -m MODEL --format onnx -o DIR (bundle '{name}')"
            )


def bundle_names(folders: Sequence[str | Path]) -> dict[str, Path]:
    """``{name: folder}``: each folder's own name, made unique with -2, -3, ..."""
    out: dict[str, Path] = {}
    for f in folders:
        path = Path(f).expanduser().resolve()
        base = name = "".join(c if c.isalnum() or c in "-_." else "_" for c in path.name)
        i = 1
        while name in out:
            i += 1
            name = f"{base}-{i}"
        out[name] = path
    return out


class _Handler(SimpleHTTPRequestHandler):
    site: DemoSite  # set on the subclass make_server builds

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        pass  # quiet: the page itself reports progress

    def end_headers(self) -> None:
        if self.site.isolate:
            for k, v in ISOLATION_HEADERS.items():
                self.send_header(k, v)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = urlsplit(self.path).path
        if path == "/models/index.json":
            data = json.dumps(self.site.model_index()).encode()
            return self._send(HTTPStatus.OK, "application/json", data, body)
        file = self.site.resolve(path)
        if file is None:
            return self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found\n", body)
        ctype = CONTENT_TYPES.get(file.suffix) or (
            mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        )
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(file.stat().st_size))
        self.end_headers()
        if body:
            with file.open("rb") as f:
                try:
                    shutil.copyfileobj(f, self.wfile, 1 << 20)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the page went away mid-download

    def _send(self, status: HTTPStatus, ctype: str, data: bytes, body: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)


def make_server(site: DemoSite, port: int = 8000, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """A bound (not yet serving) server; ``port=0`` picks a free port
    (``server.server_address[1]``)."""
    check_site(site)
    handler = type("DemoHandler", (_Handler,), {"site": site})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise EdgespecError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port"
        ) from None
    server.daemon_threads = True
    return server
