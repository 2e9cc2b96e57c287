"""GGUF / HF folder -> ONNX (fp32, with past KV), cached under ``$EDGESPEC_HOME/converted``.

1. :func:`gguf_to_hf`: transformers loads the GGUF file and dequantizes every tensor to
   float32 (``from_pretrained(folder, gguf_file=name)``, needs ``accelerate``), then saves
   an HF folder (config.json + model.safetensors). transformers' GGUF *tokenizer* is not
   used: tokenization comes from the GGUF vocabulary elsewhere.
2. :func:`hf_to_onnx` exports that folder with one of two graph builders
   (:data:`ONNX_GRAPHS`). Both graphs take::

       input_ids                  int64[B, T]
       attention_mask             int64[B, P + T]
       past_key_values.{i}.key    float32[B, H_kv, P or n_ctx, D]   (i = 0 .. n_layers-1)
       past_key_values.{i}.value  (same)

   and return ``logits float32[B, T, V]`` and ``present.{i}.key/value``.

   - ``gqa`` (the default): onnxruntime-genai's model builder, run in a child process by
     :mod:`edgespec.export.genai_build`. Fused ``GroupQueryAttention`` with rotary
     embedding inside; past and present may share one preallocated ``n_ctx`` buffer
     (``genai_config.json`` says so), which the runtime binds through IOBinding, so no KV
     is copied per call. Measured faster than ``optimum`` for one token and for k tokens
     (docs/benchmarks-onnx.md).
   - ``optimum``: optimum-onnx's ``text-generation-with-past`` export (adds a
     ``position_ids int64[B, T]`` input); the present KV (``P + T`` long) is a new array
     every call.

   P = 0 works, so one graph serves prefill and decode. Both also take ``use_embeds
   bool[]`` and ``inputs_embeds float32[B, E, D]`` (:mod:`edgespec.export.embeds_inputs`:
   input embeddings in place of the ids' lookup when ``use_embeds`` is True) and return
   ``hidden_states float32[B, T, D]`` (the LM head's input), fetched only when asked for.
3. :func:`ensure_onnx` does both once per source and graph and caches the result in
   ``converted_dir() / key / <variant>``. It builds into a temporary folder and renames it
   (:func:`edgespec.fileutil.atomic_dir`), so an interrupted conversion leaves nothing behind.

torch, transformers and optimum are imported inside the functions only.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from edgespec.errors import EdgespecError, ModelLoadError, missing_extra
from edgespec.export.embeds_inputs import add_embeds_inputs, add_hidden_output
from edgespec.fileutil import atomic_dir, sha256_file
from edgespec.home import converted_dir
from edgespec.runtimes.base import ModelSource

#: Bump when the conversion changes in a way that invalidates cached artifacts.
CONVERTER_VERSION = 2
#: The manifest written beside ``model.onnx``; its presence marks a complete cache entry.
MANIFEST = "edgespec-onnx.json"
TASK = "text-generation-with-past"

_REQUIRED_INPUTS = ("input_ids", "attention_mask", "past_key_values.0.key")
_REQUIRED_OUTPUTS = ("logits", "present.0.key")


# --------------------------------------------------------------------------- helpers


def _need(module: str, package: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise missing_extra(package, "export")


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 300:
        first = first[:297] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


@contextlib.contextmanager
def _quiet(progress: bool) -> Iterator[None]:
    """Silence the tracer warnings and info logs that torch/transformers/optimum print.

    transformers' own progress bars (GGUF dequantization) stay on when ``progress`` is set.
    """
    names = ("transformers", "optimum", "torch.onnx", "accelerate")
    saved = {n: logging.getLogger(n).level for n in names}
    hf_logging: Any = None
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging
    old_verbosity = hf_logging.get_verbosity() if hf_logging else None
    try:
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        if hf_logging is not None:
            hf_logging.set_verbosity_error()
            if progress:
                hf_logging.enable_progress_bar()
            else:
                hf_logging.disable_progress_bar()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)
        if hf_logging is not None and old_verbosity is not None:
            hf_logging.set_verbosity(old_verbosity)
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _gguf_bar(progress: bool) -> Iterator[None]:
    """transformers' GGUF dequantization bar off unless ``progress``: it is a plain
    ``tqdm.auto.tqdm`` in ``transformers.modeling_gguf_pytorch_utils``, which
    ``disable_progress_bar`` does not reach, so that module's name is given a disabled one."""
    module: Any = None
    with contextlib.suppress(ImportError):
        import transformers.modeling_gguf_pytorch_utils as module
    bar = getattr(module, "tqdm", None)
    if progress or bar is None:
        yield
        return
    module.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        module.tqdm = bar


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:64] or "model"


# --------------------------------------------------------------------------- steps


