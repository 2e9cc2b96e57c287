"""Fixtures for the demo web app's tests: served bundles and a headless Chromium driver.

The browser side runs android_demo/tests/drive.mjs (playwright-core from android_demo's npm
packages) against Debian's /usr/bin/chromium (edgespec.demo.browser); ./install.sh installs
both.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgespec.demo.browser import Served, browser_missing, drive_page
from edgespec.testing import add_byte_tokenizer


@pytest.fixture(scope="session")
def browser() -> None:
    """Skip when Chromium, node or the demo's npm packages are missing."""
    why = browser_missing()
    if why:
        pytest.skip(why)


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
    """``drive(url, runs, screenshot=None, extra_flags=None, pages=None)``; see
    :func:`edgespec.demo.browser.drive_page`."""
    return drive_page


def _noisy_copy(hf: Path, out: Path, scale: float) -> Path:
    """A copy of the HF folder ``hf`` whose matrices are multiplied by ``1 + scale * N(0, 1)``
    (seeded): a draft model of the same tokenizer and vocabulary that agrees with the target
    often but not always."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(hf, out)
    rng = np.random.default_rng(0)
    w = load_file(str(out / "model.safetensors"))
    noisy = {
        k: (v * (1 + scale * rng.standard_normal(v.shape))).astype(v.dtype) if v.ndim > 1 else v
        for k, v in w.items()
    }
    save_file(noisy, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


#: relative weight noise of the tiny draft: its greedy drafts are accepted in part (on
#: tests/demo's prompts 21 of 89 drafted tokens, several steps with 2+ accepted, with
#: minConfidence 0 and k = 4: printed by test_draft_speculation_matches_plain's stats)
DRAFT_NOISE = 0.1


@pytest.fixture(scope="session")
def tiny_bundle(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random llama exported as an fp32 ``gqa`` ONNX bundle with a draft role (the
    same model with noisy weights, same tokenizer; about 20 s on a quiet machine)."""
    pytest.importorskip("onnxruntime_genai")
    from edgespec.export.pipeline import ExportOptions, run_export

    hf = tmp_path_factory.mktemp("demo-tiny") / "hf"
    shutil.copytree(tiny_llama_dir, hf)
    add_byte_tokenizer(hf)
    draft = _noisy_copy(hf, hf.parent / "draft-hf", DRAFT_NOISE)
    out = hf.parent / "tiny"
    run_export(
        ExportOptions(
            target=str(hf),
            out=str(out),
            draft=str(draft),
            formats=("onnx",),
            quants=("fp32",),
            progress=False,
            verify=False,  # the demo tests compare with the Python runtime on the bundle
        )
    )
    return out


@pytest.fixture(scope="session")
def smollm2_bundle(smollm2_path: Path) -> Path:
    """smollm2-135m's fp32 ONNX bundle (:func:`edgespec.demo.browser.demo_bundle`): exported
    once (254 s at load average 10), then reused from ``$EDGESPEC_HOME/demo-bundles/``."""
    pytest.importorskip("onnxruntime_genai")
    from edgespec.demo.browser import demo_bundle

    return demo_bundle("smollm2-135m", "fp32")
