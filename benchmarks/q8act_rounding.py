"""How often float rounding flips the int8 activations of the gguf-q8act emulation, and by how
much one flip moves the logits: the measurement behind tests/backends/test_tvm_q8act.py.

The tvm ``gguf-q8act`` build and its NumPy emulation
(:func:`edgespec.runtimes.numpy_q8act.with_int8_activations`) compute every integer sum
alike, but their float arithmetic between the matrices (norms, attention, the residual
stream) rounds differently. An activation within that much of a rounding boundary of its
int8 quantization (or a block's ``amax / 127`` within it of a float16 boundary) lands on the
other side, and the logits move. Here the emulated tiny models of the test (the conftest's
3-layer random llama and qwen2, quantized as tests/backends/test_tvm_quant.py does) run the
test's chain ``IDS`` with their embedding table times ``1 + s * N(0, 1)`` for each scale
``s`` (float32's rounding is ``2^-24`` relative), ``--trials`` draws each, against the
unperturbed forward: the share of forwards whose logits changed at all, and the largest and
median change among those (next to the whole quantization error, the emulation against the
float reference).

    .venv/bin/python benchmarks/q8act_rounding.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=100, help="perturbations per scale")
    ap.add_argument("--scales", type=int, nargs="+", default=[-22, -19, -16], metavar="E",
                    help="relative perturbation scales 2^E")  # fmt: skip
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from backends.test_tvm_quant import IDS, write_quantized_gguf  # type: ignore[import-not-found]
    from conftest import _save_tiny  # type: ignore[import-not-found]

    from edgespec.runtimes.base import LoadOptions, ModelSource
    from edgespec.runtimes.numpy_q8act import with_int8_activations
    from edgespec.runtimes.numpy_ref import NumpyBackend

    print("| model | scale | forwards changed | largest change | median change | "
          "quantization error |\n|---|---|---|---|---|---|")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("llama", "qwen2"):
            hf = _save_tiny(Path(tmp) / arch, arch)
            path = write_quantized_gguf(hf, Path(tmp) / f"tiny-{arch}.gguf")
            src = ModelSource("gguf", path, path.stem)
            opts = LoadOptions(n_ctx=64, progress=False, dtype="float64")
            emu, ref = NumpyBackend.load(src, opts), NumpyBackend.load(src, opts)
            with_int8_activations(emu, path)
            base = emu.forward(IDS)
            quant = float(np.abs(base - ref.forward(IDS)).max())
            assert emu.w.tok_embd is not None  # with_int8_activations keeps a float copy
            table = emu.w.tok_embd.copy()
            rng = np.random.default_rng(0)
            for e in args.scales:
                moved = []
                for _ in range(args.trials):
                    emu.reset()
                    emu.w.tok_embd = table * (1 + rng.standard_normal(table.shape) * 2.0**e)
                    moved.append(float(np.abs(emu.forward(IDS) - base).max()))
                nz = [m for m in moved if m > 0]
                big = f"{max(nz):.3f}" if nz else "-"
                mid = f"{np.median(nz):.3f}" if nz else "-"
                print(f"| tiny {arch} | 2^{e} | {len(nz)}/{args.trials} | {big} | {mid} | "
                      f"{quant:.3f} |")  # fmt: skip
            emu.w.tok_embd = table


if __name__ == "__main__":
    main()
