"""BlockFFN models in their authors' HF format, run by a NumPy forward with a chunk-sparse FFN.

BlockFFN (Song et al. 2025, "BlockFFN: Towards End-Side Acceleration-Friendly Mixture-of-
Experts with Chunk-Level Activation Sparsity", arXiv:2507.08771) publishes MiniCPM-style
checkpoints (``MiniCPMForCausalLM``, ``ffn_type`` "block" or "block_linear"). This module is
our own reader of that format (config keys and tensor names), not a copy of their code.

The FFN of layer l, for the normed input ``h: [T, D]`` (E blocks of S neurons, F = E*S):

    r = norm(relu(h @ W_router.T))       r: [T, E] >= 0   (norm: "rms" | "sum" | "none")
    y = sum_e r[:, e] * act(h @ up_e.T) @ down_e.T        (each block an ungated small FFN)

A block is active for a token when ``r > 0``. The sparse evaluation takes the union of the
active blocks over the chunk, gathers their rows of ``up`` and columns of ``down`` and
computes only those (``sparse_ffn`` from :data:`edgespec.kernels.KERNELS`); the dense
evaluation computes all blocks with the inactive ones weighted 0. Both give the same numbers
up to the summation order (tests/sparse/test_blockffn.py).

The rest is MiniCPM: embeddings times ``scale_emb``, residual branches times
``scale_depth / sqrt(L)``, logits of ``h / (D / dim_model_base)``, and either vanilla
(GQA) attention or MLA (``attention_type`` "mla": low-rank q and kv with a decoupled rope
part, as BlockFFN's published models use). Rope is HF's ``rotate_half`` layout.

Tensor names (nn.Linear layout ``[out, in]``), per layer ``model.layers.{i}.``:
    input_layernorm.weight, post_attention_layernorm.weight
    vanilla: self_attn.{q,k,v,o}_proj.weight (+ .bias with attention_bias)
    mla: self_attn.q_a_proj.weight, q_a_layernorm.weight, q_b_proj.weight,
         kv_a_proj_with_mqa.weight, kv_a_layernorm.weight, kv_b_proj.weight, o_proj.weight
    mlp.router_proj.weight [E, D], mlp.router_norm.weight [E] (norm "rms"),
    mlp.up_proj [E, S, D] and mlp.down_proj [E, D, S] ("block") or
    mlp.up_proj [E*S, D] and mlp.down_proj [D, E*S] ("block_linear") -- no ".weight"
plus model.embed_tokens.weight, model.norm.weight and lm_head.weight (unless tied).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from edgespec.errors import EdgespecError, ModelLoadError
from edgespec.model import ModelInfo
from edgespec.runtimes.numpy_ref import KVCacheModel, matmul
from edgespec.sparse.stats import ForwardSparsity

#: config.json keys that change the computation, with MiniCPMConfig's defaults
_MODEL_KEYS: dict[str, Any] = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "attention_type": "vanilla",
    "num_attention_heads": 32,
    "num_key_value_heads": None,
    "qk_nope_head_dim": 64,
    "qk_rope_head_dim": 32,
    "q_lora_rank": 768,
    "kv_lora_rank": 256,
    "v_head_dim": None,
    "ffn_type": "vanilla",
    "ffn_gated": True,
    "hidden_act": "silu",
    "router_act": "relu",
    "expert_size": 128,
    "num_experts": 40,
    "norm_after_router": "sum",
    "norm_scale": 1.0,
    "block_implementation": "torch",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "pretraining_tp": 1,
    "tie_word_embeddings": True,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "attention_bias": False,
    "scale_emb": 1.0,
    "dim_model_base": 1.0,
    "scale_depth": 1.0,
}
#: keys MiniCPMConfig or PretrainedConfig accept that do not change a block-FFN forward
_IGNORED_KEYS = frozenset(
    {
        "architectures", "auto_map", "_name_or_path", "model_type", "torch_dtype", "dtype",
        "transformers_version", "bos_token_id", "eos_token_id", "pad_token_id", "use_cache",
        "initializer_range", "attention_dropout", "moe_routing_strategy", "num_shared_experts",
        "moe_top_k", "moe_top_p", "_attn_implementation", "return_dict", "output_attentions",
        "output_hidden_states", "torchscript", "is_decoder", "tokenizer_class",
    }
)  # fmt: skip
KNOWN_CONFIG_KEYS = frozenset(_MODEL_KEYS) | _IGNORED_KEYS
#: the MLA q/kv low-rank norms are built with MiniCPMRMSNorm's default eps, not the config's
_MLA_NORM_EPS = 1e-6
_ACTS = ("silu", "relu", "gelu_tanh")


@dataclass(frozen=True)
class BlockFFNConfig:
    """The fields of a BlockFFN ``config.json`` that the forward uses (HF names).

    Attributes:
        vocab_size, hidden_size, num_hidden_layers, num_attention_heads, num_key_value_heads:
            as in every HF decoder (V, D, L, H, KV).
        attention_type: "vanilla" (GQA, head_dim = D / H) or "mla".
        qk_nope_head_dim, qk_rope_head_dim, q_lora_rank, kv_lora_rank: MLA shapes.
        ffn_type: "block" (up ``[E, S, D]``, down ``[E, D, S]``) or "block_linear"
            (``[E*S, D]``, ``[D, E*S]``).
        hidden_act: the experts' activation ("silu", "relu", "gelu_tanh").
        expert_size: S, neurons per block.
        num_experts: E, blocks per layer.
        norm_after_router: "rms" (BlockFFN), "sum" or "none".
        norm_scale: the "sum" normalisation's scale.
        max_position_embeddings: trained context, tokens.
        rms_norm_eps: RMSNorm epsilon (layers, final norm, router norm).
        tie_word_embeddings: the LM head is the embedding.
        rope_theta: rope base.
        rope_linear_factor: linear rope scaling factor (positions divided by it), 1.0 none.
        attention_bias: q/k/v/o biases (vanilla) or q_a/kv_a/o biases (MLA).
        scale_emb: embedding multiplier.
        dim_model_base: logits are computed from ``h / (D / dim_model_base)``.
        scale_depth: residual branches are multiplied by ``scale_depth / sqrt(L)``.
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    attention_type: str
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    q_lora_rank: int
    kv_lora_rank: int
    ffn_type: str
    hidden_act: str
    expert_size: int
    num_experts: int
    norm_after_router: str
    norm_scale: float
    max_position_embeddings: int
    rms_norm_eps: float
    tie_word_embeddings: bool
    rope_theta: float
    rope_linear_factor: float
    attention_bias: bool
    scale_emb: float
    dim_model_base: float
    scale_depth: float

    @classmethod
    def from_dict(cls, cfg: dict[str, Any], where: str = "config.json") -> BlockFFNConfig:
        """Validate a parsed ``config.json``.

        Raises:
            ModelLoadError: one line naming unknown keys, or a value this reader cannot run.
        """
        unknown = sorted(set(cfg) - KNOWN_CONFIG_KEYS)
        if unknown:
            raise ModelLoadError(
                f"'{where}': unknown BlockFFN config keys: {', '.join(unknown)}; this reader "
                "knows MiniCPM/BlockFFN's config (thunlp/BlockFFN); check the file or model"
            )
        c = {**_MODEL_KEYS, **cfg}

        def bad(key: str, allowed: Sequence[Any]) -> ModelLoadError:
            return ModelLoadError(
                f"'{where}': {key} = {c[key]!r} is not supported; supported: "
                + ", ".join(map(str, allowed))
            )

        if c["ffn_type"] not in ("block", "block_linear"):
            raise bad("ffn_type", ("block", "block_linear"))
        if c["block_implementation"] not in ("torch", "kernel"):
            raise bad("block_implementation", ("torch", "kernel"))
        if c["router_act"] != "relu":
            raise bad("router_act", ("relu",))
        act = {"gelu_pytorch_tanh": "gelu_tanh"}.get(c["hidden_act"], c["hidden_act"])
        if act not in _ACTS:
            raise bad("hidden_act", _ACTS)
        if c["norm_after_router"] not in ("rms", "sum", "none"):
            raise bad("norm_after_router", ("rms", "sum", "none"))
        if c["attention_type"] not in ("vanilla", "mla"):
            raise bad("attention_type", ("vanilla", "mla"))
        if int(c["pretraining_tp"]) != 1:
            raise bad("pretraining_tp", (1,))
        rs = c["rope_scaling"]
        if rs is not None and (not isinstance(rs, dict) or rs.get("type") != "linear"):
            raise bad("rope_scaling", ("null", '{"type": "linear", "factor": f}'))
        try:
            H = int(c["num_attention_heads"])
            return cls(
                vocab_size=int(c["vocab_size"]),
                hidden_size=int(c["hidden_size"]),
                num_hidden_layers=int(c["num_hidden_layers"]),
                num_attention_heads=H,
                num_key_value_heads=int(c["num_key_value_heads"] or H),
                attention_type=str(c["attention_type"]),
                qk_nope_head_dim=int(c["qk_nope_head_dim"]),
                qk_rope_head_dim=int(c["qk_rope_head_dim"]),
                q_lora_rank=int(c["q_lora_rank"]),
                kv_lora_rank=int(c["kv_lora_rank"]),
                ffn_type=str(c["ffn_type"]),
                hidden_act=act,
                expert_size=int(c["expert_size"]),
                num_experts=int(c["num_experts"]),
                norm_after_router=str(c["norm_after_router"]),
                norm_scale=float(c["norm_scale"]),
                max_position_embeddings=int(c["max_position_embeddings"]),
                rms_norm_eps=float(c["rms_norm_eps"]),
                tie_word_embeddings=bool(c["tie_word_embeddings"]),
                rope_theta=float(c["rope_theta"]),
                rope_linear_factor=float(rs["factor"]) if rs else 1.0,
                attention_bias=bool(c["attention_bias"]),
                scale_emb=float(c["scale_emb"]),
                dim_model_base=float(c["dim_model_base"]),
                scale_depth=float(c["scale_depth"]),
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"'{where}': bad value ({exc})") from None

    def to_dict(self) -> dict[str, Any]:
        """The HF ``config.json`` this config reads back from (round trip)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        factor = out.pop("rope_linear_factor")
        out["rope_scaling"] = {"type": "linear", "factor": factor} if factor != 1.0 else None
        out["architectures"] = ["MiniCPMForCausalLM"]
        out["model_type"] = "minicpm"
        out["router_act"] = "relu"
        return out

    @property
    def head_dims(self) -> tuple[int, int, int]:
        """(KV heads in the cache, key/query width, value width) per head."""
        H, D = self.num_attention_heads, self.hidden_size
        if self.attention_type == "mla":
            # MiniCPM's MLA takes v_head_dim = D // H whatever the config says
            return H, self.qk_nope_head_dim + self.qk_rope_head_dim, D // H
        return self.num_key_value_heads, D // H, D // H


# --------------------------------------------------------------------------- weights


@dataclass
class BlockFFNWeights:
    """One layer's BlockFFN, in the layout the kernels read (F = E * S).

    Attributes:
        router: ``[D, E]`` (``h @ router``).
        router_norm: ``[E]`` RMSNorm weight of the router scores ("rms"), else None.
        up: ``[F, D]`` rows of all blocks, block e at rows ``e*S .. e*S+S-1``.
        down_t: ``[F, D]`` the down projection transposed, same row order (a block's
            columns of ``down`` become contiguous rows).
    """

    router: np.ndarray
    router_norm: np.ndarray | None
    up: np.ndarray
    down_t: np.ndarray

    @property
    def down(self) -> np.ndarray:
        """``[D, F]``: ``down_t.T``, the same view object on every call while ``down_t``
        stays (the compiled kernel recognises weights by object; a new view each call
        would cost it an address lookup)."""
        held = self.__dict__.get("_down")
        if held is None or held[0] is not self.down_t:
            held = self.__dict__["_down"] = (self.down_t, self.down_t.T)
        return held[1]


@dataclass
class AttnWeights:
    """One layer's attention, as ``x @ W`` matrices (None where the variant has none)."""

    wq: np.ndarray | None = None  # vanilla [D, H*hd]
    wk: np.ndarray | None = None  # vanilla [D, KV*hd]
    wv: np.ndarray | None = None  # vanilla [D, KV*hd]
    bq: np.ndarray | None = None
    bk: np.ndarray | None = None
    bv: np.ndarray | None = None
    q_a: np.ndarray | None = None  # mla [D, q_lora]
    q_a_b: np.ndarray | None = None
    q_a_norm: np.ndarray | None = None  # [q_lora]
    q_b: np.ndarray | None = None  # [q_lora, H*(nope+rope)]
    kv_a: np.ndarray | None = None  # [D, kv_lora + rope]
    kv_a_b: np.ndarray | None = None
    kv_a_norm: np.ndarray | None = None  # [kv_lora]
    kv_b: np.ndarray | None = None  # [kv_lora, H*(nope+v)]
    wo: np.ndarray | None = None  # [H*v, D]
    bo: np.ndarray | None = None


