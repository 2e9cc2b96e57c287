"""``edgespec demo serve``: the demo web app on 127.0.0.1, with COOP/COEP.

Top-level imports stay light: this module is imported by every ``edgespec`` command.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(sub: Any) -> None:
    """Add ``demo`` (with its ``serve`` subcommand) to the ``edgespec`` command."""
    p = sub.add_parser(
        "demo",
        help="the browser/Android demo app (android_demo/)",
        description="The demo web app that runs a bundle's ONNX target in the browser "
        "(onnxruntime-web) with edgespec's speculative decoding ported to JavaScript; the "
        "Android app (android_demo/build.sh) packs the same page into a WebView.",
    )
    demo_sub = p.add_subparsers(dest="demo_command", metavar="COMMAND", required=True)
    s = demo_sub.add_parser(
        "serve",
        help="serve the demo web app on 127.0.0.1",
        description="Serve android_demo/web on 127.0.0.1 with Cross-Origin-Opener-Policy and "
        "Cross-Origin-Embedder-Policy (cross-origin isolation: onnxruntime-web may use WASM "
        "threads) and application/wasm. Open the printed address in Chrome or Chromium.",
    )
    s.add_argument(
        "--bundle",
        action="append",
        default=[],
        metavar="DIR",
        help="an edgespec bundle with an ONNX target (edgespec export --format onnx); "
        "repeat for more; the page lists them",
    )
    s.add_argument("--port", type=int, default=8000, help="TCP port, 0 for any (default 8000)")
    s.add_argument(
        "--no-isolation",
        action="store_true",
        help="leave out COOP/COEP (the page then runs WASM single-threaded, as in WebView)",
    )
    s.set_defaults(func=cmd_demo_serve)


def cmd_demo_serve(a: argparse.Namespace) -> int:
    from edgespec.demo.server import DemoSite, bundle_names, make_server

    site = DemoSite(bundles=bundle_names(a.bundle), isolate=not a.no_isolation)
    server = make_server(site, port=a.port)
    host, port = str(server.server_address[0]), int(server.server_address[1])
    print(f"serving the edgespec demo on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
