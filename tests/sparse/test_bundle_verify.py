"""``edgespec bundle verify`` checks a bundle's sparsity layout: its file's checksum and that
it fits the target (layers, FFN width); one line and exit 2 on each mismatch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgespec.cli import main
from edgespec.sparse.layout import THRESHOLDS, sparsity_entry, write_sparsity
from edgespec.sparse.neuron import NeuronThresholds

pytestmark = pytest.mark.unit

LAYERS, N_FF = 3, 128


def _bundle(root: Path, *, layers: int = LAYERS, n_ff: int = N_FF, arch_ff: int = N_FF) -> Path:
    """A bundle whose target is ``LAYERS x arch_ff`` (no artifacts: only the manifest's
    architecture matters here), sparsified with a ``layers x n_ff`` layout."""
    root.mkdir(parents=True)
    manifest = {
        "format_version": 1,
        "roles": {
            "target": {
                "architecture": {"layers": LAYERS, "intermediate_size": arch_ff},
                "artifacts": [],
            }
        },
        "calibration": {},
    }
    (root / "edgespec.json").write_text(json.dumps(manifest))
    th = NeuronThresholds(np.linspace(0.1, 0.3, layers).astype(np.float32), n_ff, 0.5)
    entry = sparsity_entry(th, n_layers=layers, model={"name": "m", "sha256": "0" * 64}, quality={})
    write_sparsity(root, th, entry)
    return root


def _verify(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["bundle", "verify", str(root), "-q"])
    out = capsys.readouterr()
    return rc, out.out.strip(), out.err.strip()


def test_a_matching_layout_verifies_with_its_file(tmp_path, capsys):
    rc, out, err = _verify(_bundle(tmp_path / "b"), capsys)
    assert rc == 0 and err == ""
    assert out == f"ok {tmp_path / 'b'}: 1 files match their sha256"  # the thresholds file


def test_a_changed_thresholds_file_fails_in_one_line(tmp_path, capsys):
    root = _bundle(tmp_path / "b")
    body = json.loads((root / THRESHOLDS).read_text())
    body["thresholds"][0] += 1.0  # same length, other numbers
    (root / THRESHOLDS).write_text(json.dumps(body))
    rc, out, err = _verify(root, capsys)
    assert rc == 2 and out == "" and len(err.splitlines()) == 1
    assert THRESHOLDS in err


def test_a_missing_thresholds_file_fails_in_one_line(tmp_path, capsys):
    root = _bundle(tmp_path / "b")
    (root / THRESHOLDS).unlink()
    rc, _, err = _verify(root, capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and f"{THRESHOLDS} is missing" in err


@pytest.mark.parametrize(
    ("kw", "says"),
    [
        ({"n_ff": 256}, "for 3 layers x 256 neurons, the target has 3 x 128"),
        ({"arch_ff": 64}, "for 3 layers x 128 neurons, the target has 3 x 64"),
        ({"layers": 2}, "for 2 layers x 128 neurons, the target has 3 x 128"),
    ],
)
def test_a_layout_for_another_model_fails_in_one_line(tmp_path, capsys, kw, says):
    rc, out, err = _verify(_bundle(tmp_path / "b", **kw), capsys)
    assert rc == 2 and out == "" and len(err.splitlines()) == 1
    assert says in err and "edgespec sparsify" in err


def test_a_thresholds_count_that_disagrees_with_the_layout_fails(tmp_path, capsys):
    root = _bundle(tmp_path / "b")
    manifest = json.loads((root / "edgespec.json").read_text())
    (root / THRESHOLDS).write_text(json.dumps({"thresholds": [0.1, 0.2]}))  # 2 for 3 layers
    from edgespec.fileutil import sha256_file

    manifest["calibration"]["sparsity"]["files"][0].update(
        sha256=sha256_file(root / THRESHOLDS), size=(root / THRESHOLDS).stat().st_size
    )
    (root / "edgespec.json").write_text(json.dumps(manifest))
    rc, _, err = _verify(root, capsys)
    assert rc == 2 and len(err.splitlines()) == 1
    assert f"{THRESHOLDS} does not hold 3 thresholds" in err