@dataclass
class Layer:
    attn_norm: np.ndarray
    ffn_norm: np.ndarray
    attn: AttnWeights
    ffn: BlockFFNWeights


@dataclass
class Weights:
    embed: np.ndarray  # [V, D]
    norm: np.ndarray  # [D]
    lm_head: np.ndarray  # [D, V]
    layers: list[Layer] = field(default_factory=list)


def build_weights(t: dict[str, np.ndarray], cfg: BlockFFNConfig, dtype: Any, where: str) -> Weights:
    """``{HF name: float array}`` -> :class:`Weights` in ``dtype``; shape-checked.

    Raises:
        ModelLoadError: a missing tensor, a wrong shape, or tensors left over (names this
            reader does not know: the model is not what its config says).
    """
    t = dict(t)

    def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
        arr = t.pop(name, None)
        if arr is None:
            raise ModelLoadError(f"'{where}' has no tensor {name}; the checkpoint is incomplete")
        if tuple(arr.shape) != shape:
            raise ModelLoadError(
                f"'{where}': tensor {name} has shape {tuple(arr.shape)}, the config says {shape}"
            )
        return np.asarray(arr, dtype=dtype)

    def lin(name: str, out: int, inp: int) -> np.ndarray:
        return np.ascontiguousarray(take(name + ".weight", (out, inp)).T)

    def proj(name: str, out: int, inp: int) -> tuple[np.ndarray, np.ndarray | None]:
        """A projection and its bias (attention projections carry one with attention_bias)."""
        b = take(name + ".bias", (out,)) if cfg.attention_bias else None
        return lin(name, out, inp), b

    D, V, E, S = cfg.hidden_size, cfg.vocab_size, cfg.num_experts, cfg.expert_size
    H = cfg.num_attention_heads
    KV, dk, dv = cfg.head_dims
    embed = take("model.embed_tokens.weight", (V, D))
    w = Weights(embed=embed, norm=take("model.norm.weight", (D,)), lm_head=embed.T)
    if not cfg.tie_word_embeddings:
        w.lm_head = np.ascontiguousarray(take("lm_head.weight", (V, D)).T)
    t.pop("lm_head.weight", None)  # tied checkpoints may still store a copy
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        a = AttnWeights()
        if cfg.attention_type == "mla":
            qa, kva, rope = cfg.q_lora_rank, cfg.kv_lora_rank, cfg.qk_rope_head_dim
            a.q_a, a.q_a_b = proj(p + "self_attn.q_a_proj", qa, D)
            a.q_a_norm = take(p + "self_attn.q_a_layernorm.weight", (qa,))
            a.q_b = lin(p + "self_attn.q_b_proj", H * dk, qa)
            a.kv_a, a.kv_a_b = proj(p + "self_attn.kv_a_proj_with_mqa", kva + rope, D)
            a.kv_a_norm = take(p + "self_attn.kv_a_layernorm.weight", (kva,))
            a.kv_b = lin(p + "self_attn.kv_b_proj", H * (cfg.qk_nope_head_dim + dv), kva)
        else:
            a.wq, a.bq = proj(p + "self_attn.q_proj", H * dk, D)
            a.wk, a.bk = proj(p + "self_attn.k_proj", KV * dk, D)
            a.wv, a.bv = proj(p + "self_attn.v_proj", KV * dv, D)
        a.wo, a.bo = proj(p + "self_attn.o_proj", D, H * dv)
        if cfg.ffn_type == "block":
            up = take(p + "mlp.up_proj", (E, S, D)).reshape(E * S, D)
            down_t = take(p + "mlp.down_proj", (E, D, S)).transpose(0, 2, 1).reshape(E * S, D)
        else:
            up = take(p + "mlp.up_proj", (E * S, D))
            down_t = take(p + "mlp.down_proj", (D, E * S)).T
        ffn = BlockFFNWeights(
            router=lin(p + "mlp.router_proj", E, D),
            router_norm=(
                take(p + "mlp.router_norm.weight", (E,)) if cfg.norm_after_router == "rms" else None
            ),
            up=np.ascontiguousarray(up),
            down_t=np.ascontiguousarray(down_t),
        )
        w.layers.append(
            Layer(
                attn_norm=take(p + "input_layernorm.weight", (D,)),
                ffn_norm=take(p + "post_attention_layernorm.weight", (D,)),
                attn=a,
                ffn=ffn,
            )
        )
    if t:
        extra = sorted(t)
        raise ModelLoadError(
            f"'{where}': {len(extra)} tensors this BlockFFN reader does not know (first: "
            f"{extra[0]}); the checkpoint does not match its config.json"
        )
    return w


