"""Deterministic fakes for tests and examples (like ``numpy.testing``): no model files needed.

:class:`PrefixModel` is a language model whose logits at each position are a pseudo-random
function of the whole prefix, so batched and one-at-a-time forwards agree exactly, and
rollback bugs show up as wrong logits.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgespec.errors import EdgespecError
from edgespec.model import Model, ModelInfo, check_truncate
from edgespec.speculative.base import PROPOSERS, Proposer
from edgespec.speculative.types import Draft
from edgespec.tokenizer import Tokenizer


class PrefixModel(Model):
    """A fake LM: ``logits(prefix) = scale * N(0, 1)[V]`` seeded by a hash of the prefix.

    Args:
        vocab_size: V.
        seed: changes every distribution.
        scale: logit spread; larger means peakier distributions.
        n_ctx: cache capacity.
    """

    backend = "fake"

    def __init__(
        self, vocab_size: int = 16, seed: int = 0, scale: float = 3.0, n_ctx: int = 4096
    ) -> None:
        self.info = ModelInfo("fake", 1, 8, vocab_size, n_ctx, source=f"prefix-model:{seed}")
        self.seed, self.scale, self.n_ctx = seed, scale, n_ctx
        self.tokens: list[int] = []
        self.forward_calls = 0
        self.forward_sizes: list[int] = []

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def logits_for(self, prefix: Sequence[int]) -> np.ndarray:
        """``float32[V]``: the distribution after ``prefix``."""
        h = hashlib.blake2b(repr((self.seed, *prefix)).encode(), digest_size=8).digest()
        rng = np.random.default_rng(int.from_bytes(h, "little"))
        return (rng.standard_normal(self.info.vocab_size) * self.scale).astype(np.float32)

    def forward(self, tokens: Sequence[int], *, all_logits: bool = True) -> np.ndarray:
        if not tokens:
            raise ValueError("forward needs at least one token")
        if self.n_past + len(tokens) > self.n_ctx:
            raise EdgespecError(f"context full ({self.n_ctx} tokens)")
        self.forward_calls += 1
        self.forward_sizes.append(len(tokens))
        rows = []
        for t in tokens:
            self.tokens.append(int(t))
            rows.append(self.logits_for(self.tokens))
        out = np.stack(rows)
        return out if all_logits else out[-1:]

    def truncate(self, length: int) -> None:
        check_truncate(length, self.n_past)
        del self.tokens[length:]

    supports_tree = True

    def forward_tree(self, tokens: Sequence[int], parents: Sequence[int]) -> np.ndarray:
        base = list(self.tokens)
        paths: list[list[int]] = []
        for tok, par in zip(tokens, parents, strict=True):
            paths.append((paths[par] if par >= 0 else []) + [int(tok)])
        self.forward_calls += 1
        self.forward_sizes.append(len(tokens))
        self.tokens.extend(int(t) for t in tokens)  # occupies T slots, as a real cache would
        return np.stack([self.logits_for(base + p) for p in paths])

    def commit_tree_path(self, base: int, path: Sequence[int]) -> None:
        nodes = self.tokens[base:]
        self.tokens[base:] = [nodes[i] for i in path]

    def greedy(self, prefix: Sequence[int], n: int) -> list[int]:
        """The plain greedy continuation of ``prefix`` (n tokens), computed directly."""
        seq, out = list(prefix), []
        for _ in range(n):
            out.append(int(np.argmax(self.logits_for(seq))))
            seq.append(out[-1])
        return out


class OracleProposer(Proposer):
    """Knows the target's greedy continuation; drafts it right for ``correct`` tokens, then
    wrong (``correct=None``: always right; ``correct=0``: always wrong). Makes partial
    acceptance deterministic in losslessness tests."""

    name = "oracle"

    def __init__(self, model: PrefixModel, correct: int | None = None) -> None:
        super().__init__()
        self.model, self.correct = model, correct

    def propose(self, context: Sequence[int], k: int, rng: np.random.Generator) -> Draft:
        truth = self.model.greedy(context, k)
        j = k if self.correct is None else min(self.correct, k)
        wrong = [(t + 1) % self.model.info.vocab_size for t in truth[j:]]
        return Draft(tuple(truth[:j] + wrong), source=self.name)


class SequenceOracle(Proposer):
    """Knows a reference continuation (``prompt + output`` of plain decoding) and drafts it
    right for ``correct`` tokens, then wrong (None: always right). Once the context has left
    the reference, every draft is wrong. For losslessness tests on real models."""

    name = "seq-oracle"

    def __init__(self, reference: Sequence[int], vocab_size: int, correct: int | None) -> None:
        super().__init__()
        self.ref, self.vocab, self.correct = list(reference), vocab_size, correct

    def propose(self, context: Sequence[int], k: int, rng: np.random.Generator) -> Draft:
        n = len(context)
        on_track = list(context) == self.ref[:n]
        truth = self.ref[n : n + k] if on_track else []
        j = len(truth) if self.correct is None else min(self.correct, len(truth))
        toks = truth[:j] + [(t + 1) % self.vocab for t in truth[j:]]
        toks += [(7 * (n + i)) % self.vocab for i in range(k - len(toks))]  # filler: wrong
        return Draft(tuple(toks[:k]), source=self.name)


class FailingProposer(Proposer):
    """Raises :class:`DraftFailure` on the ``fail_at``-th call (a crashing draft model)."""

    name = "failing"

    def __init__(self, model: PrefixModel, fail_at: int = 3) -> None:
        super().__init__()
        self.inner = OracleProposer(model)
        self.calls, self.fail_at = 0, fail_at

    def propose(self, context: Sequence[int], k: int, rng: np.random.Generator) -> Draft:
        from edgespec.speculative.proposers.draft_model import DraftFailure

        self.calls += 1
        if self.calls >= self.fail_at:
            raise DraftFailure("draft model failed: simulated crash")
        return self.inner.propose(context, k, rng)


class CharTokenizer(Tokenizer):
    """Token i is the character ``alphabet[i]``; id ``eos`` ends generation."""

    def __init__(self, alphabet: str = "abcdefghijklmnop", eos: int | None = None) -> None:
        self.alphabet = alphabet
        self.vocab_size = len(alphabet)
        self.bos_id = None
        self.eos_ids = frozenset() if eos is None else frozenset({eos})
        self.chat_template = None

    def encode(self, text: str) -> list[int]:
        return [self.alphabet.index(c) for c in text]

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return "".join(self.alphabet[i] for i in ids).encode()

    def vocab(self) -> list[str]:
        return list(self.alphabet)


class ScriptedModel(PrefixModel):
    """A fake LM whose next token and uncertainty are scripted by position.

    ``script(prefix) -> (token, spread)``: the argmax token after ``prefix`` and a logit
    spread. Logits are ``spread`` at ``token`` and 0 elsewhere, so the entropy is known in
    closed form: with ``a = exp(spread)`` and V tokens, ``p = a / (a + V - 1)`` at the top and
    ``H = -p ln p - (1 - p) ln((1 - p) / (V - 1))``; spread 0 is uniform (``ln V``), a large
    spread is nearly certain (H near 0). Records ``forward_sizes`` like :class:`PrefixModel`.
    """

    def __init__(
        self,
        script: Callable[[list[int]], tuple[int, float]],
        vocab_size: int = 16,
        n_ctx: int = 4096,
    ) -> None:
        super().__init__(vocab_size=vocab_size, n_ctx=n_ctx)
        self.info = ModelInfo("fake", 1, 8, vocab_size, n_ctx, source="scripted")
        self.script = script

    def logits_for(self, prefix: Sequence[int]) -> np.ndarray:
        token, spread = self.script(list(prefix))
        row = np.zeros(self.info.vocab_size, dtype=np.float32)
        row[token] = spread
        return row


def serve_proposer(monkeypatch: Any, name: str, factory: Callable[[Any], Proposer]) -> None:
    """For one test: make the proposer registered as ``name`` build ``factory(runtime)``
    (``monkeypatch`` is pytest's fixture, so the registry is restored afterwards)."""

    class Served(Proposer):
        def propose(self, context: Sequence[int], k: int, rng: np.random.Generator) -> Draft:
            raise NotImplementedError  # never instantiated: create returns the factory's

        @classmethod
        def create(cls, runtime: Any, config: Any) -> Proposer:
            return factory(runtime)

    Served.name = name
    monkeypatch.setitem(PROPOSERS._loaded, name, Served)


def add_byte_tokenizer(folder: Path) -> None:
    """Write a 256-token byte-level BPE ``tokenizer.json`` (255 bytes + one merge) into
    ``folder``: the tokenizer of the tests' tiny random models (needs ``tokenizers``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())[:255] + ["Ġt"]
    vocab = {c: i for i, c in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "t")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(folder / "tokenizer.json"))


def fake_runtime(alphabet: str, *, n_ctx: int = 512, progress: bool = True) -> Any:
    """A :class:`~edgespec.runtime.Runtime` over a :class:`PrefixModel` whose vocabulary is
    ``alphabet`` (one character a token): what bench and server tests load instead of a model.
    """
    from edgespec.runtime import Runtime
    from edgespec.runtimes.base import LoadOptions, ModelSource

    return Runtime(
        tokenizer=CharTokenizer(alphabet),
        target=PrefixModel(vocab_size=len(alphabet), scale=3.0),
        backend="fake",
        source=ModelSource("gguf", __file__, "fake"),  # type: ignore[arg-type]
        options=LoadOptions(n_ctx=n_ctx, progress=progress),
    )


class FakeBaseline:
    """The bench's baseline for a :func:`fake_runtime`: plain greedy decoding of the same
    fake model, computed directly (:class:`edgespec.bench.runner.Baseline`)."""

    description = "fake greedy baseline"

    def __init__(self, rt: Any) -> None:
        self.model = PrefixModel(vocab_size=rt.tokenizer.vocab_size, scale=3.0)

    def run(self, ids: list[int], n: int) -> Any:
        import time

        from edgespec.bench.runner import BaselineRun

        t = time.perf_counter()
        out = self.model.greedy(ids, n)
        return BaselineRun(out, time.perf_counter() - t + 1e-6, 1e-7)

    def close(self) -> None:
        pass


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """``LlamaModel.permute`` from llama.cpp's convert_hf_to_gguf.py, in NumPy: the row order
    llama GGUF files store ``q_proj``/``k_proj`` in (``w``: ``[rows, ...]``)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_tiny_gguf(
    hf_dir: Path,
    out: Path,
    *,
    arch: str | None = None,
    tensor_type: Callable[[str, np.ndarray], str | None] | None = None,
) -> Path:
    """Convert a tiny HF llama/qwen2 folder to a GGUF the way convert_hf_to_gguf does.

    Args:
        hf_dir: the folder (``config.json``, ``model.safetensors``).
        out: the GGUF to write.
        arch: the architecture name written (default: the folder's family); another name
            makes a file the loaders must refuse.
        tensor_type: ``(gguf tensor name, array) -> GGUF type name`` ("Q4_1") to quantize
            that tensor with ``gguf.quants.quantize``; None (or returning None): float32.
    """
    import gguf

    from edgespec.runtimes.numpy_weights import read_safetensors

    cfg = json.loads((hf_dir / "config.json").read_text())
    family = "llama" if cfg["architectures"][0] == "LlamaForCausalLM" else "qwen2"
    n_layers, n_head = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    n_kv = cfg["num_key_value_heads"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    w = gguf.GGUFWriter(out, arch or family)
    w.add_block_count(n_layers)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    for hf_name, arr in read_safetensors(hf_dir / "model.safetensors").items():
        if family == "llama" and (".q_proj." in hf_name or ".k_proj." in hf_name):
            arr = llamacpp_permute(arr, n_head if ".q_proj." in hf_name else n_kv)
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"{hf_name}: no GGUF tensor name for it in gguf's llama map")
        qtype = tensor_type(name, arr) if tensor_type is not None else None
        if qtype is not None:
            t = gguf.GGMLQuantizationType[qtype]
            w.add_tensor(name, gguf.quants.quantize(arr.astype(np.float32), t), raw_dtype=t)
        else:
            w.add_tensor(name, arr.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


#: the repository's benchmarks/ folder (scripts, not a package: :func:`load_script` loads them)
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(path: Path | str, name: str | None = None) -> Any:
    """Import the Python file ``path`` (a benchmark script, relative to :data:`BENCHMARKS`
    unless absolute) as a module named ``name`` (default: the file's stem), registered in
    ``sys.modules`` so that dataclasses and pickling find it."""
    import importlib.util
    import sys

    path = Path(path) if Path(path).is_absolute() else BENCHMARKS / path
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod
