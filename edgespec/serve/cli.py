"""``edgespec serve``: the same load flags as ``edgespec generate``, plus the server's own.

Top-level imports stay light: this module is imported by every ``edgespec`` command.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

ENV_API_KEY = "EDGESPEC_API_KEY"


def add_commands(sub: Any) -> None:
    """Add ``serve`` to the ``edgespec`` command."""
    from edgespec.cli import _add_load_args, _add_strategy_args

    p = sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description="An OpenAI-compatible server: /v1/models, /v1/completions, "
        "/v1/chat/completions (streaming), /health and /metrics. One generation at a time "
        "per model; others wait in a queue of --max-queue. Binds to 127.0.0.1 by default; "
        "the strategy is auto unless --strategy says otherwise.",
    )
    _add_load_args(p)
    # --strategy and every strategy's options, as in `edgespec generate`; auto by default
    _add_strategy_args(p)
    p.set_defaults(strategy="auto")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    p.add_argument(
        "--api-key",
        default=os.environ.get(ENV_API_KEY),
        help=f"require 'Authorization: Bearer KEY' on /v1 and /metrics (default: ${ENV_API_KEY})",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=8,
        help="requests that may wait while one generates; more get 429 (default 8)",
    )
    p.add_argument(
        "--max-body",
        type=int,
        default=1 << 20,
        help="largest request body in bytes; larger gets 413 (default 1 MiB)",
    )
    p.add_argument(
        "--served-name",
        default=None,
        help="the model id clients pass as 'model' (default: the --model name)",
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(a: argparse.Namespace) -> int:
    from edgespec.cli import config_from_args, load_from_args
    from edgespec.errors import missing_extra
    from edgespec.serve.options import ServeOptions
    from edgespec.strategies import STRATEGIES

    for module, package in (
        ("starlette", "starlette"),
        ("uvicorn", "uvicorn"),
        ("prometheus_client", "prometheus-client"),
    ):
        try:
            __import__(module)
        except ImportError:
            raise missing_extra(package, "serve") from None
    STRATEGIES.get(a.strategy)  # fail on a typo before loading anything
    options = ServeOptions(
        host=a.host,
        port=a.port,
        api_key=a.api_key,
        max_queue=a.max_queue,
        max_body_bytes=a.max_body,
        strategy=a.strategy,
        config=config_from_args(a),
        model_name=a.served_name,
    )
    from edgespec.serve.app import create_app
    from edgespec.serve.server import bind, uvicorn_server

    sock = bind(options.host, options.port)  # a port in use fails before the model loads
    if not options.loopback and options.api_key is None:
        print(
            f"edgespec: warning: serving on {options.host} without --api-key: anyone who can "
            "reach this machine can use the model",
            file=sys.stderr,
        )
    try:
        with load_from_args(a) as rt:
            server = uvicorn_server(create_app(rt, options))
            port = sock.getsockname()[1]
            print(
                f"edgespec: serving {options.model_name or rt.source.name} ({rt.backend}, "
                f"{options.strategy}) at http://{options.host}:{port}/v1",
                file=sys.stderr,
            )
            server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
