"""``--format tvm``: the weights as GGUF plus the TVM library compiled for this device.

The artifact folder (layout in :mod:`edgespec.runtimes.tvm_bundle`) holds ``model.gguf``
(written by :func:`edgespec.export.gguf_export.write_gguf`; the tvm backend dequantizes it to
float32 at load, as it does any GGUF), ``lib.so`` (compiled exactly as the backend compiles:
:func:`~edgespec.runtimes.tvm_backend.compile_library` for ``--device cpu``'s llvm target,
``mcpu`` of this CPU), ``tvm.json`` describing it, and this device's MetaSchedule records of
the model's matrix shapes under ``records/``. A device with the same TVM version and target
loads the library instead of compiling; any other compiles (with one warning line).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from edgespec.export.base import Artifact, ArtifactOptions, Exporter, Prepared

#: ``--quant`` name -> the GGUF type of the weights file (the library is the same for all)
WEIGHTS = {"fp32": "f32", "fp16": "f16", "int8": "q8_0", "int4": "q4_0"}


class TvmExporter(Exporter):
    """One GGUF weights file and its compiled TVM library per artifact folder."""

    name = "tvm"
    quants = tuple(WEIGHTS)
    backend = "tvm"
    source_kind = "gguf"

    def export(
        self, src: Prepared, out_dir: Path, quant: str, options: ArtifactOptions
    ) -> Artifact:
        import numpy as np

        from edgespec.errors import missing_extra
        from edgespec.export.gguf_export import write_gguf
        from edgespec.fileutil import sha256_file
        from edgespec.runtimes import numpy_ref, tvm_backend, tvm_bundle
        from edgespec.runtimes.tvm_backend import TvmBackend

        if not TvmBackend.available():
            raise missing_extra("apache-tvm", TvmBackend.extra)
        out_dir.mkdir(parents=True, exist_ok=True)
        model = out_dir / "model.gguf"
        steps = ["weights", "graph", "compile", "records"]
        bar = tqdm(
            steps, desc="tvm export", disable=not options.progress, file=sys.stderr, leave=False
        )
        with bar:
            bar.set_postfix_str("writing the GGUF weights")
            counts = write_gguf(src, model, WEIGHTS[quant], progress=options.progress)
            bar.update(1)
            bar.set_postfix_str("reading the graph's shapes")
            hp, weights, _ = numpy_ref._load_gguf(model, np.float32, False)
            spec = tvm_backend.graph_spec(hp, weights)
            del weights
            target = tvm_backend.get_device("cpu").tvm_target(None)
            bar.update(1)
            bar.set_postfix_str(f"compiling for {target.kind.name} with TVM")
            t0 = time.perf_counter()
            tvm_backend.compile_library(spec, target).export_library(str(out_dir / tvm_bundle.LIB))
            seconds = round(time.perf_counter() - t0, 1)
            bar.update(1)
            bar.set_postfix_str("copying tuning records")
            records = tvm_bundle.copy_records(spec, out_dir / tvm_bundle.RECORDS)
            bar.update(1)
        meta = tvm_bundle.describe(
            spec, hp.arch, target, out_dir / tvm_bundle.LIB, sha256_file(model)
        )
        meta |= {"records": records, "compile_s": seconds}
        (out_dir / tvm_bundle.META).write_text(json.dumps(meta, indent=1) + "\n")
        extra = [out_dir / tvm_bundle.LIB, out_dir / tvm_bundle.META]
        extra += [out_dir / tvm_bundle.RECORDS / r for r in records]
        details = {
            "tensor_types": counts,
            "tvm": {k: meta[k] for k in ("tvm_version", "target", "device", "compile_s")},
        }
        return Artifact("tvm", quant, model, details, extra=extra)
