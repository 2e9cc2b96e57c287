"""Self-drafts without training: the target with some layers skipped (SWIFT, DEL, LayerSkip).

We write the kept layers (renumbered) and the target's embeddings, final norm and head into
a new GGUF with the ``gguf`` package, copying the quantized tensor bytes as they are. Every
GGUF backend then runs the self-draft as an ordinary model, and its vocabulary is the
target's by construction.

Layer specs: ``"first:N"`` (early exit after N layers), ``"skip:A-B"`` (drop layers A..B),
``"keep:0-7,22-29"`` (an explicit subset), or None for the default, which skips the middle
half of the stack (SWIFT and DEL found middle layers the most redundant).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from edgespec.errors import EdgespecError
from edgespec.fileutil import atomic_path
from edgespec.gguf_file import open_gguf
from edgespec.home import converted_dir
from edgespec.model import Model
from edgespec.runtimes.base import ModelSource

if TYPE_CHECKING:
    from edgespec.runtime import Runtime

BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")


def parse_layers(spec: str | int | None, n_layers: int) -> list[int]:
    """The kept layer indices for ``spec`` on a model with ``n_layers`` blocks."""
    if spec is None:
        q = n_layers // 4
        return [i for i in range(n_layers) if i < q or i >= n_layers - q] or [0]
    if isinstance(spec, int):
        spec = f"first:{spec}"
    kind, _, arg = str(spec).partition(":")
    try:
        ranges = [tuple(int(x) for x in part.split("-")) for part in arg.split(",") if part]
        picked = sorted({i for r in ranges for i in range(r[0], r[-1] + 1)})
    except ValueError:
        picked = []
    table = {
        "first": list(range(ranges[0][0])) if kind == "first" and ranges else [],
        "keep": picked,
        "skip": [i for i in range(n_layers) if i not in set(picked)],
    }
    layers = table.get(kind, [])
    if not layers or not all(0 <= i < n_layers for i in layers) or len(layers) >= n_layers:
        raise EdgespecError(
            f"bad layer-skip spec '{spec}' for a {n_layers}-layer model; use first:N, "
            "skip:A-B or keep:A-B,C-D with 0 <= layer < n_layers, keeping fewer than all"
        )
    return layers


def derive_gguf(
    src: Path,
    layers: Sequence[int],
    out: Path,
    *,
    progress: bool = True,
    metadata: dict[str, Callable[[Any], Any]] | None = None,
) -> Path:
    """Write a GGUF holding only ``layers`` of ``src`` (renumbered 0..len-1), atomically.

    ``metadata`` maps keys to functions of the old value that give the new one.
    """
    import gguf

    g = open_gguf(src)
    reader, arch = g.reader, g.arch
    new_index = {old: new for new, old in enumerate(layers)}
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        for field in reader.fields.values():
            if field.name == "general.architecture" or field.name.startswith("GGUF."):
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            value = field.contents()
            if field.name == f"{arch}.block_count":
                value = len(layers)
            if metadata and field.name in metadata:
                value = metadata[field.name](value)
            writer.add_key_value(field.name, value, vtype, sub_type=sub)
        writer.add_key_value(
            "edgespec.layerskip.layers", ",".join(map(str, layers)), gguf.GGUFValueType.STRING
        )
        kept = []
        for t in reader.tensors:
            m = BLOCK.match(t.name)
            if m and int(m.group(1)) not in new_index:
                continue
            name = f"blk.{new_index[int(m.group(1))]}.{m.group(2)}" if m else t.name
            kept.append((name, t))
            writer.add_tensor_info(name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, t in tqdm(kept, desc="layer-skip draft", disable=not progress, leave=False):
            writer.write_tensor_data(t.data)
        writer.close()
    return out


def layerskip_path(src: Path, layers: Sequence[int]) -> Path:
    st = src.stat()
    tag = f"{src.stem}-{st.st_size}-{st.st_mtime_ns}"
    return converted_dir() / "layerskip" / f"{tag}-L{'_'.join(map(str, layers))}.gguf"


def load_layerskip_draft(runtime: Runtime, spec: str | int | None) -> Model:
    """Derive (cached) and load the self-draft of ``runtime``'s target on its backend."""
    from edgespec.runtime import load_model

    if runtime.source.kind != "gguf":
        raise EdgespecError(
            "the layerskip proposer needs a GGUF target for now; export one with "
            "`edgespec export --format gguf` or use the ngram/recycle proposers"
        )
    layers = parse_layers(spec, runtime.target.info.n_layers)
    path = layerskip_path(runtime.source.path, layers)
    if not path.exists():
        derive_gguf(runtime.source.path, layers, path, progress=runtime.options.progress)
    source = ModelSource("gguf", path, f"{runtime.source.name}:layerskip")
    return load_model(source, runtime.backend, runtime.options)
