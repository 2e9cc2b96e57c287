"""KV-cache types: memory, greedy agreement and perplexity, side by side in one run.

    python benchmarks/kv_cache.py [-m smollm2-135m] [-c 4096] [-n 64] [-t N]
        [--workloads code summarize] [--per-workload N]
    python benchmarks/kv_cache.py --ppl [-m smollm2-135m] [--tokens 1024] [--mem-ctx 8192]
        [--backends numpy llamacpp] [--text FILE | --text-workload long/multifact] [-t N]
        [--kv-types f32 q8 q4 gear4] [--gear RANK,SPARSITY ...]

Agreement (default): loads the model on llama.cpp once per ``--kv-cache`` type (f32, f16,
q8, q4), decodes every prompt greedily for ``-n`` tokens, and prints the cache's size and
the share of tokens equal to the f16 (llama.cpp default) run, position by position, up to
the first difference counted as a miss for the rest.

``--ppl``: perplexity of held text (the first ``--tokens`` tokens of ``--text`` or of the
longest prompt of ``--text-workload``) under every KV type of each backend (numpy: f32, q8,
q4, gear4 on one set of weights; llama.cpp: f32, f16, q8, q4), fed as the engine feeds it
(``edgespec.quality.mean_nll``: chunks of 64 tokens over the growing cache, so later chunks
attend to what the cache holds of the earlier ones), and the KV memory against f32: at the
measured context from the arrays the store holds (numpy; checked equal to its layout), and
at ``--mem-ctx`` from the layout alone. ``--gear 0,0.02 4,0`` adds numpy rows of GEAR
variants (rank r, outlier share s; the default gear4 is 4,0.02) to see what each part buys.
``--kv-types`` picks the numpy types (f32 first: the reference). A bar counts the tokens
scored. At 8k, ``--tokens 8184`` fills the model's 8192 positions (the cache holds
``tokens + 8``). docs/compression.md reports the tables.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import edgespec
from edgespec.bench.workloads import load_workloads
from edgespec.quality import mean_nll

NUMPY_TYPES = ("f32", "q8", "q4", "gear4")
LLAMACPP_TYPES = ("f32", "f16", "q8", "q4")


def agreement(a: argparse.Namespace) -> None:
    prompts = load_workloads(a.workloads, a.per_workload)
    outputs: dict[str, list[list[int]]] = {}
    sizes: dict[str, float] = {}
    for kv in ("f16", "f32", "q8", "q4"):
        rt = edgespec.load(
            a.model,
            backend="llamacpp",
            n_ctx=a.ctx_size,
            n_threads=a.threads,
            kv_cache=kv,
            progress=False,
        )
        with rt:
            outs = []
            for p in prompts:
                res = rt.generate(
                    p.prompt, chat=p.chat, max_new_tokens=a.max_new_tokens, ignore_eos=True
                )
                outs.append(res.token_ids)
            outputs[kv] = outs
            sizes[kv] = res.stats.kv_cache_mb
    ref = outputs["f16"]
    print(f"{a.model}, n_ctx {a.ctx_size}, {len(prompts)} prompts x {a.max_new_tokens} tokens")
    print(f"{'kv':>4} {'MB':>8} {'x f16':>6} {'agree f16':>10} {'prefix f16':>11}")
    for kv, outs in outputs.items():
        same = sum(
            x == y for o, r in zip(outs, ref, strict=True) for x, y in zip(o, r, strict=True)
        )
        total = sum(len(r) for r in ref)
        prefix = 0
        for o, r in zip(outs, ref, strict=True):
            k = next((i for i, (x, y) in enumerate(zip(o, r, strict=True)) if x != y), len(r))
            prefix += k
        print(
            f"{kv:>4} {sizes[kv]:>8.1f} {sizes[kv] / sizes['f16']:>6.2f} "
            f"{same / total:>10.3f} {prefix / total:>11.3f}"
        )


def held_text(a: argparse.Namespace) -> str:
    if a.text:
        return Path(a.text).read_text()
    prompts = load_workloads([a.text_workload], None)
    return max((p.prompt for p in prompts), key=len)


def gear_variants(specs: list[str]) -> list[str]:
    """Register a GEAR store per ``RANK,SPARSITY`` spec; their KV-type names."""
    from edgespec.kvcache import KV_STORES
    from edgespec.kvcache.quant import GearConfig
    from edgespec.kvcache.store import GearStore

    names = []
    for spec in specs:
        r, s = spec.split(",")
        name = f"gear4:r={int(r)},s={float(s):g}"
        cfg = GearConfig(rank=int(r), sparsity=float(s))
        KV_STORES.register(name)(type("GearVariant", (GearStore,), {"config": cfg, "name": name}))
        names.append(name)
    return names


class _Counted:
    """A model whose forwards advance a tqdm bar by their tokens (what ``mean_nll`` feeds)."""

    def __init__(self, model: Any, bar: Any) -> None:
        self.model, self.bar = model, bar

    def reset(self) -> None:
        self.model.reset()

    def forward(self, ids: list[int], all_logits: bool = False) -> np.ndarray:
        out = self.model.forward(ids, all_logits=all_logits)
        self.bar.update(len(ids))
        return out


def scored_nll(model: Any, ids: list[int], label: str) -> float:
    """``mean_nll`` of ``ids[1:]`` after ``ids[0]``, with a bar of the tokens fed."""
    with tqdm(total=len(ids), desc=label, unit="tok", mininterval=10) as bar:
        return mean_nll(_Counted(model, bar), ids[:1], ids[1:])  # type: ignore[arg-type]


def numpy_rows(a: argparse.Namespace, ids: list[int]) -> list[dict[str, Any]]:
    """Each numpy KV type on one set of weights: perplexity and bytes held."""
    from edgespec.kvcache import KV_STORES
    from edgespec.runtimes.numpy_ref import NumpyModel

    rt = edgespec.load(a.model, backend="numpy", n_ctx=16, n_threads=a.threads, progress=True)
    base: NumpyModel = rt.target  # type: ignore[assignment]
    hp, n_ctx = base.hp, len(ids) + 8
    f32_8k = KV_STORES.get("f32").layout_bytes(
        hp.n_layers, hp.n_head_kv, a.mem_ctx, hp.head_dim, 4, NumpyModel.max_chunk
    )
    rows = []
    for kv in [*a.kv_types, *gear_variants(a.gear)]:
        info = replace(base.info, extra=dict(base.info.extra))
        m = NumpyModel(hp, base.w, info, n_ctx, np.float32, base.n_threads, kv)
        assert m.kv_store is not None
        layout = type(m.kv_store).layout_bytes(
            hp.n_layers, hp.n_head_kv, n_ctx, hp.head_dim, 4, NumpyModel.max_chunk
        )
        assert m.kv_store.nbytes == layout, (kv, m.kv_store.nbytes, layout)
        t = time.perf_counter()
        nll = scored_nll(m, ids, f"numpy {kv}")
        at_8k = type(m.kv_store).layout_bytes(
            hp.n_layers, hp.n_head_kv, a.mem_ctx, hp.head_dim, 4, NumpyModel.max_chunk
        )
        rows.append(
            dict(
                backend="numpy",
                kv=kv,
                held=m.kv_store.nbytes,
                f32_held=info.extra["kv_cache_f32_bytes"],
                at=at_8k,
                f32_at=f32_8k,
                nll=nll,
                s=time.perf_counter() - t,
            )
        )
        print(f"  numpy {kv}: ppl {np.exp(nll):.3f} ({rows[-1]['s']:.0f} s)", flush=True)
    rt.close()
    return rows


def llamacpp_rows(a: argparse.Namespace, ids: list[int]) -> list[dict[str, Any]]:
    """Each llama.cpp KV type (its own load): perplexity and the cache's size."""
    from edgespec.runtimes.llamacpp import KV_TYPES

    rows = []
    for kv in LLAMACPP_TYPES:
        n_ctx = len(ids) + 8
        rt = edgespec.load(
            a.model, backend="llamacpp", n_ctx=n_ctx, n_threads=a.threads, kv_cache=kv,
            progress=False,
        )  # fmt: skip
        with rt:
            t = time.perf_counter()
            nll = scored_nll(rt.target, ids, f"llamacpp {kv}")
            extra = rt.target.info.extra
            per = KV_TYPES[kv][1] / 4  # bytes per value against f32's 4, at any context
            rows.append(
                dict(
                    backend="llamacpp",
                    kv=kv,
                    held=extra["kv_cache_bytes"],
                    f32_held=extra["kv_cache_f16_bytes"] * 2,
                    at=per,
                    f32_at=1.0,
                    nll=nll,
                    s=time.perf_counter() - t,
                )
            )
        print(f"  llamacpp {kv}: ppl {np.exp(nll):.3f} ({rows[-1]['s']:.0f} s)", flush=True)
    return rows