# --------------------------------------------------------------------------- math


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """``x / sqrt(mean(x^2) + eps) * w`` over the last axis."""
    var = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(var + eps) * w


def route(h: np.ndarray, f: BlockFFNWeights, cfg: BlockFFNConfig) -> np.ndarray:
    """Router weights ``r: [T, E] >= 0`` for normed inputs ``h: [T, D]``; 0 = inactive."""
    r = np.maximum(matmul(h, f.router), 0)
    if cfg.norm_after_router == "rms":
        assert f.router_norm is not None
        r = rms_norm(r, f.router_norm, cfg.rms_norm_eps)
    elif cfg.norm_after_router == "sum":
        r = r / (r.sum(axis=-1, keepdims=True) * cfg.norm_scale + 1e-5)
    return r


def ffn_dense(
    h: np.ndarray, f: BlockFFNWeights, cfg: BlockFFNConfig, kernel: Any = None
) -> np.ndarray:
    """All E blocks computed, inactive ones weighted 0: ``h: [T, D]`` -> ``[T, D]``.
    ``kernel``: a ``dense_ffn`` implementation (None: the NumPy reference)."""
    if kernel is None:
        from edgespec.sparse.kernel import dense_kernel

        kernel = dense_kernel("numpy")
    r = route(h, f, cfg)
    scale = np.repeat(r, cfg.expert_size, axis=1)  # [T, F]
    return kernel(h, None, f.up, f.down, act=cfg.hidden_act, scale=scale)


