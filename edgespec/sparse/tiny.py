"""Tiny random BlockFFN models in the authors' exact HF format, for tests and benchmarks.

The published format has no router bias (``router_proj`` is ``bias=False``), so the target
token-level sparsity is reached through a *bias channel*: hidden dimension 0 of the residual
stream holds a constant (the embeddings' column 0; no attention or FFN output writes it), so
``h[:, 0]`` after the pre-FFN RMSNorm is nearly constant, and each router row's weight on
it acts as a per-block offset. The offsets are fitted layer by layer on random tokens so
that every block is active for a fraction ``1 - target_sparsity`` of tokens.

With :class:`ChunkLocalRouter` the routers are *built* to have chunk-level sparsity (what
BlockFFN trains for; see that class): a segment-level context signal that attention carries
into the residual stream, which the routers mostly read, so consecutive tokens select
overlapping blocks. The format and the modeling are unchanged: only the weights differ.

Written with NumPy only: safetensors is an 8-byte header length, a JSON header and raw
little-endian data.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgespec.fileutil import atomic_dir
from edgespec.sparse.blockffn import BlockFFNConfig, build_weights, load_blockffn

_ST_TAGS = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64"}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write ``{name: float32/float64 array}`` as one ``.safetensors`` file."""
    header: dict[str, Any] = {}
    offset = 0
    blobs = []
    for name, arr in tensors.items():
        a = np.ascontiguousarray(arr)
        blob = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": _ST_TAGS[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)