def gguf_to_hf(gguf_path: str | Path, out_dir: str | Path, *, progress: bool = False) -> Path:
    """Dequantize a GGUF file to a float32 HF folder (config.json + model.safetensors).

    Args:
        gguf_path: the .gguf file (any quantization transformers can read).
        out_dir: the folder to write; created if missing.
        progress: show transformers' dequantization progress bar.

    Returns:
        ``out_dir`` as a Path.
    """
    _need("torch", "torch")
    _need("transformers", "transformers")
    _need("accelerate", "accelerate")
    import torch
    from transformers import AutoModelForCausalLM

    src = Path(gguf_path).expanduser().resolve()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with _quiet(progress), _gguf_bar(progress), torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(
            str(src.parent), gguf_file=src.name, dtype=torch.float32, local_files_only=True
        )
        model.eval()
        model.save_pretrained(out, safe_serialization=True)
        model.config.save_pretrained(out)
    del model
    return out


def _optimum_graph(hf_dir: Path, out: Path, progress: bool) -> Path:
    _need("optimum.exporters.onnx", "optimum-onnx")
    from optimum.exporters.onnx import main_export

    with _quiet(progress):
        main_export(
            str(hf_dir),
            str(out),
            task=TASK,
            dtype="fp32",
            device="cpu",
            do_validation=False,
            local_files_only=True,
            library_name="transformers",
        )
    add_embeds_inputs(out / "model.onnx")
    add_hidden_output(out / "model.onnx")
    return out / "model.onnx"


def _genai_graph(hf_dir: Path, out: Path, progress: bool) -> Path:
    _need("onnxruntime_genai", "onnxruntime-genai")
    cmd = [sys.executable, "-m", "edgespec.export.genai_build", str(hf_dir), str(out), "fp32"]
    layers = json.loads((hf_dir / "config.json").read_text()).get("num_hidden_layers")
    code, lines = run_child(cmd, total=layers, desc="ONNX graph", progress=progress)
    if code != 0:
        last = lines[-1][:300] if lines else f"exit status {code}"
        raise EdgespecError(f"onnxruntime-genai's model builder failed ({last})")
    shutil.rmtree(out / ".cache", ignore_errors=True)
    add_tree_inputs(out / "model.onnx")
    add_embeds_inputs(out / "model.onnx")
    add_hidden_output(out / "model.onnx")
    return out / "model.onnx"


#: a builder output line that says which decoder layer it has reached (0-based):
#: "Reading layer N" (onnxruntime-genai 0.15), "Reading decoder layer N" (other versions)
_LAYER_LINE = re.compile(r"Reading (?:decoder )?layer (\d+)")


def run_child(
    cmd: list[str], *, total: int | None, desc: str, progress: bool, keep: int = 40
) -> tuple[int, list[str]]:
    """Run ``cmd`` and stream its output (stdout and stderr merged) into a tqdm bar on
    stderr: "Reading layer N" lines advance it to N + 1 of ``total`` layers, and the
    latest line is shown beside it. Nothing is printed when ``progress`` is False.

    Returns:
        (exit status, the last ``keep`` non-empty lines), for error messages.
    """
    import collections
    import os

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # lines as they happen, not at exit
    tail: collections.deque[str] = collections.deque(maxlen=keep)
    bar = tqdm(
        total=total, desc=desc, unit="layer", disable=not progress, file=sys.stderr, leave=False
    )
    bar.set_postfix_str("starting (imports torch)", refresh=True)
    with subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        env=env,
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.strip()
            if not line:
                continue
            tail.append(line)
            m = _LAYER_LINE.search(line)
            if m and int(m.group(1)) + 1 > bar.n:
                bar.update(int(m.group(1)) + 1 - bar.n)
            bar.set_postfix_str(line[:48], refresh=True)
        code = proc.wait()
    bar.close()
    return code, list(tail)


#: the graph inputs :func:`add_tree_inputs` adds, and their GroupQueryAttention input slots
TREE_INPUTS = {"position_ids": 9, "attention_bias": 10}


