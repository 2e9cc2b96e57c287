"""Drive the demo page in headless Chromium: the tests' and the benchmark's harness.

:class:`Served` runs ``edgespec demo serve`` in a child process; :func:`drive_page` opens its
page with ``android_demo/tests/drive.mjs`` (playwright-core from android_demo's npm packages,
Debian's ``/usr/bin/chromium``), awaits ``window.demo.ready``, calls ``window.demo.run`` for
each run and returns what the page reported. ``./install.sh`` installs Chromium, node and the
npm packages; :func:`browser_missing` says which is absent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgespec.demo.server import DEMO_DIR

CHROMIUM = os.environ.get("EDGESPEC_CHROMIUM", "/usr/bin/chromium")
DRIVER = DEMO_DIR / "tests" / "drive.mjs"

#: Chromium flags that give WebGPU on SwiftShader (its CPU Vulkan) on a machine without a GPU:
#: with them, navigator.gpu.requestAdapter() returns Google's SwiftShader fallback adapter
#: (Debian's chromium 156, headless, --disable-gpu on); without them it returns null
WEBGPU_SWIFTSHADER = ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader"]


def browser_missing() -> str | None:
    """Why the page cannot be driven here (one line), or None."""
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (./install.sh installs Debian's chromium)"
    if shutil.which("node") is None:
        return "no node (./install.sh needs nodejs for the demo's npm packages)"
    if not (DEMO_DIR / "node_modules" / "playwright-core").is_dir():
        return "android_demo/node_modules is missing (npm ci --ignore-scripts; ./install.sh)"
    return None


class Served:
    """``edgespec demo serve`` on a free port in a child process; ``url`` is its page."""

    def __init__(self, bundles: list[Path], isolate: bool = True) -> None:
        cmd = [sys.executable, "-m", "edgespec", "demo", "serve", "--port", "0"]
        for b in bundles:
            cmd += ["--bundle", str(b)]
        if not isolate:
            cmd.append("--no-isolation")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        line = self.proc.stdout.readline()
        if "http://" not in line:
            self.proc.kill()
            raise RuntimeError(f"demo serve did not start: {line}{self.proc.stderr.read()}")
        self.url = "http://" + line.split("http://", 1)[1].split()[0]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def drive_page(
    url: str | None,
    runs: list[dict[str, Any]],
    screenshot: Path | None = None,
    extra_flags: list[str] | None = None,
    timeout_s: float = 300,
    pages: list[str] | None = None,
) -> dict[str, Any]:
    """Open ``url`` in headless Chromium, await ``window.demo.ready``, run each of ``runs``
    (``window.demo.run`` options, see android_demo/web/app.mjs) in order in the same page.

    Returns:
        ``{info, results, error, console, statsText, modelText}``: ``info`` is what the page
        loaded (backend, artifacts, threads, ...), ``results`` one ``{promptIds, tokens, text,
        stats}`` per run (stats in milliseconds), ``error`` the page's one-line message or
        None, ``modelText`` the page's model line (it names a WebGPU fallback); with
        ``pages`` (more URLs, opened without runs in the same browser: one Chromium start),
        also ``pages``: one ``{info, error, modelText, ...}`` per URL.
    """
    spec = {
        "url": url,
        "runs": runs,
        "chromium": CHROMIUM,
        "screenshot": str(screenshot) if screenshot else None,
        "extraFlags": extra_flags or [],
        "timeoutMs": int(timeout_s * 1000),
        "pages": pages or [],
    }
    p = subprocess.run(
        ["node", str(DRIVER), json.dumps(spec)],
        cwd=DEMO_DIR,
        capture_output=True,
        text=True,
        timeout=timeout_s + 60,
    )
    if p.returncode != 0:
        raise RuntimeError(f"drive.mjs failed: {p.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(p.stdout)
    return out


#: bump when the export options of :func:`demo_bundle` change (the cache key includes it)
DEMO_BUNDLE_VERSION = 1


def demo_bundle(model: str = "smollm2-135m", quant: str = "fp32", draft: str | None = None) -> Path:
    """A zoo model's ONNX bundle for the page, exported once (minutes) and kept under
    ``$EDGESPEC_HOME/demo-bundles/``, keyed by the model file's sha256, the quantization, the
    draft (an ``edgespec export --draft`` spec such as ``layerskip:``, or None) and
    :data:`DEMO_BUNDLE_VERSION`. The export writes atomically (complete or absent), and the
    page checks each file's sha256 against edgespec.json, so a damaged cache fails loudly;
    delete the folder to re-export."""
    from edgespec import zoo
    from edgespec.export.pipeline import ExportOptions, run_export
    from edgespec.home import edgespec_home

    source = zoo.pull(model, progress=False)
    key = [zoo.get_entry(model).sha256, quant, DEMO_BUNDLE_VERSION]
    digest = hashlib.sha256(json.dumps(key + [draft] if draft else key).encode()).hexdigest()
    label = f"{model}-{quant}" + ("-draft" if draft else "")
    out = edgespec_home() / "demo-bundles" / f"{label}-{digest[:16]}"
    if not (out / "edgespec.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        run_export(
            ExportOptions(
                target=str(source),
                out=str(out),
                draft=draft,
                formats=("onnx",),
                quants=(quant,),
                progress=sys.stderr.isatty(),
                verify=False,  # the demo's tests compare the page with the Python runtime
            )
        )
    return out