def tiny_config(**overrides: Any) -> dict[str, Any]:
    """The HF config.json of a tiny BlockFFN model (MiniCPM keys), with ``overrides``."""
    cfg: dict[str, Any] = {
        "architectures": ["MiniCPMForCausalLM"],
        "model_type": "minicpm",
        "vocab_size": 256,
        "hidden_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "attention_type": "vanilla",
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "q_lora_rank": 32,
        "kv_lora_rank": 24,
        "ffn_type": "block",
        "ffn_gated": False,
        "hidden_act": "silu",
        "router_act": "relu",
        "expert_size": 8,
        "num_experts": 32,
        "norm_after_router": "rms",
        "norm_scale": 1.0,
        "block_implementation": "torch",
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "rope_theta": 10000.0,
        "rope_scaling": None,
        "scale_emb": 1.0,
        "dim_model_base": 64,
        "scale_depth": 1.4,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    cfg.update(overrides)
    return cfg


def _random_tensors(cfg: BlockFFNConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random weights under HF names; dimension 0 of the residual is the bias channel."""
    D, V, E, S = cfg.hidden_size, cfg.vocab_size, cfg.num_experts, cfg.expert_size
    H = cfg.num_attention_heads
    KV, dk, dv = cfg.head_dims

    def g(*shape: int, std: float | None = None) -> np.ndarray:
        fan_in = shape[-1]
        return rng.normal(0.0, std if std is not None else fan_in**-0.5, shape)

    embed = g(V, D, std=1.0)
    embed[:, 0] = 3.0  # the bias channel
    t: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": embed,
        "model.norm.weight": 1.0 + 0.1 * g(D, std=1.0),
        "lm_head.weight": g(V, D, std=4.0 * D**-0.5),
    }
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1.0 + 0.1 * g(D, std=1.0)
        t[p + "post_attention_layernorm.weight"] = np.ones(D)
        if cfg.attention_type == "mla":
            nope, rope = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim
            qa, kva = cfg.q_lora_rank, cfg.kv_lora_rank
            t[p + "self_attn.q_a_proj.weight"] = g(qa, D)
            t[p + "self_attn.q_a_layernorm.weight"] = np.ones(qa)
            t[p + "self_attn.q_b_proj.weight"] = g(H * dk, qa)
            t[p + "self_attn.kv_a_proj_with_mqa.weight"] = g(kva + rope, D)
            t[p + "self_attn.kv_a_layernorm.weight"] = np.ones(kva)
            t[p + "self_attn.kv_b_proj.weight"] = g(H * (nope + dv), kva)
        else:
            t[p + "self_attn.q_proj.weight"] = g(H * dk, D)
            t[p + "self_attn.k_proj.weight"] = g(KV * dk, D)
            t[p + "self_attn.v_proj.weight"] = g(KV * dv, D)
        wo = g(D, H * dv)
        wo[0] = 0.0  # nothing writes the bias channel
        t[p + "self_attn.o_proj.weight"] = wo
        router = g(E, D)
        router[:, 0] = 0.0  # offsets are fitted later
        t[p + "mlp.router_proj.weight"] = router
        if cfg.norm_after_router == "rms":
            t[p + "mlp.router_norm.weight"] = np.ones(E)
        up, down = g(E, S, D), g(E, D, S, std=(E * S) ** -0.5)
        down[:, 0, :] = 0.0
        if cfg.ffn_type == "block":
            t[p + "mlp.up_proj"], t[p + "mlp.down_proj"] = up, down
        else:
            t[p + "mlp.up_proj"] = up.reshape(E * S, D)
            t[p + "mlp.down_proj"] = down.transpose(1, 0, 2).reshape(D, E * S)
    return t


@dataclass(frozen=True)
class ChunkLocalRouter:
    """How :func:`make_tiny_blockffn` builds routers that have chunk-level sparsity.

    A trained BlockFFN router reads context that changes slowly along the text, so
    consecutive tokens share blocks. These weights build such a context signal by hand,
    in the published format and modeling (vanilla attention; channels are residual dims):

    - **markers**: a random ``marker_rate`` of the vocabulary and BOS carry ``MARKER`` in
      channel 1 of their embedding, every other token ``MARKER / 2``; text is cut into *segments*
      that start at a marker. Every embedding's remaining channels have unit RMS, so the
      normed channels 0 and 1 are the same for all tokens of a kind.
    - **segment head**: layer 0, attention head 0 attends to the most recent markers. Its
      query is the bias channel (channel 0), its key the marker channel, both on the one
      rope pair of frequency ``w`` (the largest with ``w * max_position_embeddings <= pi``),
      so its score is ``A_j * cos(w * (i - j))``, monotone in the distance: for markers
      ``A = 1 / (window * w)^2``, a Gaussian recency window of ``window`` tokens. A
      non-marker's ``A_j`` is about half, so it scores below any marker within about
      ``max_position_embeddings / 3`` tokens (by up to ``A / 2``, thousands of nats):
      non-markers count only before the first marker (the head then follows the last few
      tokens, like a random router). The value is the usual random projection: the head
      outputs the value of the segment's marker, constant until the next one.
    - **topic channels** ``2 .. 2+dv-1`` of the residual hold that output (layer 0's
      ``o_proj`` maps head 0 onto them one to one); nothing else writes channels
      ``0 .. dv+1`` (embeddings only 0 and 1; no attention or FFN output).
    - **routers**: every layer's ``router_proj`` row e is a random direction over the topic
      channels plus ``fast_mix`` times a random direction over the other channels (the
      token's own part), and the bias-channel offset fitted to the target token sparsity.

    So a block is chosen mostly by the segment: tokens of one segment share their blocks,
    and a chunk's union grows only where it crosses a marker (about ``marker_rate * T``
    times per chunk of T). This is a built router, not a trained one: it exercises the
    runtime's exploitation of chunk locality, not BlockFFN's training.

    Attributes:
        marker_rate: fraction of the vocabulary that starts a segment (mean segment length
            ``1 / marker_rate`` tokens on uniformly random text).
        window: the segment head's Gaussian recency window, tokens.
        fast_mix: weight of the token's own part in the router against the segment's
            (0: blocks depend on the segment only).
        gap_slack: each block's threshold goes into the widest gap of its scores within
            ``target_sparsity +- gap_slack`` of the calibration tokens (the scores come in
            one lump per segment; a threshold inside a lump would flip the block with the
            token's own part), so the token sparsity lands within that much of the target.
    """

    marker_rate: float = 1 / 16
    window: float = 2.0
    fast_mix: float = 0.03
    gap_slack: float = 0.05

    #: channel 1 of a marker token's embedding
    MARKER = 3.0


def _chunk_local(
    cfg: BlockFFNConfig,
    t: dict[str, np.ndarray],
    rng: np.random.Generator,
    spec: ChunkLocalRouter,
    bos: int | None,
) -> None:
    """Rewrite random tensors ``t`` into the :class:`ChunkLocalRouter` construction
    (``bos``: the BOS token id, made a marker)."""
    if cfg.attention_type != "vanilla":
        raise ValueError("chunk-local routers are built for vanilla attention only")
    D, V, H = cfg.hidden_size, cfg.vocab_size, cfg.num_attention_heads
    KV, dk, dv = cfg.head_dims
    topic = np.arange(2, 2 + dv)
    if topic[-1] >= D - 1:
        raise ValueError(f"hidden_size {D} leaves no room for {dv} topic channels")
    embed = t["model.embed_tokens.weight"]
    embed[:, 1 : 2 + dv] = 0.0
    rest = embed[:, 2 + dv :]
    rest *= math.sqrt(rest.shape[1]) / np.linalg.norm(rest, axis=1, keepdims=True)
    markers = rng.random(V) < spec.marker_rate
    if bos is not None:
        markers[bos] = True  # text that starts with BOS starts a segment
    embed[:, 1] = spec.MARKER / 2  # every token a weak marker: the fallback before any
    embed[markers, 1] = spec.MARKER
    half = dk // 2
    inv = cfg.rope_theta ** (-np.arange(half) * 2.0 / dk)
    ok = np.flatnonzero(inv * cfg.max_position_embeddings <= math.pi)
    if ok.size == 0:
        raise ValueError("no rope frequency is slow enough for max_position_embeddings")
    r = int(ok[0])
    A = 1.0 / (spec.window * inv[r]) ** 2
    # every row's other channels have unit RMS, so h[:, 0] and h[:, 1] after layer 0's
    # input_layernorm (weight 1 there) are the same for every token, resp. every marker:
    # a marker's key does not depend on its embedding, only on its distance
    h_bias = 3.0 / math.sqrt((9.0 + rest.shape[1]) / D)
    h_mark = spec.MARKER / math.sqrt((9.0 + spec.MARKER**2 + rest.shape[1]) / D)
    # (a non-marker's h[:, 1] is 1.5 / sqrt((9 + 2.25 + rest) / D): about half of h_mark)
    qk = math.sqrt(A * math.sqrt(dk) / (h_bias * h_mark))
    ln = t["model.layers.0.input_layernorm.weight"]
    ln[:2] = 1.0
    wq, wk = (
        t["model.layers.0.self_attn.q_proj.weight"],
        t["model.layers.0.self_attn.k_proj.weight"],
    )
    group = H // KV
    for head in range(group):  # heads sharing kv head 0: no rope pair r except head 0's
        wq[head * dk + r] = 0.0
        wq[head * dk + r + half] = 0.0
    wq[r, 0] = qk
    wk[:dk] = 0.0
    wk[r, 1] = qk
    for li in range(cfg.num_hidden_layers):
        p = f"model.layers.{li}."
        wo = t[p + "self_attn.o_proj.weight"]
        wo[: 2 + dv] = 0.0
        mlp = t[p + "mlp.down_proj"]
        if cfg.ffn_type == "block":
            mlp[:, : 2 + dv, :] = 0.0
        else:
            mlp[: 2 + dv] = 0.0
        router = np.zeros((cfg.num_experts, D))
        router[:, topic] = rng.normal(0.0, dv**-0.5, (cfg.num_experts, dv))
        others = np.arange(2 + dv, D)
        router[:, others] = spec.fast_mix * rng.normal(
            0.0, others.size**-0.5, (cfg.num_experts, others.size)
        )
        t[p + "mlp.router_proj.weight"] = router
    t["model.layers.0.self_attn.o_proj.weight"][topic, :dv] = np.eye(dv)


def _gap_thresholds(u: np.ndarray, target: float, slack: float) -> np.ndarray:
    """Per column of ``u: [N, E]``, a threshold in the widest gap between sorted values
    whose quantile is within ``target +- slack``: the blocks' scores come in lumps (one per
    segment), and a threshold inside a lump would let a token's own part flip the block
    from token to token."""
    N = u.shape[0]
    srt = np.sort(u, axis=0)
    lo = max(int((target - slack) * N), 0)
    hi = min(int((target + slack) * N), N - 1)
    gaps = srt[lo + 1 : hi + 1] - srt[lo:hi]  # [hi - lo, E]
    k = lo + np.argmax(gaps, axis=0)
    cols = np.arange(u.shape[1])
    return (srt[k, cols] + srt[k + 1, cols]) / 2


def _fit_offsets(
    cfg: BlockFFNConfig,
    t: dict[str, np.ndarray],
    target: float,
    tokens: np.ndarray,
    gap_slack: float | None = None,
) -> None:
    """Set each router row's bias-channel weight so that the block is inactive for a
    fraction ``target`` of ``tokens`` (``[N]`` one sequence, or ``[n_seq, N]``), layer by
    layer (earlier layers fixed first). With ``gap_slack``, the threshold goes into the
    widest gap of the scores within ``target +- gap_slack`` (:func:`_gap_thresholds`), on
    ``z / h[:, 0]``, which decides a block exactly whatever the token's RMS."""
    from edgespec.model import ModelInfo
    from edgespec.sparse.blockffn import BlockFFNModel

    seqs = np.atleast_2d(tokens)
    info = ModelInfo("blockffn", cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size, 0)
    for li in range(cfg.num_hidden_layers):
        w = build_weights(t, cfg, np.float64, "tiny")
        m = BlockFFNModel(cfg, w, info, seqs.shape[1], np.float64)
        m.ffn_mode = "dense"
        hs, zs = [], []
        for seq in seqs:
            m.reset()
            m.trace = []
            m.forward(seq.tolist())
            _, h, z = next(x for x in m.trace if x[0] == li)
            hs.append(h[:, 0])
            zs.append(z)
        key = f"model.layers.{li}.mlp.router_proj.weight"
        if gap_slack is not None:  # active <=> z / h0 > -w0, exactly
            u = np.concatenate([z / h[:, None] for h, z in zip(hs, zs, strict=True)])
            t[key][:, 0] = -_gap_thresholds(u, target, gap_slack)
            continue
        h0 = float(np.mean(np.concatenate(hs)))
        # [E]: z - shift > 0 for 1 - target of tokens
        shift = np.quantile(np.concatenate(zs), target, axis=0)
        t[key][:, 0] = -shift / h0


def make_tiny_blockffn(
    out: str | Path,
    *,
    target_sparsity: float = 0.8,
    seed: int = 0,
    n_calibration: int = 512,
    dtype: str = "float32",
    chunk_local: ChunkLocalRouter | None = None,
    **config: Any,
) -> Path:
    """Write a tiny random BlockFFN model folder (config.json + model.safetensors).

    Args:
        out: the folder to create (written atomically).
        target_sparsity: the token-level block sparsity the router offsets are fitted to,
            on ``n_calibration`` uniformly random tokens.
        seed: weights and calibration tokens.
        dtype: the stored dtype, "float32" or "float64".
        chunk_local: None: random routers (a token's blocks say nothing about the next
            token's). A :class:`ChunkLocalRouter`: routers built to have chunk-level
            sparsity; the offsets are then fitted on 4 sequences of ``n_calibration``
            tokens (segments make one sequence too few samples).
        **config: overrides of :func:`tiny_config` (``attention_type="mla"``,
            ``ffn_type="block_linear"``, sizes ...).

    Returns:
        ``out``.
    """
    raw = tiny_config(**config)
    cfg = BlockFFNConfig.from_dict(raw)
    rng = np.random.default_rng(seed)
    t = _random_tensors(cfg, rng)
    if chunk_local is None:
        tokens = rng.integers(0, cfg.vocab_size, n_calibration)
    else:
        bos = raw.get("bos_token_id")
        _chunk_local(cfg, t, rng, chunk_local, bos)
        tokens = rng.integers(0, cfg.vocab_size, (4, n_calibration))
        if bos is not None:
            tokens[:, 0] = bos
    slack = None if chunk_local is None else chunk_local.gap_slack
    _fit_offsets(cfg, t, target_sparsity, tokens, slack)
    out = Path(out)
    with atomic_dir(out) as tmp:
        (tmp / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
        cast = {k: v.astype(np.dtype(dtype)) for k, v in t.items()}
        write_safetensors(tmp / "model.safetensors", cast)
    return out


__all__ = [
    "ChunkLocalRouter",
    "load_blockffn",
    "make_tiny_blockffn",
    "tiny_config",
    "write_safetensors",
]
