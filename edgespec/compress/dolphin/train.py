"""Train the memory projector (``edgespec train-compressor``): torch on the CPU, frozen
compressor and target, only the projector learns.

1. :func:`~edgespec.compress.dolphin.data.make_examples` writes the examples (text).
2. The compressor (NumPy reference) reads every context once; its final hidden states are
   mean-pooled into N slots: ``features: float32[n_examples, N, d_c]`` (cached beside the
   checkpoint, keyed by the model pair and the data settings).
3. Each step takes a batch (chosen from ``(seed, step)`` alone, so a resumed run sees the
   same batches as an uninterrupted one), projects the features into memory ``[B, N, d_t]``,
   puts the prompt's and answer's token embeddings after them, runs the frozen target
   (:class:`~edgespec.compress.dolphin.torch_lm.TorchLM`) and takes the mean next-token
   cross-entropy over the answer tokens. Adam updates the projector.
4. Every ``checkpoint_every`` steps the projector, the optimizer and the loss history are
   saved atomically; ``resume`` continues from there.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgespec.compress.dolphin.data import TextExample, make_examples
from edgespec.compress.dolphin.memory import PROJECTOR_VERSION, Projector, pool_segments
from edgespec.errors import EdgespecError

#: the checkpoint folder inside ``--out``
WORK_DIR = ".train-compressor"
CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one projector training; a resumed run must use the same ones.

    Attributes:
        memory_slots: N, memory vectors per context.
        examples: training examples generated.
        steps: optimizer steps in all (a resumed run continues up to this).
        batch: examples per step.
        lr: Adam learning rate.
        hidden: the projector's hidden width (0: twice the target's width).
        sentences: sentences of filler per context (about 9 tokens each).
        seed: the data, the initial projector and the batches.
        checkpoint_every: steps between checkpoints.
    """

    memory_slots: int = 8
    examples: int = 2000
    steps: int = 300
    batch: int = 8
    lr: float = 1e-3
    hidden: int = 0
    sentences: int = 20
    seed: int = 0
    checkpoint_every: int = 10

    def validate(self) -> None:
        for name in ("memory_slots", "examples", "steps", "batch", "sentences", "checkpoint_every"):
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise EdgespecError(f"{flag} must be at least 1, not {getattr(self, name)}")
        if self.batch > self.examples:
            raise EdgespecError(f"--batch {self.batch} is larger than --examples {self.examples}")

    def data_key(self, pair: dict[str, Any]) -> str:
        """A digest of what the features depend on (pair, data, slots)."""
        keyed = {
            "pair": pair,
            "n": self.examples,
            "s": self.sentences,
            "seed": self.seed,
            "slots": self.memory_slots,
        }
        return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Tokenized:
    """One example in tokens: compressor ids of the context, target ids of prompt+answer."""

    context: list[int]
    prompt: list[int]
    answer: list[int]


def _strip_bos(ids: list[int], bos: int | None) -> list[int]:
    return ids[1:] if ids and bos is not None and ids[0] == bos else ids


def tokenize(examples: list[TextExample], ctok: Any, ttok: Any) -> list[Tokenized]:
    """Compressor ids for contexts, target ids (no BOS) for prompts and answers."""
    out = []
    for ex in examples:
        prompt = _strip_bos(ttok.encode(ex.prompt), ttok.bos_id) if ex.prompt else []
        answer = _strip_bos(ttok.encode(ex.answer), ttok.bos_id)
        out.append(Tokenized(_strip_bos(ctok.encode(ex.context), ctok.bos_id), prompt, answer))
    return out


def compute_features(
    compressor: Any, data: list[Tokenized], slots: int, *, progress: bool = True
) -> np.ndarray:
    """Pooled compressor hidden states of every context: ``float32[n, slots, d_c]``.

    Raises:
        EdgespecError: a context shorter than ``slots`` tokens.
    """
    from tqdm.auto import tqdm

    feats = []
    for ex in tqdm(data, desc="compressor features", unit="ctx", disable=not progress):
        if len(ex.context) < slots:
            raise EdgespecError(
                f"a context has {len(ex.context)} tokens, fewer than --memory-slots {slots}; "
                "use fewer slots or longer contexts (--sentences)"
            )
        compressor.reset()
        feats.append(pool_segments(compressor.hidden_states(ex.context), slots))
    compressor.reset()
    return np.stack(feats)


