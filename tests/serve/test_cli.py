"""``edgespec serve`` fails in one line, before loading a model, on a port in use or a bad
server flag; it binds to loopback by default."""

from __future__ import annotations

import socket

import pytest

from edgespec.cli import build_parser, main

pytestmark = pytest.mark.unit


def test_port_in_use_is_one_line_before_loading(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "-m", "no-such-model-anywhere"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgespec: error: cannot listen on 127.0.0.1:") and "--port" in err
    assert "\n" not in err


@pytest.mark.parametrize(
    "flags, words",
    [(["--max-queue", "-1"], "--max-queue"), (["--max-body", "10"], "--max-body")],
)
def test_bad_server_flags(capsys, flags, words):
    assert main(["serve", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err


def test_defaults_are_loopback_and_auto():
    a = build_parser().parse_args(["serve"])
    assert (a.host, a.port, a.strategy, a.max_queue) == ("127.0.0.1", 8080, "auto", 8)