def ffn_sparse(
    h: np.ndarray, f: BlockFFNWeights, cfg: BlockFFNConfig, kernel: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Only the union of the chunk's active blocks: ``h: [T, D]`` -> (``[T, D]``,
    ``active: bool[T, E]``). ``kernel``: a ``sparse_ffn`` implementation
    (:func:`edgespec.sparse.kernel.sparse_kernel`; None: the NumPy reference)."""
    from edgespec.kernels.reference import block_rows

    if kernel is None:
        from edgespec.sparse.kernel import sparse_kernel

        kernel = sparse_kernel("numpy")
    r = route(h, f, cfg)
    active = r > 0
    blocks = np.flatnonzero(active.any(axis=0))
    rows = block_rows(blocks, cfg.expert_size)
    scale = np.repeat(r[:, blocks], cfg.expert_size, axis=1)  # [T, A]
    y = kernel(h, rows, None, f.up, f.down, act=cfg.hidden_act, scale=scale)
    return y, active


def _rope_tables(dim: int, n_ctx: int, theta: float, factor: float) -> tuple[np.ndarray, ...]:
    inv = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    ang = np.outer(np.arange(n_ctx, dtype=np.float64) / factor, inv)
    ang = np.concatenate([ang, ang], axis=1)
    return np.cos(ang), np.sin(ang)


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """HF ``rotate_half`` rope on ``x: [T, heads, dim]`` with ``cos, sin: [T, dim]``."""
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None, :] + rot * sin[:, None, :]


# --------------------------------------------------------------------------- the model


class BlockFFNModel(KVCacheModel):
    """A BlockFFN (MiniCPM) model with a KV cache; :meth:`forward` as every backend's.

    Attributes:
        cfg: the config.
        ffn_mode: "sparse" (union of active blocks, the default) or "dense".
        kernel: the ``sparse_ffn`` implementation the sparse mode calls
            (``KERNELS["sparse_ffn:<impl>"]``, ``LoadOptions.sparse_kernel``).
        dense: the same backend's ``dense_ffn``, which the dense mode calls.
        sparsity: what the sparse FFN computed, per chunk size (see
            :class:`~edgespec.sparse.stats.ForwardSparsity`).
        trace: when a list, every FFN appends ``(layer, h, router pre-activations)``
            (calibration of tiny models; None otherwise).
    """

    backend = "numpy-blockffn"

    def __init__(
        self,
        cfg: BlockFFNConfig,
        w: Weights,
        info: ModelInfo,
        n_ctx: int,
        dtype: Any,
        kernel: Any = None,
        dense: Any = None,
    ) -> None:
        from edgespec.sparse.kernel import dense_kernel, is_lossy, max_rows, sparse_kernel

        self.cfg, self.w, self.info = cfg, w, info
        self.n_ctx = int(n_ctx)
        self.dtype = np.dtype(dtype)
        L = cfg.num_hidden_layers
        kv, dk, dv = cfg.head_dims
        self.k_cache = np.zeros((L, kv, self.n_ctx, dk), dtype=self.dtype)
        self.v_cache = np.zeros((L, kv, self.n_ctx, dv), dtype=self.dtype)
        rope_dim = cfg.qk_rope_head_dim if cfg.attention_type == "mla" else dk
        cos, sin = _rope_tables(rope_dim, self.n_ctx, cfg.rope_theta, cfg.rope_linear_factor)
        self._cos, self._sin = cos.astype(self.dtype), sin.astype(self.dtype)
        self._n_past = 0
        self.ffn_mode = "sparse"
        self.kernel = kernel if kernel is not None else sparse_kernel("numpy")
        self.dense = dense if dense is not None else dense_kernel("numpy")
        self.max_rows = max_rows(self.kernel)
        # a kernel that quantizes the weights (tvm-q8) changes the output: labelled lossy
        self.sparsity = ForwardSparsity(cfg.num_experts, L, lossy=is_lossy(self.kernel))
        self.trace: list[tuple[int, np.ndarray, np.ndarray]] | None = None

    def fork(self) -> BlockFFNModel:
        """A model sharing the weights with a copy of the cache and its own sparsity counts."""
        other = super().fork()
        other.sparsity = ForwardSparsity(
            self.cfg.num_experts, self.cfg.num_hidden_layers, lossy=self.sparsity.lossy
        )
        return other

    def forward(self, tokens: Sequence[int], *, all_logits: bool = True) -> np.ndarray:
        """Append ``tokens`` at ``n_past..n_past+T-1``; logits ``[T, V]`` (``[1, V]`` when
        ``all_logits`` is False) in the model's dtype."""
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        T = int(ids.size)
        if T == 0:
            raise ValueError("forward needs at least one token")
        if ids.min() < 0 or ids.max() >= self.cfg.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.cfg.vocab_size})")
        p0 = self._n_past
        if p0 + T > self.n_ctx:
            raise EdgespecError(
                f"context overflow: {p0} cached + {T} new tokens > n_ctx {self.n_ctx}; "
                "load the model with a larger n_ctx"
            )
        cfg = self.cfg
        res = self.dtype.type(cfg.scale_depth / math.sqrt(cfg.num_hidden_layers))
        x = self.w.embed[ids] * self.dtype.type(cfg.scale_emb)
        for li, layer in enumerate(self.w.layers):
            h = rms_norm(x, layer.attn_norm, cfg.rms_norm_eps)
            x = x + self._attention(li, layer.attn, h, p0) * res
            h = rms_norm(x, layer.ffn_norm, cfg.rms_norm_eps)
            x = x + self._ffn(li, layer.ffn, h) * res
        self._n_past = p0 + T
        self.sparsity.end_forward(T)
        if not all_logits:
            x = x[-1:]
        h = rms_norm(x, self.w.norm, cfg.rms_norm_eps)
        return matmul(h / self.dtype.type(cfg.hidden_size / cfg.dim_model_base), self.w.lm_head)

    def _ffn(self, li: int, f: BlockFFNWeights, h: np.ndarray) -> np.ndarray:
        if self.trace is not None:
            self.trace.append((li, h, h @ f.router))
        T = h.shape[0]
        step = self.max_rows or T  # a compiled kernel's largest row bucket
        ys = []
        for s in range(0, T, step):  # each group computes its own union
            if self.ffn_mode == "dense":
                ys.append(ffn_dense(h[s : s + step], f, self.cfg, self.dense))
                continue
            y, active = ffn_sparse(h[s : s + step], f, self.cfg, self.kernel)
            self.sparsity.record(T, active, li)
            ys.append(y)
        return ys[0] if len(ys) == 1 else np.concatenate(ys, axis=0)

    def _attention(self, li: int, a: AttnWeights, h: np.ndarray, p0: int) -> np.ndarray:
        """Causal attention of ``h: [T, D]`` at positions ``p0..`` over the cache -> ``[T, D]``."""
        cfg = self.cfg
        T, H = h.shape[0], cfg.num_attention_heads
        KV, dk, dv = cfg.head_dims
        cos, sin = self._cos[p0 : p0 + T], self._sin[p0 : p0 + T]
        if cfg.attention_type == "mla":
            nope, rope = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim
            assert a.q_a_norm is not None and a.kv_a_norm is not None
            qa = _affine(h, a.q_a, a.q_a_b)
            q = matmul(rms_norm(qa, a.q_a_norm, _MLA_NORM_EPS), a.q_b).reshape(T, H, dk)
            ckv = _affine(h, a.kv_a, a.kv_a_b)
            c, k_pe = ckv[:, : cfg.kv_lora_rank], ckv[:, cfg.kv_lora_rank :]
            kv = matmul(rms_norm(c, a.kv_a_norm, _MLA_NORM_EPS), a.kv_b).reshape(T, H, nope + dv)
            k_pe = _rope(k_pe.reshape(T, 1, rope), cos, sin)
            q = np.concatenate([q[..., :nope], _rope(q[..., nope:], cos, sin)], axis=-1)
            k = np.concatenate([kv[..., :nope], np.broadcast_to(k_pe, (T, H, rope))], axis=-1)
            v = kv[..., nope:]
        else:
            q = _rope(_affine(h, a.wq, a.bq).reshape(T, H, dk), cos, sin)
            k = _rope(_affine(h, a.wk, a.bk).reshape(T, KV, dk), cos, sin)
            v = _affine(h, a.wv, a.bv).reshape(T, KV, dv)
        S = p0 + T
        self.k_cache[li, :, p0:S] = k.transpose(1, 0, 2)
        self.v_cache[li, :, p0:S] = v.transpose(1, 0, 2)
        G = H // KV
        qg = q.reshape(T, KV, G, dk).transpose(1, 2, 0, 3).reshape(KV, G * T, dk)
        scores = (qg @ self.k_cache[li, :, :S].transpose(0, 2, 1)).reshape(KV, G, T, S)
        scores *= self.dtype.type(dk**-0.5)
        hidden = np.arange(S)[None, :] > np.arange(p0, S)[:, None]  # [T, S]
        scores[..., hidden] = -np.inf
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        o = probs.reshape(KV, G * T, S) @ self.v_cache[li, :, :S]  # [KV, G*T, dv]
        o = o.reshape(KV, G, T, dv).transpose(2, 0, 1, 3).reshape(T, H * dv)
        return _affine(o, a.wo, a.bo)