def batch_indices(seed: int, step: int, n: int, batch: int) -> np.ndarray:
    """The examples of ``step``: a function of (seed, step) only."""
    return np.random.default_rng([seed, step]).choice(n, size=batch, replace=False)


def make_projector(d_c: int, d_t: int, hidden: int, seed: int, dtype: Any) -> Any:
    """``Linear(d_c, hidden) -> gelu(tanh) -> Linear(hidden, d_t)``, seeded."""
    import torch

    g = torch.Generator().manual_seed(seed)
    lin1 = torch.nn.Linear(d_c, hidden, dtype=dtype)
    lin2 = torch.nn.Linear(hidden, d_t, dtype=dtype)
    with torch.no_grad():  # torch's default bounds, 1/sqrt(fan_in), from our generator
        for lin in (lin1, lin2):
            bound = 1.0 / lin.in_features**0.5
            lin.weight.uniform_(-bound, bound, generator=g)
            lin.bias.uniform_(-bound, bound, generator=g)
    net = torch.nn.Sequential(lin1, torch.nn.GELU(approximate="tanh"), lin2)
    return net


def batch_loss(lm: Any, net: Any, feats: Any, seqs: list[Tokenized]) -> Any:
    """Mean next-token cross-entropy over the answers given memory + prompt.

    Args:
        lm: the frozen target (:class:`TorchLM`).
        net: the projector.
        feats: ``[B, N, d_c]`` pooled compressor states.
        seqs: the B examples (their prompt and answer ids).
    """
    import torch

    memory = net(feats)  # [B, N, d_t]
    B, N, _ = memory.shape
    L = max(len(s.prompt) + len(s.answer) for s in seqs)
    tok = torch.zeros((B, L), dtype=torch.long)
    rows, cols, labels = [], [], []
    for b, s in enumerate(seqs):
        ids = s.prompt + s.answer
        tok[b, : len(ids)] = torch.tensor(ids)
        for j, a in enumerate(s.answer):  # answer token j is predicted one position earlier
            rows.append(b)
            cols.append(N + len(s.prompt) + j - 1)
            labels.append(a)
    x = torch.cat([memory, lm.embed(tok)], dim=1)  # right padding: causal, so harmless
    h = lm.hidden(x)
    logits = lm.logits(h[torch.tensor(rows), torch.tensor(cols)])
    return torch.nn.functional.cross_entropy(logits, torch.tensor(labels))


def to_projector(net: Any, meta: dict[str, Any]) -> Projector:
    """The NumPy :class:`Projector` of a trained ``net`` (float32)."""
    lin1, lin2 = net[0], net[2]

    def arr(t: Any) -> np.ndarray:
        return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))

    return Projector(arr(lin1.weight.T), arr(lin1.bias), arr(lin2.weight.T), arr(lin2.bias), meta)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch

    from edgespec.fileutil import atomic_path

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, pair: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    """A checkpoint's state, checked against the model pair and the settings.

    Raises:
        EdgespecError: no checkpoint, one for another model pair, or other settings.
    """
    import torch

    if not path.is_file():
        raise EdgespecError(f"--resume: no checkpoint at '{path}'; run without --resume first")
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise EdgespecError(f"checkpoint '{path}' is unreadable ({exc}); delete it") from None
    if state.get("pair") != pair:
        was = state.get("pair", {})
        raise EdgespecError(
            f"checkpoint '{path}' is for compressor {was.get('compressor', {}).get('name')} and "
            f"target {was.get('target', {}).get('name')}, not this pair; train into another "
            "--out folder"
        )
    keep = {k: v for k, v in asdict(cfg).items() if k != "steps"}
    old = {k: v for k, v in state.get("config", {}).items() if k != "steps"}
    if old != keep:
        diff = ", ".join(f"{k} {old.get(k)} -> {v}" for k, v in keep.items() if old.get(k) != v)
        raise EdgespecError(f"--resume with other settings ({diff}); use the same ones")
    return state


