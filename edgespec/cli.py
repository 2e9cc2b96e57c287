"""The ``edgespec`` command. It only parses arguments; the API does the work.

Every :class:`EdgespecError` becomes one line on stderr and exit status 2; no tracebacks
unless ``EDGESPEC_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from edgespec import zoo
from edgespec.errors import EdgespecError

if TYPE_CHECKING:
    from edgespec.runtime import Runtime
    from edgespec.sampling import GenerationParams

Handler = Callable[[argparse.Namespace], int]


#: the one default of ``--max-new-tokens`` (generate, profile, bench, calibrate-switch);
#: the same as ``GenerationParams.max_new_tokens`` (a unit test checks)
DEFAULT_MAX_NEW_TOKENS = 128
#: the default KV-cache size in tokens (``-c/--ctx-size``)
DEFAULT_CTX_SIZE = 2048


def add_model_arg(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """``-m/--model``, spelled as in llama.cpp (dest ``model``)."""
    p.add_argument(
        "-m",
        "--model",
        default=None,
        help=help or f"zoo name, .gguf file, HF folder or hub id (default {zoo.DEFAULT_MODEL})",
    )


def add_draft_arg(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--draft``, also ``-md``/``--model-draft`` as in llama.cpp (dest ``draft``)."""
    p.add_argument(
        "-md",
        "--draft",
        "--model-draft",
        dest="draft",
        metavar="DRAFT",
        default=None,
        help=help or "draft model with the same vocabulary",
    )


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """``-c/--ctx-size`` (alias ``--n-ctx``; dest ``n_ctx``) and ``-t/--threads`` (dest
    ``threads``), spelled as in llama.cpp."""
    p.add_argument(
        "-c",
        "--ctx-size",
        "--n-ctx",
        dest="n_ctx",
        metavar="TOKENS",
        type=int,
        default=DEFAULT_CTX_SIZE,
        help=f"KV-cache size in tokens (default {DEFAULT_CTX_SIZE})",
    )
    p.add_argument(
        "-t",
        "--threads",
        dest="threads",
        metavar="N",
        type=int,
        default=None,
        help="CPU threads (default: the fastest count measured on this device, cached)",
    )


def add_weights_arg(p: argparse.ArgumentParser) -> None:
    """``--weights``: what the onnx and tvm backends run a GGUF model's matrices as."""
    p.add_argument(
        "--weights",
        default="auto",
        help="onnx and tvm backends, GGUF models: gguf-exact (the file's own quantized blocks), "
        "fp32 (dequantized), or on tvm gguf-q8act (those blocks times int8-quantized "
        "activations, AVX512-VNNI, AVX-VNNI or AVX2). Default auto: gguf-q8act on tvm where the "
        "CPU has one of those, else gguf-exact",
    )


