"""An ``inputs_embeds`` entry point for decoder graphs (HF's ``inputs_embeds``), by graph edit.

:func:`add_embeds_inputs` adds two graph inputs::

    use_embeds     bool[]                     (a scalar)
    inputs_embeds  float[B, E, D]             (D: the embedding width)

and puts ``Where(use_embeds, inputs_embeds, embedding)`` between the token-embedding lookup
(``Gather(embed_tokens, input_ids)``, and its constant scale ``Mul`` where the graph has one)
and everything that read it. ``Where`` copies one branch bit for bit, so with ``use_embeds``
False the graph computes what it computed before, and with True the rows of
``inputs_embeds`` enter the first block as they are. Callers always feed both inputs: in
the ids path a ``[1, 1, D]`` zero row (broadcast by ``Where``); in the embeds path
``input_ids`` of the right length (any ids; their lookup is discarded).

:func:`ensure_embeds_inputs` applies the edit to an already converted folder that lacks it
(conversions cached before the edit existed): only the small ``model.onnx`` protobuf is
rewritten (atomically); the external weights stay as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgespec.fileutil import atomic_path

#: the graph inputs :func:`add_embeds_inputs` adds
EMBEDS_INPUT = "inputs_embeds"
FLAG_INPUT = "use_embeds"
#: the name of the selected embedding tensor (the Where's output)
SELECTED = "edgespec/embeds/Where/output_0"
_MANIFEST = "edgespec-onnx.json"


def add_embeds_inputs(model_path: str | Path) -> bool:
    """Wire optional input embeddings into the graph at ``model_path`` (in place; weights
    untouched). See the module docstring for the inputs.

    Returns:
        True if the graph was edited; False if it already has ``inputs_embeds`` or has no
        recognisable embedding lookup (a ``Gather`` of an initializer by ``input_ids``).
    """
    import onnx
    from onnx import TensorProto, helper

    path = Path(model_path)
    proto = onnx.load(str(path), load_external_data=False)
    graph = proto.graph
    if any(i.name == EMBEDS_INPUT for i in graph.input):
        return False
    inits = {t.name: t for t in graph.initializer}
    nodes = list(graph.node)
    gather = next(
        (
            k
            for k, n in enumerate(nodes)
            if n.op_type == "Gather"
            and len(n.input) == 2
            and n.input[1] == "input_ids"
            and n.input[0] in inits
        ),
        None,
    )
    if gather is None:
        return False
    table = inits[nodes[gather].input[0]]
    if len(table.dims) != 2:
        return False
    width, elem = int(table.dims[1]), int(table.data_type)
    at, out = gather, nodes[gather].output[0]
    # an embedding scale (gemma): Gather -> Mul(·, constant) is still "the embedding"
    readers = [k for k, n in enumerate(nodes) if out in n.input]
    if len(readers) == 1 and nodes[readers[0]].op_type == "Mul":
        mul = nodes[readers[0]]
        other = [x for x in mul.input if x != out]
        consts = {o for n in nodes if n.op_type == "Constant" for o in n.output}
        if len(other) == 1 and (other[0] in inits or other[0] in consts):
            at, out = readers[0], mul.output[0]
    for node in nodes[at + 1 :]:
        for j, name in enumerate(node.input):
            if name == out:
                node.input[j] = SELECTED
    for o in graph.output:
        if o.name == out:  # never the case in decoder graphs; keep the edit total anyway
            return False
    where = helper.make_node(
        "Where", [FLAG_INPUT, EMBEDS_INPUT, out], [SELECTED], name="edgespec/embeds/Where"
    )
    graph.node.insert(at + 1, where)
    graph.input.append(helper.make_tensor_value_info(FLAG_INPUT, TensorProto.BOOL, []))
    graph.input.append(
        helper.make_tensor_value_info(EMBEDS_INPUT, elem, ["batch_size", "embeds_length", width])
    )
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))  # external weights stay where they are (same folder)
    return True


def ensure_embeds_inputs(folder: str | Path) -> bool:
    """Give the converted folder's ``model.onnx`` the embeds inputs if it lacks them, and
    list them in its manifest. Cheap (the weights are not read). True if it edited."""
    folder = Path(folder)
    if not add_embeds_inputs(folder / "model.onnx"):
        return False
    manifest = folder / _MANIFEST
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return True
    inputs = list(meta.get("inputs", []))
    meta["inputs"] = inputs + [n for n in (FLAG_INPUT, EMBEDS_INPUT) if n not in inputs]
    with atomic_path(manifest) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return True