def train(
    target: Any,
    data: list[Tokenized],
    features: np.ndarray,
    cfg: TrainConfig,
    pair: dict[str, Any],
    checkpoint: Path,
    *,
    resume: bool = False,
    n_threads: int | None = None,
    progress: bool = True,
) -> tuple[Projector, list[float]]:
    """Train (or continue training) the projector; returns it and the loss of every step.

    Args:
        target: the target as a NumpyModel (its weights are shared with torch, frozen).
        data: the tokenized examples.
        features: ``[n, N, d_c]`` from :func:`compute_features`.
        cfg: the settings.
        pair: ``{"compressor": {name, sha256}, "target": {name, sha256}}``.
        checkpoint: the checkpoint file.
        resume: continue from ``checkpoint``.
        n_threads: torch's intra-op threads for this call (None: torch's default). On a
            shared 2-core machine 1 thread was 12x faster than 2 for the tiny test model
            (spinning OpenMP workers).
    """
    import torch

    before = torch.get_num_threads()
    if n_threads:
        torch.set_num_threads(n_threads)
    try:
        return _train(target, data, features, cfg, pair, checkpoint, resume, progress)
    finally:
        torch.set_num_threads(before)


def _train(
    target: Any,
    data: list[Tokenized],
    features: np.ndarray,
    cfg: TrainConfig,
    pair: dict[str, Any],
    checkpoint: Path,
    resume: bool,
    progress: bool,
) -> tuple[Projector, list[float]]:
    import torch
    from tqdm.auto import tqdm

    from edgespec.compress.dolphin.torch_lm import TorchLM

    lm = TorchLM(target)
    d_c, d_t = int(features.shape[2]), lm.n_embd
    hidden = cfg.hidden or 2 * d_t
    net = make_projector(d_c, d_t, hidden, cfg.seed, lm.dtype)
    feats_all = torch.from_numpy(features).to(lm.dtype)
    with torch.no_grad():  # scale the output to the target's embedding RMS (data-dependent)
        sample = feats_all[: min(64, len(data))].reshape(-1, d_c)
        emb = lm.embed(torch.arange(min(4096, target.hp.n_vocab))[None])[0]
        ratio = emb.pow(2).mean().sqrt() / net(sample).pow(2).mean().sqrt()
        net[2].weight.mul_(ratio)
        net[2].bias.mul_(ratio)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    losses: list[float] = []
    start = 0
    if resume:
        state = load_checkpoint(checkpoint, pair, cfg)
        net.load_state_dict(state["projector"])
        opt.load_state_dict(state["optim"])
        losses, start = list(state["losses"]), int(state["step"])

    def save(step: int) -> None:
        _save_checkpoint(
            checkpoint,
            {
                "step": step,
                "projector": net.state_dict(),
                "optim": opt.state_dict(),
                "losses": losses,
                "pair": pair,
                "config": asdict(cfg),
            },
        )

    bar = tqdm(
        total=cfg.steps, initial=start, desc="train projector", unit="step", disable=not progress
    )
    for step in range(start, cfg.steps):
        idx = batch_indices(cfg.seed, step, len(data), cfg.batch)
        loss = batch_loss(lm, net, feats_all[idx], [data[i] for i in idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save(step + 1)
    bar.close()
    meta = {
        "version": PROJECTOR_VERSION,
        "memory_slots": cfg.memory_slots,
        "pooling": "mean over contiguous segments of the final-normed last hidden states",
        **pair,
        "d_c": d_c,
        "d_t": d_t,
        "hidden": hidden,
        "steps": cfg.steps,
        "examples": cfg.examples,
        "batch": cfg.batch,
        "final_loss": float(np.mean(losses[-10:])) if losses else None,
        "first_loss": losses[0] if losses else None,
    }
    return to_projector(net, meta), losses


def examples_for(cfg: TrainConfig, ctok: Any, ttok: Any) -> list[Tokenized]:
    """The tokenized training examples of ``cfg``."""
    return tokenize(make_examples(cfg.examples, cfg.sentences, cfg.seed), ctok, ttok)