def _add_load_args(p: argparse.ArgumentParser) -> None:
    add_model_arg(p)
    p.add_argument(
        "--backend",
        "-b",
        default=None,
        help="llamacpp | onnx | numpy | tvm | blockffn (default: best installed for the model)",
    )
    add_draft_arg(p)
    add_weights_arg(p)
    p.add_argument(
        "--no-spin",
        action="store_true",
        help="onnx backend: idle worker threads sleep instead of spinning (less CPU per "
        "token, slower)",
    )
    p.add_argument(
        "--exact",
        action="store_true",
        help="llamacpp/onnx: plain decoding through the verification kernels, so that "
        "speculation matches it token for token (slower one-token steps; docs/speculative.md)",
    )
    p.add_argument(
        "--kv-cache",
        default=None,
        metavar="TYPE",
        help="KV-cache type: f32, f16, q8, q4 (llamacpp), f32, f16, q8, q4, gear4 (numpy) or "
        "f32, f16 (tvm); q8, q4 and gear4 are lossy and save memory, --stats says how much; "
        "default: the backend's, f16 on llama.cpp and tvm's gguf-q8act build, f32 elsewhere "
        "(docs/compression.md)",
    )
    p.add_argument(
        "--sparse-kernel",
        default="numpy",
        metavar="IMPL",
        help="chunk-sparse FFN kernel of sparse models (--backend blockffn, sparsified "
        "bundles): numpy, tvm, or tvm-q8 (tvm on the weights quantized to Q8_0, lossy; "
        "default numpy; docs/sparsity.md)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="where the model runs: cpu, opencl or vulkan (--backend tvm; opencl: TVM's "
        "OpenCL kernels on the installed OpenCL driver, fp32 or gguf-exact; vulkan needs a TVM "
        "build with that runtime; docs/tvm.md), or npu (--backend onnx: ONNX Runtime's "
        "QNN, NNAPI or CoreML provider, when installed)",
    )
    add_runtime_args(p)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def add_prompt_args(p: argparse.ArgumentParser) -> None:
    """The prompt: text, ``-f/--file FILE``, or stdin (``-`` or nothing with a pipe)."""
    p.add_argument(
        "prompt",
        nargs="?",
        default=None,
        help="the prompt text; '-' or omitted with a pipe: read it from stdin",
    )
    p.add_argument(
        "-f",
        "--file",
        default=None,
        metavar="FILE",
        help="read the prompt from FILE ('-': stdin)",
    )


def read_prompt(a: argparse.Namespace) -> str:
    """The prompt of :func:`add_prompt_args`: the text, ``--file``, or stdin.

    Raises:
        EdgespecError: both text and ``--file``, a missing or unreadable file, no prompt at
            all on a terminal, or an empty prompt.
    """
    text, file = a.prompt, getattr(a, "file", None)
    if text is not None and file is not None:
        raise EdgespecError("pass the prompt as text or with -f FILE, not both")
    if file is None and text is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise EdgespecError("no prompt; pass it as text, with -f FILE, or on stdin")
        file = "-"
    elif text == "-":
        file = "-"
    if file == "-":
        try:
            text = sys.stdin.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise EdgespecError(f"cannot read the prompt from stdin: {exc}") from None
    elif file is not None:
        path = Path(file).expanduser()
        if not path.is_file():
            raise EdgespecError(f"prompt file '{file}' does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise EdgespecError(f"cannot read prompt file '{file}': {exc}") from None
    if not text or not text.strip():
        where = "on stdin" if file == "-" else f"in '{file}'" if file else ""
        raise EdgespecError(f"the prompt {where + ' ' if where else ''}is empty; pass some text")
    return text


def _add_strategy_args(p: argparse.ArgumentParser) -> None:
    """``--strategy`` and the options of every registered strategy, generated from their
    option classes (:mod:`edgespec.options`); strategies and proposers come from the
    registries."""
    from edgespec.options import add_flags
    from edgespec.speculative.base import PROPOSERS
    from edgespec.strategies import STRATEGIES, option_flags

    lines = [f"{n}: {STRATEGIES.get(n).summary}" for n in STRATEGIES.names()]
    p.add_argument(
        "--strategy",
        default="autoregressive",
        metavar="NAME",
        help="; ".join(lines) + ". speculative and auto differ only in whether plain "
        "decoding (k = 0) is always a candidate (auto) and in their defaults. Proposers: "
        + ", ".join(PROPOSERS.names()),
    )
    group = p.add_argument_group("strategy options (each applies only to the strategies named)")
    add_flags(group, option_flags())


def _add_gen_args(p: argparse.ArgumentParser) -> None:
    _add_strategy_args(p)
    p.add_argument(
        "--max-new-tokens", "-n", type=int, default=DEFAULT_MAX_NEW_TOKENS, help="token budget"
    )
    p.add_argument("--temperature", "--temp", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="1.0 = off")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-sequence")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--system", default=None, help="system message for --chat")
    p.add_argument("--stats", action="store_true", help="print statistics to stderr")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def params_from_args(a: argparse.Namespace) -> GenerationParams:
    """The sampling parameters of the generation flags, validated; also reads the prompt
    (text, ``--file`` or stdin) into ``a.prompt``."""
    from edgespec.runtime import make_params

    a.prompt = read_prompt(a)
    return make_params(
        max_new_tokens=a.max_new_tokens,
        temperature=a.temperature,
        top_k=a.top_k,
        top_p=a.top_p,
        seed=a.seed,
        stop=tuple(a.stop),
        ignore_eos=a.ignore_eos,
    )


def load_from_args(a: argparse.Namespace, draft_quant: str | None = None) -> Runtime:
    """``edgespec.load`` with the model-loading flags (``_add_load_args``); ``draft_quant``
    as ``edgespec.load`` takes it (None: "auto")."""
    from edgespec.runtime import load

    return load(
        a.model,
        backend=a.backend,
        draft=a.draft,
        n_ctx=a.n_ctx,
        n_threads=a.threads,
        progress=not a.quiet,
        weights=a.weights,
        spin=not a.no_spin,
        exact=a.exact,
        compressor=getattr(a, "compressor", None),
        compressor_backend=getattr(a, "compressor_backend", None),
        kv_cache=a.kv_cache,
        device=getattr(a, "device", "cpu"),
        sparse_kernel=getattr(a, "sparse_kernel", "numpy"),
        draft_quant=draft_quant,
    )


def cmd_generate(a: argparse.Namespace) -> int:
    from edgespec.compress.cli import compress_from_args
    from edgespec.strategies import STRATEGIES

    params = params_from_args(a)
    STRATEGIES.get(a.strategy)  # fail on a typo before loading anything
    config = config_from_args(a)
    compress_from_args(a)  # bad compression flags fail before any model loads
    # the draft as --draft-quant asks; a lossy strategy's output depends on the small
    # model's weights, so it keeps the file's unless asked
    quant = (config or {}).get("draft_quant") or (
        "file" if STRATEGIES.get(a.strategy).lossy else None
    )
    rt = load_from_args(a, draft_quant=quant)
    with rt:
        compress = compress_from_args(a, rt.compress_ratio)
        gen = rt.start(
            a.prompt,
            strategy=a.strategy,
            params=params,
            config=config,
            chat=a.chat,
            system=a.system,
            compress=compress,
        )
        if a.json:
            result = gen.run()
            print(json.dumps(result.to_dict()))
        else:
            for piece in gen:
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            assert gen.result is not None  # set once the generation is consumed
            result = gen.result
        if a.stats:
            print(result.stats.summary(), file=sys.stderr)
    return 0


def config_from_args(a: argparse.Namespace) -> dict[str, Any] | None:
    """The options of ``--strategy`` that the user gave (None: none), validated before any
    model is loaded; a flag that the strategy does not use is a one-line error."""
    from edgespec.options import options_from_args
    from edgespec.strategies import STRATEGIES, option_flags

    cls = STRATEGIES.get(a.strategy)
    options = options_from_args(a, a.strategy, cls.options_class, option_flags())
    cls.check_args(a, options)
    return options or None


def cmd_calibrate(a: argparse.Namespace) -> int:
    from edgespec import threads
    from edgespec.speculative import cost_curves

    if a.max_k < 1:
        raise EdgespecError(f"--max-k must be >= 1, got {a.max_k}")
    rt = load_from_args(a)
    with rt:
        if a.threads is None:  # every count from 1 to the CPUs, stored as the default
            threads.calibrate(rt, reps=max(a.reps, threads.CALIBRATE_REPS))
        sizes = list(range(1, a.max_k + 2))
        # a chunk-sparse target is timed on real text, and its sparsity kept with the curve
        text = cost_curves.curve_tokens(rt.target, rt.tokenizer, a.context, a.max_k + 1)
        sparsity = getattr(rt.target, "sparsity", None)
        if sparsity is not None:
            sparsity.reset()
        curve = cost_curves.measure_verify_curve(
            rt.target,
            sizes,
            context=a.context,
            reps=a.reps,
            vocab=rt.tokenizer.vocab_size,
            progress=not a.quiet,
            tokens=text,
        )
        sparse = sparsity.to_dict() if sparsity is not None else None
        from edgespec import losslessness as ll

        n_pos = ll.CALIBRATE_POSITIONS
        bound = ll.calibrate_near_tie_bound(
            rt.target, rt.tokenizer, max_k=a.max_k, positions=n_pos, progress=not a.quiet
        )
        key = rt.curve_key()  # the key the controller and the bench look up
        tree = None
        if rt.target.supports_tree:  # what a session's tree-or-chain choice loads
            from edgespec.speculative.session import tree_nodes

            tree = cost_curves.tree_overhead(
                rt.target, key, tree_nodes(a.max_k), remeasure=True, source="calibrate"
            )
        entry = {
            "verify": {str(n): s for n, s in curve.items()},
            "model": rt.source.name,
            "backend": rt.backend,
            "weights": threads.stored_weights(rt.source, rt.backend, rt.options),
            "spin": not a.no_spin,
            "context": a.context,
            "reps": a.reps,
            "near_tie_bound": bound,
            "near_tie_positions": n_pos,
        }
        if sparse is not None:
            entry.update(tokens="calibration text", sparsity=sparse)
        path = cost_curves.save_curve(key, entry)
    if a.json:
        print(json.dumps({"key": key, "path": str(path), **entry, "tree_overhead": tree}))
        return 0
    print(f"device: {cost_curves.device_description()}")
    print(f"cost curve: {key} -> {path}")
    print(f"{'k+1':>4} {'ms':>9} {'x one token':>12}")
    for n, sec in sorted(curve.items()):
        if n:
            print(f"{n:>4} {sec * 1000:>9.2f} {sec / curve[1]:>12.2f}")
    print(f"switch penalty (one-token forward after another size): {curve.get(0, 0) * 1000:.2f} ms")
    if sparse is not None:
        by = ", ".join(f"T={T} {r['chunk_sparsity']:.2f}" for T, r in sparse["by_chunk"].items())
        print(f"chunk sparsity while timing (calibration text): {by}")
    print(
        f"near-tie bound: {bound:.4g} logits (largest top-2 gap change, batched vs one-token, "
        f"{n_pos} positions)"
    )
    if tree is not None:
        from edgespec.speculative.session import TREE_OVERHEAD_LIMIT

        use = "drafted" if tree <= TREE_OVERHEAD_LIMIT else "cut to their main chain"
        print(f"tree / chain forward: {tree:.2f} (limit {TREE_OVERHEAD_LIMIT}): trees {use}")
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    actions: dict[str, Callable[[], Any]] = {
        "list": lambda: _print_models(a.json),
        "pull": lambda: print(zoo.pull(a.name, progress=not a.quiet, force=a.force)),
        "path": lambda: print(_cached_path(a.name)),
        "verify": lambda: print(f"ok {zoo.verify(a.name, progress=not a.quiet, force=True)}"),
        "rm": lambda: zoo.remove(a.name),
    }
    if a.action != "list" and not a.name:
        raise EdgespecError(
            f"'edgespec models {a.action}' needs a model name: {', '.join(zoo.ZOO)}"
        )
    actions[a.action]()
    return 0


def _cached_path(name: str) -> str:
    entry = zoo.get_entry(name)
    if not entry.path.exists():
        raise EdgespecError(f"model '{name}' is not in the cache; run: edgespec models pull {name}")
    return str(entry.path)


def _print_models(as_json: bool) -> None:
    rows = zoo.list_models()
    if as_json:
        print(json.dumps(rows))
        return
    for r in rows:
        mark = "*" if r["cached"] else " "
        print(f"{mark} {r['name']:<20} {r['size_mb']:>8} MB  {r['description']}")
    print("(* = in the cache)")


def build_parser() -> argparse.ArgumentParser:
    from edgespec.compress.cli import add_compress_args

    parser = _Parser(
        prog="edgespec", description="On-device LLM inference with speculative decoding."
    )
    parser.add_argument("--version", action="store_true", help="print the version")
    sub = parser.add_subparsers(dest="command")

    g = sub.add_parser(
        "generate",
        help="generate text from a prompt",
        description="Continue a prompt (text, -f FILE or stdin) with the chosen strategy; "
        "flags follow llama.cpp (-m, -md, -t, -c, -n, -f, --temp).",
    )
    add_prompt_args(g)
    _add_load_args(g)
    _add_gen_args(g)
    add_compress_args(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser(
        "calibrate",
        help="measure this device's verify cost curve c_verify(k)",
        description="Time forwards of 1..max-k+1 tokens of the model on this device and "
        "store the cost curve the speculative controller plans with (keyed by model, "
        "backend, threads and weights). Without one, the first speculative run probes a "
        "short curve itself.",
    )
    _add_load_args(c)
    c.add_argument("--max-k", type=int, default=16, help="measure forwards of 1..max-k+1 tokens")
    c.add_argument("--context", type=int, default=128, help="cached tokens before each forward")
    c.add_argument("--reps", type=int, default=7, help="timed repetitions per size (median)")
    c.add_argument("--json", action="store_true", help="print the stored entry as JSON")
    c.set_defaults(func=cmd_calibrate)

    m = sub.add_parser("models", help="the model zoo: list | pull | path | verify | rm")
    m.add_argument("action", choices=["list", "pull", "path", "verify", "rm"])
    m.add_argument("name", nargs="?")
    m.add_argument("--force", action="store_true", help="pull again even if cached")
    m.add_argument("--json", action="store_true", help="print JSON (list)")
    m.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    m.set_defaults(func=cmd_models)
    _add_plugin_commands(sub)
    return parser


#: modules that add their own subcommands: each defines ``add_commands(subparsers)`` and sets
#: ``func`` on its parsers (imported lazily only when listed, so keep their top-level light).
COMMAND_MODULES: tuple[str, ...] = (
    "edgespec.switch_calibration",
    "edgespec.export.cli",
    "edgespec.bench.cli",
    "edgespec.serve.cli",
    "edgespec.sparse.cli",
    "edgespec.demo.cli",
    "edgespec.compress.dolphin.cli",
)


def _add_plugin_commands(sub: Any) -> None:
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in one line (exit 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        raise EdgespecError(f"{message}; see {self.prog} --help")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        a = parser.parse_args(argv)
        if a.version:
            from edgespec import __version__

            print(__version__)
            return 0
        if not getattr(a, "func", None):
            parser.print_help()
            return 2
        return int(a.func(a))
    except EdgespecError as exc:
        print(f"edgespec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edgespec: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: still one line unless debugging
        if os.environ.get("EDGESPEC_DEBUG"):
            raise
        print(
            f"edgespec: internal error: {type(exc).__name__}: {exc} "
            "(set EDGESPEC_DEBUG=1 for the traceback and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
