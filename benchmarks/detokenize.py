"""What turning tokens into text costs per generated token: the whole output decoded again
for every token (the engine before ``Tokenizer.stream``) against the incremental stream.

Part 1, the tokenizer alone: for each model's tokenizer, the ids of ``--tokens`` tokens of
English and code text (this repository's docs and sources) pushed one at a time; the ms a
token each way (``decode_bytes`` now joins cached pieces too, so the "whole decode" column
calls llama-cpp-python's ``detokenize``, as the engine did), over the tokens up to 128,
512, 2048 (medians of ``--reps`` passes, the two ways interleaved).

Part 2, ``--generate``: whole generations of ``--tokens`` tokens (``ignore_eos``, plain
greedy decoding) of one model on one backend, in one process, the engine's stream against a
stream that decodes the whole output for every token; tok/s, medians of ``--reps`` runs,
interleaved.

    .venv/bin/python benchmarks/detokenize.py --models smollm2-135m qwen2.5-coder-1.5b
    .venv/bin/python benchmarks/detokenize.py --models smollm2-135m --generate tvm \
        --weights gguf-q8act --tokens 2048
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from edgespec.tokenizer import TextStream, Tokenizer

ROOT = Path(__file__).resolve().parent.parent
#: output lengths the first table reports
CUTS = (128, 512, 2048)


class WholeDecode(TextStream):
    """The engine before the stream: the whole output decoded for every token, by
    llama-cpp-python's ``detokenize`` for a GGUF vocabulary (what ``decode_bytes`` called
    then), else by the tokenizer's ``decode``."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._ids: list[int] = []
        llm = getattr(tokenizer, "_llm", None)
        if llm is None:
            self._decode = tokenizer.decode
        else:
            self._decode = lambda ids: bytes(llm.detokenize(ids, special=True)).decode(
                "utf-8", errors="replace"
            )

    def push(self, token: int) -> str:
        self._ids.append(token)
        self.text = self._decode(self._ids)
        return self.text


def corpus_ids(tok: Tokenizer, n: int) -> list[int]:
    """``n`` token ids of the repository's docs and Python sources (no BOS)."""
    parts = [p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))]
    parts += [p.read_text() for p in sorted((ROOT / "edgespec").glob("*.py"))]
    ids = tok.encode("\n".join(parts))
    ids = ids[1:] if ids and ids[0] == tok.bos_id else ids
    if len(ids) < n:
        raise SystemExit(f"the corpus has only {len(ids)} tokens; ask for fewer --tokens")
    return ids[:n]


def per_token_ms(stream: TextStream, ids: list[int]) -> list[float]:
    """The ms of each push."""
    out = []
    for t in ids:
        t0 = time.perf_counter()
        stream.push(t)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def tokenizer_table(models: list[str], n: int, reps: int) -> None:
    from edgespec import zoo
    from edgespec.runtimes.base import ModelSource
    from edgespec.tokenizer import load_tokenizer

    cuts = [c for c in CUTS if c <= n]
    notes: list[str] = []
    print(f"ms a token to update the output text, medians of {reps} passes\n")
    print("| tokenizer | tokens | whole decode | stream | whole / stream |\n|---|---|---|---|---|")
    for name in models:
        tok = load_tokenizer(ModelSource("gguf", zoo.pull(name, progress=False), name))
        ids = corpus_ids(tok, n)
        runs: dict[str, list[list[float]]] = {"whole": [], "stream": []}
        for _ in range(reps):
            runs["whole"].append(per_token_ms(WholeDecode(tok), ids))
            runs["stream"].append(per_token_ms(tok.stream(), ids))
        whole, stream = WholeDecode(tok), tok.stream()
        for t in ids:
            whole.push(t)
            stream.push(t)
        assert stream.text == tok.decode(ids), "the stream's text is not the decode"
        lost = len(stream.text) - len(whole.text)
        if lost:
            notes.append(
                f"{name}: the whole-decode text is {lost} characters shorter "
                "(llama-cpp-python's detokenize dropped pieces longer than 32 bytes)"
            )
        for c in cuts:
            w, s = (statistics.median(sum(r[:c]) / c for r in runs[k]) for k in runs)
            print(f"| {name} ({type(tok).__name__}) | {c} | {w:.4f} | {s:.4f} | {w / s:.0f}x |")
    for note in notes:
        print(f"\n{note}")


def generate_table(model: str, backend: str, weights: str, n: int, reps: int) -> None:
    import edgespec

    rt = edgespec.load(model, backend=backend, weights=weights, n_ctx=n + 64, progress=False)
    tok = rt.tokenizer
    stream_of = type(tok).stream
    prompt = "Write a long story about a lighthouse keeper."

    def run(whole: bool) -> tuple[float, str]:
        # (the texts may differ: the whole decode drops pieces longer than 32 bytes)
        type(tok).stream = (lambda self: WholeDecode(self)) if whole else stream_of  # type: ignore[method-assign]
        try:
            res = rt.generate(prompt, max_new_tokens=n, ignore_eos=True)
        finally:
            type(tok).stream = stream_of  # type: ignore[method-assign]
        return res.stats.tokens_per_s, res.text

    run(False)  # warm-up
    speeds: dict[str, list[float]] = {"whole decode": [], "stream": []}
    for _ in range(reps):
        w, _ = run(True)
        s, _ = run(False)
        speeds["whole decode"].append(w)
        speeds["stream"].append(s)
    print(
        f"\n{model} on {backend} (--weights {weights}), {n} new tokens, plain greedy, "
        f"medians of {reps} runs\n"
    )
    print("| detokenization | decode tok/s |\n|---|---|")
    for k, v in speeds.items():
        print(f"| {k} | {statistics.median(v):.1f} |")
    ratio = statistics.median(
        s / w for s, w in zip(speeds["stream"], speeds["whole decode"], strict=True)
    )
    print(f"\nstream / whole decode, per run pair: {ratio:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["smollm2-135m"])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--generate", metavar="BACKEND", help="also time whole generations")
    p.add_argument("--weights", default="auto", help="the backend's --weights for --generate")
    a = p.parse_args()
    print(f"`benchmarks/detokenize.py {' '.join(_argv())}`\n")
    tokenizer_table(a.models, a.tokens, a.reps)
    if a.generate:
        generate_table(a.models[0], a.generate, a.weights, a.tokens, a.reps)


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


if __name__ == "__main__":
    main()
