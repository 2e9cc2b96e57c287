"""An ``inputs_embeds`` entry point and a ``hidden_states`` output for decoder graphs, by graph
edit (what Dolphin memory compression needs: :mod:`edgespec.compress.dolphin`).

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

:func:`add_hidden_output` exposes the input of the LM head (``logits = MatMul(h, W)`` or its
MatMulNBits form: the last block's output after the final norm) as the graph output
``hidden_states float[B, T, D]`` by renaming that tensor; no node is added, and a run that
does not ask for it does not fetch it.

:func:`ensure_embeds_inputs` applies both edits to an already converted folder that lacks them
(conversions cached before the edit existed): only the small ``model.onnx`` protobuf is
rewritten (atomically); the external weights stay as they are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgespec.fileutil import atomic_path

#: the graph inputs :func:`add_embeds_inputs` adds
EMBEDS_INPUT = "inputs_embeds"
FLAG_INPUT = "use_embeds"
#: the name of the selected embedding tensor (the Where's output)
SELECTED = "edgespec/embeds/Where/output_0"
#: the graph output :func:`add_hidden_output` adds
HIDDEN_OUTPUT = "hidden_states"
#: the ops an LM head is made of, the quantized one first (see :func:`_head_input`)
_HEAD_OPS = ("MatMulNBits", "MatMul")
_MANIFEST = "edgespec-onnx.json"


def add_embeds_inputs(model_path: str | Path) -> bool:
    """Wire optional input embeddings into the graph at ``model_path`` (in place; weights
    untouched). See the module docstring for the inputs.

    Returns:
        True if the graph was edited; False if it already has ``inputs_embeds`` or has no
        embedding lookup (a ``Gather`` by ``input_ids``).
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
            if n.op_type == "Gather" and len(n.input) == 2 and n.input[1] == "input_ids"
        ),
        None,
    )
    if gather is None:
        return False
    width, elem = _table_width(graph, nodes[gather].input[0], inits)
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


def _table_width(graph: Any, table: str, inits: dict[str, Any]) -> tuple[int | str, int]:
    """(D, element type) of the embedding table ``table``: an initializer ``[V, D]``, or the
    ``Transpose`` of the tied LM head ``[D, V]`` (onnxruntime-genai's builder for tied
    embeddings). Else a symbolic D and the logits' element type."""
    init = inits.get(table)
    if init is None:
        node = next((n for n in graph.node if table in n.output), None)
        if node is not None and node.op_type == "Transpose" and node.input[0] in inits:
            head = inits[node.input[0]]
            if len(head.dims) == 2:
                return int(head.dims[0]), int(head.data_type)
    elif len(init.dims) == 2:
        return int(init.dims[1]), int(init.data_type)
    logits = next((o for o in graph.output if o.name == "logits"), None)
    elem = logits.type.tensor_type.elem_type if logits is not None else 1  # 1: FLOAT
    return "hidden_size", int(elem)


def _head_input(graph: Any) -> str | None:
    """The LM head's input tensor: ``logits = MatMul(h, W)`` or ``MatMulNBits(h, ...)``
    (gguf-exact graphs; affine types add a residual: ``Add(MatMulNBits(h, ...), ...)``)."""
    inits = {t.name for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    node = producer.get("logits")
    if node is not None and node.op_type == "Add":
        parts = [producer[x] for x in node.input if x in producer]
        node = next((n for op in _HEAD_OPS for n in parts if n.op_type == op), None)
    if node is None or node.op_type not in _HEAD_OPS or node.input[0] in inits:
        return None
    return str(node.input[0])


def remove_embeds_inputs(model_path: str | Path) -> bool:
    """Undo :func:`add_embeds_inputs` and :func:`add_hidden_output` (in place): the graph as
    conversions made before them were. For tests and the overhead benchmark. True if the
    graph had the embeds edit."""
    import onnx

    path = Path(model_path)
    proto = onnx.load(str(path), load_external_data=False)
    graph = proto.graph
    where = next((n for n in graph.node if SELECTED in n.output), None)
    if where is None:
        return False
    renames = {SELECTED: where.input[2], HIDDEN_OUTPUT: "edgespec/lm_head_input"}
    graph.node.remove(where)
    for node in graph.node:
        for names in (node.input, node.output):
            for j, name in enumerate(names):
                names[j] = renames.get(name, name)
    keep = [i for i in graph.input if i.name not in (EMBEDS_INPUT, FLAG_INPUT)]
    del graph.input[:]
    graph.input.extend(keep)
    outs = [o for o in graph.output if o.name != HIDDEN_OUTPUT]
    del graph.output[:]
    graph.output.extend(outs)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return True


def add_hidden_output(model_path: str | Path) -> bool:
    """Expose the LM head's input as the graph output ``hidden_states`` (in place).

    Returns:
        True if the graph was edited; False if it already has the output or ``logits`` is
        not made by a ``MatMul`` / ``MatMulNBits`` of a computed tensor.
    """
    import onnx
    from onnx import helper

    path = Path(model_path)
    proto = onnx.load(str(path), load_external_data=False)
    graph = proto.graph
    if any(o.name == HIDDEN_OUTPUT for o in graph.output):
        return False
    old = _head_input(graph)
    logits = next((o for o in graph.output if o.name == "logits"), None)
    if old is None or logits is None:
        return False
    elem = logits.type.tensor_type.elem_type
    for node in graph.node:
        for j, name in enumerate(node.output):
            if name == old:
                node.output[j] = HIDDEN_OUTPUT
        for j, name in enumerate(node.input):
            if name == old:
                node.input[j] = HIDDEN_OUTPUT
    graph.output.append(
        helper.make_tensor_value_info(
            HIDDEN_OUTPUT, elem, ["batch_size", "sequence_length", "hidden_size"]
        )
    )
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    return True


def ensure_embeds_inputs(folder: str | Path) -> bool:
    """Give the converted folder's ``model.onnx`` the embeds inputs and the hidden-states
    output if it lacks them, and list them in its manifest. Cheap (the weights are not
    read). True if it edited."""
    folder = Path(folder)
    added = add_embeds_inputs(folder / "model.onnx")
    added = add_hidden_output(folder / "model.onnx") or added
    if not added:
        return False
    manifest = folder / _MANIFEST
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return True
    inputs = list(meta.get("inputs", []))
    meta["inputs"] = inputs + [n for n in (FLAG_INPUT, EMBEDS_INPUT) if n not in inputs]
    outputs = list(meta.get("outputs", []))
    meta["outputs"] = outputs + [HIDDEN_OUTPUT] * (HIDDEN_OUTPUT not in outputs)
    with atomic_path(manifest) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return True
