"""Fixtures for the demo web app's tests: a served bundle and a headless Chromium driver.

The browser side runs android_demo/tests/drive.mjs (playwright-core from android_demo's npm
packages) against Debian's /usr/bin/chromium; ./install.sh installs both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgespec.demo.server import DEMO_DIR
from edgespec.testing import add_byte_tokenizer

CHROMIUM = os.environ.get("EDGESPEC_CHROMIUM", "/usr/bin/chromium")
DRIVER = DEMO_DIR / "tests" / "drive.mjs"


def _browser_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (./install.sh installs Debian's chromium)"
    if shutil.which("node") is None:
        return "no node (./install.sh needs nodejs for the demo's npm packages)"
    if not (DEMO_DIR / "node_modules" / "playwright-core").is_dir():
        return "android_demo/node_modules is missing (npm ci --ignore-scripts; ./install.sh)"
    return None


@pytest.fixture(scope="session")
def browser() -> None:
    """Skip when Chromium, node or the demo's npm packages are missing."""
    why = _browser_missing()
    if why:
        pytest.skip(why)


class Served:
    """``edgespec demo serve`` in a child process; ``url`` is its page."""

    def __init__(self, bundles: list[Path], isolate: bool = True) -> None:
        cmd = [sys.executable, "-m", "edgespec", "demo", "serve", "--port", "0"]
        for b in bundles:
            cmd += ["--bundle", str(b)]
        if not isolate:
            cmd.append("--no-isolation")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "http://" not in line:
            self.proc.kill()
            raise RuntimeError(f"demo serve did not start: {line}{self.proc.stderr.read()}")  # type: ignore[union-attr]
        self.url = line.split("http://", 1)[1].split()[0]
        self.url = "http://" + self.url

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def serve() -> Iterator[Any]:
    """``serve(bundles, isolate=True) -> Served``; every server is stopped afterwards."""
    started: list[Served] = []

    def start(bundles: list[Path], isolate: bool = True) -> Served:
        started.append(Served(bundles, isolate))
        return started[-1]

    yield start
    for s in started:
        s.close()


@pytest.fixture
def drive(browser: None) -> Any:
    """``drive(url, runs, screenshot=None, extra_flags=None)``; see :func:`drive_page`."""
    return drive_page


def drive_page(
    url: str,
    runs: list[dict[str, Any]],
    screenshot: Path | None = None,
    extra_flags: list[str] | None = None,
    timeout_s: float = 300,
) -> dict[str, Any]:
    """Open ``url`` in headless Chromium, await ``window.demo.ready``, run each of ``runs``
    (``window.demo.run`` options) and return ``{info, results, error, console, statsText}``."""
    spec = {
        "url": url,
        "runs": runs,
        "chromium": CHROMIUM,
        "screenshot": str(screenshot) if screenshot else None,
        "extraFlags": extra_flags or [],
        "timeoutMs": int(timeout_s * 1000),
    }
    p = subprocess.run(
        ["node", str(DRIVER), json.dumps(spec)],
        cwd=DEMO_DIR,
        capture_output=True,
        text=True,
        timeout=timeout_s + 60,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random llama exported as an fp32 ``gqa`` ONNX bundle (about 40 s)."""
    pytest.importorskip("onnxruntime_genai")
    from edgespec.export.pipeline import ExportOptions, run_export

    hf = tmp_path_factory.mktemp("demo-tiny") / "hf"
    shutil.copytree(tiny_llama_dir, hf)
    add_byte_tokenizer(hf)
    out = hf.parent / "tiny"
    run_export(
        ExportOptions(
            target=str(hf), out=str(out), formats=("onnx",), quants=("fp32",), progress=False
        )
    )
    return out
