"""Tiny random BlockFFN models in the authors' exact HF format, for tests and benchmarks.

The published format has no router bias (``router_proj`` is ``bias=False``), so the target
token-level sparsity is reached through a *bias channel*: hidden dimension 0 of the residual
stream holds a constant (the embeddings' column 0; no attention or FFN output writes it), so
``h[:, 0]`` after the pre-FFN RMSNorm is nearly constant, and each router row's weight on
it acts as a per-block offset. The offsets are fitted layer by layer on random tokens so
that every block is active for a fraction ``1 - target_sparsity`` of tokens.

Written with NumPy only: safetensors is an 8-byte header length, a JSON header and raw
little-endian data.
"""

from __future__ import annotations

import json
import struct
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


def _fit_offsets(
    cfg: BlockFFNConfig, t: dict[str, np.ndarray], target: float, tokens: np.ndarray
) -> None:
    """Set each router row's bias-channel weight so that the block is inactive for a
    fraction ``target`` of ``tokens``, layer by layer (earlier layers fixed first)."""
    from edgespec.model import ModelInfo

    info = ModelInfo("blockffn", cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size, 0)
    for li in range(cfg.num_hidden_layers):
        w = build_weights(t, cfg, np.float64, "tiny")
        from edgespec.sparse.blockffn import BlockFFNModel

        m = BlockFFNModel(cfg, w, info, len(tokens), np.float64)
        m.ffn_mode = "dense"
        m.trace = []
        m.forward(tokens.tolist())
        _, h, z = next(x for x in m.trace if x[0] == li)
        h0 = float(np.mean(h[:, 0]))
        shift = np.quantile(z, target, axis=0)  # [E]: z - shift > 0 for 1 - target of tokens
        t[f"model.layers.{li}.mlp.router_proj.weight"][:, 0] = -shift / h0


def make_tiny_blockffn(
    out: str | Path,
    *,
    target_sparsity: float = 0.8,
    seed: int = 0,
    n_calibration: int = 512,
    dtype: str = "float32",
    **config: Any,
) -> Path:
    """Write a tiny random BlockFFN model folder (config.json + model.safetensors).

    Args:
        out: the folder to create (written atomically).
        target_sparsity: the token-level block sparsity the router offsets are fitted to,
            on ``n_calibration`` uniformly random tokens.
        seed: weights and calibration tokens.
        dtype: the stored dtype, "float32" or "float64".
        **config: overrides of :func:`tiny_config` (``attention_type="mla"``,
            ``ffn_type="block_linear"``, sizes ...).

    Returns:
        ``out``.
    """
    raw = tiny_config(**config)
    cfg = BlockFFNConfig.from_dict(raw)
    rng = np.random.default_rng(seed)
    t = _random_tensors(cfg, rng)
    tokens = rng.integers(0, cfg.vocab_size, n_calibration)
    _fit_offsets(cfg, t, target_sparsity, tokens)
    out = Path(out)
    with atomic_dir(out) as tmp:
        (tmp / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
        cast = {k: v.astype(np.dtype(dtype)) for k, v in t.items()}
        write_safetensors(tmp / "model.safetensors", cast)
    return out


__all__ = ["load_blockffn", "make_tiny_blockffn", "tiny_config", "write_safetensors"]