def perplexity(a: argparse.Namespace) -> None:
    from edgespec.sources import resolve
    from edgespec.tokenizer import load_tokenizer

    ids = load_tokenizer(resolve(a.model)).encode(held_text(a))[: a.tokens]
    if len(ids) < a.tokens:
        print(f"note: the text has only {len(ids)} tokens")
    runners = {"numpy": numpy_rows, "llamacpp": llamacpp_rows}
    rows = [r for b in a.backends for r in runners[b](a, ids)]
    src = a.text or f"the longest prompt of {a.text_workload}"
    print(f"\n{a.model}, {len(ids)} tokens of {src}; memory at {len(ids) + 8} and {a.mem_ctx}")
    print(
        f"{'backend':>8} {'kv':>16} {'MB held':>8} {'x f32':>6} {f'x f32@{a.mem_ctx}':>11} "
        f"{'ppl':>8} {'d ppl':>8} {'s':>6}"
    )
    for b in a.backends:
        ref = next(r for r in rows if r["backend"] == b and r["kv"] == "f32")
        for r in (r for r in rows if r["backend"] == b):
            d = np.exp(r["nll"]) / np.exp(ref["nll"]) - 1
            print(
                f"{b:>8} {r['kv']:>16} {r['held'] / 1e6:>8.2f} {r['held'] / r['f32_held']:>6.3f} "
                f"{r['at'] / r['f32_at']:>11.3f} {np.exp(r['nll']):>8.3f} {d:>+8.2%} "
                f"{r['s']:>6.0f}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default="smollm2-135m")
    ap.add_argument("-c", "--ctx-size", type=int, default=4096)
    ap.add_argument("-n", "--max-new-tokens", type=int, default=64)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--workloads", nargs="+", default=["code", "summarize"])
    ap.add_argument("--per-workload", type=int, default=None, help="first N prompts of each")
    ap.add_argument("--ppl", action="store_true", help="perplexity and memory per KV type")
    ap.add_argument("--tokens", type=int, default=1024, help="--ppl: tokens of held text")
    ap.add_argument("--mem-ctx", type=int, default=8192, help="--ppl: context of the x f32 column")
    ap.add_argument("--backends", nargs="+", default=["numpy", "llamacpp"],
                    choices=["numpy", "llamacpp"])  # fmt: skip
    ap.add_argument("--text", default=None, help="--ppl: a text file to score")
    ap.add_argument("--text-workload", default="long/multifact")
    ap.add_argument("--kv-types", nargs="+", default=list(NUMPY_TYPES), choices=NUMPY_TYPES,
                    help="--ppl: numpy KV types, f32 first")  # fmt: skip
    ap.add_argument("--gear", nargs="*", default=[], metavar="R,S", help="GEAR variants (numpy)")
    a = ap.parse_args()
    if a.kv_types[0] != "f32":
        ap.error("--kv-types must start with f32, the reference of the 'ppl vs f32' column")
    perplexity(a) if a.ppl else agreement(a)


if __name__ == "__main__":
    main()