def add_tree_inputs(model_path: Path) -> int:
    """Expose GroupQueryAttention's optional ``position_ids`` and ``attention_bias`` inputs as
    graph inputs, so that one forward can score a token tree (in place; weights untouched).

    Adds ``position_ids int64[B, T]`` (the rotary position of each new token) and
    ``attention_bias float32[B, 1, T, P + T]`` (added to the attention scores; large negative
    where node i may not see a position). Every GQA node of the graph gets both.

    Returns:
        the number of GroupQueryAttention nodes wired.
    """
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load(str(model_path), load_external_data=False)
    graph = proto.graph
    names = {i.name for i in graph.input}
    if TREE_INPUTS.keys() & names:
        raise EdgespecError(f"'{model_path}' already has tree inputs")
    graph.input.append(
        helper.make_tensor_value_info(
            "position_ids", TensorProto.INT64, ["batch_size", "sequence_length"]
        )
    )
    graph.input.append(
        helper.make_tensor_value_info(
            "attention_bias",
            TensorProto.FLOAT,
            ["batch_size", 1, "sequence_length", "total_sequence_length"],
        )
    )
    wired = 0
    for node in graph.node:
        if node.op_type != "GroupQueryAttention":
            continue
        ins = list(node.input) + [""] * (max(TREE_INPUTS.values()) + 1 - len(node.input))
        for name, slot in TREE_INPUTS.items():
            ins[slot] = name
        del node.input[:]
        node.input.extend(ins)
        wired += 1
    if not wired:
        raise EdgespecError(f"'{model_path}' has no GroupQueryAttention node to wire")
    onnx.save(proto, str(model_path))  # external weights stay where they are
    return wired


@dataclass(frozen=True)
class GraphStyle:
    """One way to build a decoder graph from an HF folder.

    Attributes:
        name: the registry key (``gqa``, ``optimum``).
        variant: the cache folder name under ``converted_dir() / key``.
        build: ``(hf_dir, out_dir, progress) -> path of model.onnx``.
    """

    name: str
    variant: str
    build: Callable[[Path, Path, bool], Path]


#: graph builders by name; :data:`DEFAULT_GRAPH` is what the ``onnx`` backend converts to
ONNX_GRAPHS: dict[str, GraphStyle] = {
    g.name: g
    for g in (
        GraphStyle("gqa", "onnx-gqa-fp32", _genai_graph),
        GraphStyle("optimum", "onnx-fp32", _optimum_graph),
    )
}
DEFAULT_GRAPH = "gqa"


def _graph(name: str) -> GraphStyle:
    if name not in ONNX_GRAPHS:
        known = ", ".join(sorted(ONNX_GRAPHS))
        raise EdgespecError(f"unknown ONNX graph style '{name}' (known: {known})")
    return ONNX_GRAPHS[name]


def hf_to_onnx(
    hf_dir: str | Path, out_dir: str | Path, *, progress: bool = False, graph: str = DEFAULT_GRAPH
) -> Path:
    """Export an HF causal-LM folder to ``out_dir/model.onnx`` (fp32, with past KV).

    Args:
        hf_dir: config.json + weights.
        out_dir: created if missing.
        progress: let the exporter print its progress.
        graph: a key of :data:`ONNX_GRAPHS`.

    Returns:
        the path of ``model.onnx``. Graph inputs and outputs are listed in this module's
        docstring.
    """
    _need("torch", "torch")
    _need("transformers", "transformers")
    style = _graph(graph)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = style.build(Path(hf_dir), out, progress)
    if not model.exists():
        found = ", ".join(sorted(p.name for p in out.glob("*.onnx"))) or "nothing"
        raise EdgespecError(f"the ONNX export wrote {found}, not model.onnx")
    return model


def graph_io(model_path: str | Path) -> tuple[list[str], list[str]]:
    """Input and output names of an ONNX graph, read without loading external weights."""
    import onnx

    proto = onnx.load(str(model_path), load_external_data=False)
    return [i.name for i in proto.graph.input], [o.name for o in proto.graph.output]


# --------------------------------------------------------------------------- cache


@functools.lru_cache(maxsize=32)
def _gguf_sha256(path: Path, size: int, mtime_ns: int, progress: bool) -> str:
    # The zoo leaves a verified stamp (size, mtime_ns, sha256) beside the files it pulled.
    stamp = path.with_name(path.name + ".verified.json")
    with contextlib.suppress(OSError, ValueError, TypeError):
        data = json.loads(stamp.read_text())
        if data.get("size") == size and data.get("mtime_ns") == mtime_ns:
            digest = str(data["sha256"])
            if re.fullmatch(r"[0-9a-f]{64}", digest):
                return digest
    return sha256_file(path, progress=progress, desc=f"sha256 {path.name}")


def _hf_fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    h.update((folder / "config.json").read_bytes())
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    for w in weights:
        st = w.stat()
        h.update(f"{w.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _check_source(source: ModelSource) -> Path:
    path = Path(source.path).expanduser().resolve()
    if source.kind == "gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file '{path}' does not exist; check the path")
        from edgespec.gguf_file import open_gguf

        open_gguf(path)  # a truncated or corrupt file fails here, with a clear message
    elif source.kind == "hf":
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"'{path}' is not an HF model folder (no config.json)")
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise ModelLoadError(f"'{path}' has no weights (*.safetensors or *.bin)")
    else:
        raise EdgespecError(f"cannot convert a '{source.kind}' source to ONNX; use gguf or hf")
    return path


