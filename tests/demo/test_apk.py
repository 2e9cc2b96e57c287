"""android_demo/build.sh: a signed debug APK whose launcher activity is MainActivity.

Static checks only (no emulator or device here): apksigner verifies the signature, aapt shows
the launchable activity, dexdump finds the classes, and the page and onnxruntime-web's WASM are
in assets/ while no model is.
"""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from edgespec.demo.server import DEMO_DIR

pytestmark = pytest.mark.slow

TOOLS = ("aapt", "zipalign", "apksigner", "dexdump", "javac", "java", "keytool")


@pytest.fixture(scope="module")
def apk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (./install.sh installs them)")
    if not (DEMO_DIR / "node_modules" / "onnxruntime-web").is_dir():
        pytest.skip("android_demo/node_modules is missing (npm ci --ignore-scripts; ./install.sh)")
    out = tmp_path_factory.mktemp("apk") / "demo.apk"
    p = subprocess.run(
        [str(DEMO_DIR / "build.sh"), str(out)], capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return out


def _run(*cmd: str) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


def test_apk_verifies_and_launches_main_activity(apk: Path) -> None:
    assert "Verifies" in _run("apksigner", "verify", "-v", str(apk))
    badging = _run("aapt", "dump", "badging", str(apk))
    assert "package: name='org.edgespec.demo'" in badging
    assert "launchable-activity: name='org.edgespec.demo.MainActivity'" in badging
    assert "sdkVersion:'23'" in badging
    dex = _run("dexdump", str(apk))
    assert "Class descriptor  : 'Lorg/edgespec/demo/MainActivity;'" in dex
    assert "shouldInterceptRequest" in dex


def test_apk_holds_the_web_app_not_the_models(apk: Path) -> None:
    names = set(zipfile.ZipFile(apk).namelist())
    for f in (
        "index.html",
        "app.mjs",
        "model.mjs",
        "decode.mjs",
        "vendor/ort/ort.wasm.min.mjs",
        "vendor/ort/ort-wasm-simd-threaded.wasm",
        "vendor/transformers/transformers.min.js",
    ):
        assert f"assets/{f}" in names, f
    assert not [n for n in names if n.endswith((".onnx", ".onnx.data", ".gguf"))]