def _affine(x: np.ndarray, w: np.ndarray | None, b: np.ndarray | None) -> np.ndarray:
    assert w is not None
    y = matmul(x, w)
    return y + b if b is not None else y


# --------------------------------------------------------------------------- loading


def is_blockffn_folder(folder: Path) -> bool:
    """True when ``folder/config.json`` declares a block FFN (``ffn_type`` block*)."""
    import json

    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and str(cfg.get("ffn_type", "")).startswith("block")


def load_blockffn(
    folder: str | Path, *, n_ctx: int = 512, dtype: str = "float32", kernel: str = "numpy"
) -> BlockFFNModel:
    """Load a BlockFFN checkpoint folder (config.json + *.safetensors) as authors publish it.

    Args:
        folder: the HF folder (e.g. a download of a SparseLLM BlockFFN model).
        n_ctx: KV cache positions.
        dtype: "float32" or "float64" (tests use float64 to compare evaluations exactly).
        kernel: the ``sparse_ffn`` implementation ("numpy", "tvm", or "tvm-q8", which
            quantizes the FFN weights to Q8_0: lossy).

    Raises:
        ModelLoadError: a missing/invalid config or checkpoint, unknown config keys, or
            tensors that do not match the config; one line each.
    """
    from edgespec.runtimes.numpy_weights import read_hf_config, read_hf_tensors

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"'{path}' is not a folder; pass a BlockFFN HF model folder")
    np_dtype = {"float32": np.float32, "float64": np.float64}.get(dtype)
    if np_dtype is None:
        raise EdgespecError(f"unknown dtype '{dtype}'; use float32 or float64")
    cfg = BlockFFNConfig.from_dict(read_hf_config(path), str(path / "config.json"))
    w = build_weights(read_hf_tensors(path), cfg, np_dtype, str(path))
    info = ModelInfo(
        arch="blockffn",
        n_layers=cfg.num_hidden_layers,
        hidden_size=cfg.hidden_size,
        vocab_size=cfg.vocab_size,
        context_length=cfg.max_position_embeddings,
        source=str(path),
        extra={
            "num_experts": cfg.num_experts,
            "expert_size": cfg.expert_size,
            "attention_type": cfg.attention_type,
            "ffn_type": cfg.ffn_type,
            "dtype": np.dtype(np_dtype).name,
            "sparse_kernel": kernel,
            # its own cost-curve key (cost_curves.curve_key): the verify cost of a chunk
            # depends on the blocks its union activates, not on the dense shape
            "variant": f"sparse-{kernel}",
        },
    )
    from edgespec.sparse.kernel import dense_kernel, sparse_kernel, stored_weight

    sk, dk = sparse_kernel(kernel), dense_kernel(kernel)
    for layer in w.layers:  # quantized kernels (tvm-q8): only the quantized form is kept
        f = layer.ffn
        f.up, f.down_t = stored_weight(sk, dk, f.up), stored_weight(sk, dk, f.down_t)
    return BlockFFNModel(cfg, w, info, n_ctx, np_dtype, sk, dk)