def source_key(source: ModelSource, *, progress: bool = False) -> str:
    """The cache key of a source: ``<file or folder name>-<16 hex digits>``.

    For a GGUF file the digits are its sha256 prefix; for an HF folder, a hash of
    config.json and the weight files' names, sizes and mtimes.
    """
    path = _check_source(source)
    if source.kind == "gguf":
        st = path.stat()
        digest = _gguf_sha256(path, st.st_size, st.st_mtime_ns, progress)
        return f"{_safe_name(path.stem)}-{digest[:16]}"
    return f"{_safe_name(path.name)}-{_hf_fingerprint(path)[:16]}"


def cached_onnx_dir(
    source: ModelSource, *, progress: bool = False, graph: str = DEFAULT_GRAPH
) -> Path:
    """Where :func:`ensure_onnx` keeps the conversion of ``source`` (may not exist yet)."""
    return converted_dir() / source_key(source, progress=progress) / _graph(graph).variant


def _is_complete(folder: Path) -> bool:
    try:
        meta = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("converter_version") == CONVERTER_VERSION and (folder / meta["model"]).exists()


def ensure_onnx(source: ModelSource, progress: bool = True, graph: str = DEFAULT_GRAPH) -> Path:
    """The folder of the fp32 ONNX conversion of ``source``, converting it on first use.

    Args:
        source: a GGUF file or an HF folder.
        progress: print what happens and show progress bars for the slow steps.
        graph: a key of :data:`ONNX_GRAPHS`.

    Returns:
        ``converted_dir()/<key>/<variant>``, holding ``model.onnx`` (+ external weights),
        ``config.json`` (+ ``genai_config.json`` for ``gqa``) and the manifest
        ``edgespec-onnx.json``.

    Raises:
        EdgespecError: with one line, for a bad source, a missing package or a failed export.
    """
    final = cached_onnx_dir(source, progress=progress, graph=graph)
    if _is_complete(final):
        return final
    path = Path(source.path).expanduser().resolve()
    label = source.name or path.name

    def say(msg: str) -> None:
        if progress:
            tqdm.write(msg, file=sys.stderr)

    steps = (
        ["dequantize GGUF -> HF fp32", "export ONNX"] if source.kind == "gguf" else ["export ONNX"]
    )
    say(f"converting {label} to ONNX fp32 (once; cached in {final.parent})")
    t0 = time.perf_counter()
    try:
        with (
            atomic_dir(final) as tmp,
            tqdm(
                total=len(steps),
                desc=f"ONNX {label}",
                unit="step",
                disable=not progress,
                leave=False,
                file=sys.stderr,
            ) as bar,
        ):
            if source.kind == "gguf":
                bar.set_postfix_str(steps[0])
                with tempfile.TemporaryDirectory(prefix=".hf-", dir=final.parent) as hf_tmp:
                    gguf_to_hf(path, hf_tmp, progress=progress)
                    bar.update(1)
                    bar.set_postfix_str(steps[-1])
                    model = hf_to_onnx(hf_tmp, tmp, progress=progress, graph=graph)
                    shutil.copy2(Path(hf_tmp) / "config.json", tmp / "config.json")
            else:
                bar.set_postfix_str(steps[-1])
                model = hf_to_onnx(path, tmp, progress=progress, graph=graph)
                shutil.copy2(path / "config.json", tmp / "config.json")
            bar.update(1)
            inputs, outputs = graph_io(model)
            missing = [n for n in _REQUIRED_INPUTS if n not in inputs]
            missing += [n for n in _REQUIRED_OUTPUTS if n not in outputs]
            if missing:
                raise EdgespecError(f"the exported graph lacks {', '.join(missing)}")
            manifest = {
                "format_version": 1,
                "converter_version": CONVERTER_VERSION,
                "task": TASK,
                "graph": graph,
                "dtype": "float32",
                "model": model.name,
                "source": {"kind": source.kind, "path": str(path), "name": source.name},
                "inputs": inputs,
                "outputs": outputs,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    except EdgespecError:
        raise
    except Exception as exc:
        hint = "" if isinstance(exc, ImportError) else "; the source may be unsupported"
        raise EdgespecError(f"converting {label} to ONNX failed ({_one_line(exc)}){hint}") from exc
    finally:
        # an empty <key>/ folder left by a failed first conversion is harmless but untidy
        with contextlib.suppress(OSError):
            final.parent.rmdir()
    say(f"converted {label} to ONNX in {time.perf_counter() - t0:.0f} s: {final}")
    return final


def remove_cached(source: ModelSource, graph: str = DEFAULT_GRAPH) -> bool:
    """Delete the cached conversion of ``source``; True if there was one."""
    final = cached_onnx_dir(source, graph=graph)
    if not final.exists():
        return False
    shutil.rmtree(final)
    with contextlib.suppress(OSError):
        final.parent.rmdir()
    return True
