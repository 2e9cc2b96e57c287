"""The NumPy reference backend: a plain, readable transformer forward over dequantized weights.

Every other backend is tested against this one, so it favours clarity and exactness over
speed (it is still vectorised: one fused QKV and one fused gate/up matmul per layer, batched
GQA attention over a preallocated KV cache).

Sources:
    - "gguf": one GGUF file (llama, qwen2, gemma3). Every tensor is dequantized to float32
      with the ``gguf`` package, so the model computes with exactly the values llama.cpp
      stores, but in full precision.
    - "hf": a folder with config.json + *.safetensors (LlamaForCausalLM, Qwen2ForCausalLM,
      Gemma3ForCausalLM).

Rope: everything is computed in HF's NEOX layout (``rotate_half``: dimension ``i`` pairs with
``i + head_dim/2``). llama.cpp's converter permutes the Q/K rows of *llama*-arch GGUF files
into interleaved pairs for ggml's "normal" rope; the loader undoes that permutation
(:func:`~edgespec.runtimes.numpy_weights.unpermute_rope_rows`), so one rope serves all
sources. qwen2 and gemma3 GGUF files are stored in NEOX order and are not permuted.

Precision: ``LoadOptions.dtype`` picks the compute dtype. With "float32" (the default)
``forward`` returns ``float32[T, V]``. With "float64" every weight, activation and cache
entry is float64 and ``forward`` returns ``float64[T, V]`` (tests rely on this to make batched
and one-by-one forwards agree to ~1e-14).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from edgespec.errors import EdgespecError, ModelLoadError
from edgespec.kvcache import NUMPY_KV_TYPES
from edgespec.model import (
    ModelInfo,
    SlotCacheModel,
    tree_ancestors,
    tree_path_rows,
)
from edgespec.runtimes.base import Backend, LoadOptions, ModelSource

#: GGUF ``general.architecture`` values this backend runs.
SUPPORTED_GGUF_ARCHS = ("llama", "qwen2", "gemma3")
#: HF ``config.json`` ``architectures`` this backend runs, and the GGUF family each maps to.
SUPPORTED_HF_ARCHS = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Gemma3ForCausalLM": "gemma3",
}
_DTYPES = {"float32": np.float32, "float64": np.float64}
#: the most rows :func:`matmul` multiplies one at a time (see there)
ROWS_ONE_BY_ONE = 3
#: past ROWS_ONE_BY_ONE, :func:`matmul` pads the rows up to a multiple of this
PAD_ROWS = 4
#: ... up to this many rows (a verify chunk or a tree); a longer product (a prompt) spends
#: little in OpenBLAS's remainder code, and padding would copy its rows
PAD_UP_TO = 16


def matmul(x: np.ndarray, w: Any) -> np.ndarray:
    """``x [T, K] @ w [K, N]`` -> ``[T, N]``, shaped for OpenBLAS: from 2 to
    :data:`ROWS_ONE_BY_ONE` rows one row at a time (each exactly the product a one-row forward
    computes, bit for bit); more rows, up to :data:`PAD_UP_TO`, padded with zero rows to a
    multiple of :data:`PAD_ROWS`.

    OpenBLAS multiplies one row by a matrix-vector product and 2 or more by its GEMM, which
    packs the matrix on every call and takes row counts that are not a multiple of 4 through
    slower remainder code: on SmolLM2's matrices 2 rows cost 1.2-2.4x one row and 3 rows
    1.7-3.1x (one at a time about 2x and 3x), while 4 rows cost less than either, 5-7 rows
    more than 8, and 9 rows more than 12 (``benchmarks/numpy_rows.py``). A padded row changes
    which code computes the others, so their last bits may differ from the unpadded GEMM's
    (as they already differ between row counts). Other weights (:class:`~edgespec.runtimes.
    numpy_q8act.Q8ActMatrix`) go to ``@`` as they are."""
    T = x.shape[0]
    if T < 2 or type(w) is not np.ndarray or x.ndim != 2:
        return x @ w
    if T <= ROWS_ONE_BY_ONE:
        out = np.empty((T, w.shape[1]), np.result_type(x, w))
        for t in range(T):
            np.matmul(x[t : t + 1], w, out=out[t : t + 1])
        return out
    pad = -T % PAD_ROWS
    if pad == 0 or T > PAD_UP_TO:
        return x @ w
    padded = np.zeros((T + pad, x.shape[1]), x.dtype)
    padded[:T] = x
    return (padded @ w)[:T]


# --------------------------------------------------------------------------- hyperparameters


@dataclass(frozen=True)
class HParams:
    """Architecture hyperparameters, read from GGUF metadata or an HF config.json.

    Attributes:
        arch: GGUF family name ("llama", "qwen2", "gemma3").
        n_layers: transformer blocks.
        n_embd: model width D.
        n_head: query heads H.
        n_head_kv: key/value heads KV (H % KV == 0; GQA groups of H // KV).
        head_dim: per-head width.
        n_ff: feed-forward width F.
        n_vocab: vocabulary size V.
        context_length: trained context, in tokens.
        rms_eps: RMSNorm epsilon.
        rope_base: rope theta of full-attention layers.
        rope_scale: linear rope scaling factor (positions are divided by it); 1.0 for none.
        rope_base_swa: rope theta of sliding-window layers (gemma3), else ``rope_base``.
        swa_window: sliding window in tokens (a key at distance >= window is hidden); 0: none.
        swa_layers: indices of the sliding-window layers.
        act: feed-forward activation, "silu" or "gelu_tanh".
        embd_scale: the token embedding is multiplied by this (gemma3: sqrt(D)), else 1.0.
        attn_scale: multiplier of q·k (usually ``head_dim ** -0.5``).
        qk_norm: per-head RMSNorm on q and k before rope (gemma3).
        sandwich_norm: extra RMSNorm after attention and after the MLP (gemma3).
        llama3_rope: HF ``rope_scaling`` of type "llama3" (its parameters), or None.
    """

    arch: str
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    context_length: int
    rms_eps: float
    rope_base: float
    rope_scale: float = 1.0
    rope_base_swa: float = 0.0
    swa_window: int = 0
    swa_layers: frozenset[int] = frozenset()
    act: str = "silu"
    embd_scale: float = 1.0
    attn_scale: float = 0.0
    qk_norm: bool = False
    sandwich_norm: bool = False
    llama3_rope: dict[str, float] | None = field(default=None, hash=False)

    def inv_freq(self, swa: bool, freq_factors: np.ndarray | None = None) -> np.ndarray:
        """Rope inverse frequencies ``float64[head_dim/2]`` for a full or sliding layer."""
        base = self.rope_base_swa if swa else self.rope_base
        inv = 1.0 / base ** (np.arange(0, self.head_dim, 2, dtype=np.float64) / self.head_dim)
        if swa:  # gemma3's local layers use plain rope (HF "rope_local_base_freq")
            return inv
        if freq_factors is not None:  # GGUF rope_freqs.weight (llama 3.1+): theta / factor
            inv = inv / freq_factors.astype(np.float64)
        elif self.llama3_rope is not None:
            inv = _llama3_inv_freq(inv, self.llama3_rope)
        return inv / self.rope_scale


def _llama3_inv_freq(inv: np.ndarray, p: dict[str, float]) -> np.ndarray:
    """HF's ``_compute_llama3_parameters``: smooth frequency-dependent rope scaling."""
    factor, lo, hi = float(p["factor"]), float(p["low_freq_factor"]), float(p["high_freq_factor"])
    old = float(p["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    scaled = np.where(wavelen > old / lo, inv / factor, inv)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / hi) & (wavelen <= old / lo)
    return np.where(medium, smoothed, scaled)


def _gemma3_swa(n_layers: int, pattern: int = 6) -> frozenset[int]:
    """gemma3's layer pattern: every ``pattern``-th layer is global, the rest slide."""
    return frozenset(i for i in range(n_layers) if (i + 1) % pattern != 0)


def _gguf_rows(gf: Any, name: str) -> int:
    """The outer (slowest) dimension of a GGUF tensor, e.g. V for ``token_embd.weight``."""
    return next((int(t.shape[-1]) for t in gf.reader.tensors if t.name == name), 0)


def _hparams_from_gguf(gf: Any) -> HParams:
    arch = gf.arch
    n_embd = int(gf.arch_get("embedding_length"))
    n_head = int(gf.arch_get("attention.head_count"))
    head_dim = int(gf.arch_get("attention.key_length", n_embd // n_head))
    n_rot = int(gf.arch_get("rope.dimension_count", head_dim))
    if n_rot != head_dim:
        raise ModelLoadError(
            f"'{gf.path}': partial rope ({n_rot} of {head_dim} dims) is not supported "
            "by the numpy backend"
        )
    scaling = str(gf.arch_get("rope.scaling.type", "none"))
    if scaling not in ("none", "linear"):
        raise ModelLoadError(f"'{gf.path}': rope scaling '{scaling}' is not supported")
    rope_scale = float(gf.arch_get("rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0
    n_layers = int(gf.arch_get("block_count"))
    hp = HParams(
        arch=arch,
        n_layers=n_layers,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(gf.arch_get("attention.head_count_kv", n_head)),
        head_dim=head_dim,
        n_ff=int(gf.arch_get("feed_forward_length")),
        n_vocab=int(gf.info.vocab_size) or _gguf_rows(gf, "token_embd.weight"),
        context_length=int(gf.arch_get("context_length", 0)),
        rms_eps=float(gf.arch_get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_base=float(gf.arch_get("rope.freq_base", 10000.0)),
        rope_scale=rope_scale or 1.0,
        attn_scale=head_dim**-0.5,
    )
    if arch == "gemma3":
        window = int(gf.arch_get("attention.sliding_window", 0))
        # llama.cpp (llama-model.cpp, LLM_ARCH_GEMMA3): SWA pattern 6, local rope theta 10000
        # unless rope.freq_base_swa says otherwise; attention scale 1/sqrt(head_dim), except
        # for the 27B (62 layers): 1/sqrt(D/H).
        hp = replace(
            hp,
            swa_window=window,
            swa_layers=_gemma3_swa(n_layers) if window > 0 else frozenset(),
            rope_base_swa=float(gf.arch_get("rope.freq_base_swa", 10000.0)),
            act="gelu_tanh",
            embd_scale=math.sqrt(n_embd),
            attn_scale=(n_embd / n_head) ** -0.5 if n_layers == 62 else head_dim**-0.5,
            qk_norm=True,
            sandwich_norm=True,
        )
    return hp


def _hparams_from_hf(cfg: dict[str, Any], arch: str, folder: Path) -> HParams:
    n_embd = int(cfg["hidden_size"])
    n_head = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or n_embd // n_head)
    n_layers = int(cfg["num_hidden_layers"])
    rs = cfg.get("rope_scaling") or {}
    rope_type = rs.get("rope_type", rs.get("type", "default"))
    if rope_type not in ("default", "linear", "llama3"):
        raise ModelLoadError(f"'{folder}': rope scaling '{rope_type}' is not supported")
    if float(cfg.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ModelLoadError(f"'{folder}': partial rope is not supported by the numpy backend")
    hp = HParams(
        arch=arch,
        n_layers=n_layers,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(cfg.get("num_key_value_heads") or n_head),
        head_dim=head_dim,
        n_ff=int(cfg["intermediate_size"]),
        n_vocab=int(cfg["vocab_size"]),
        context_length=int(cfg.get("max_position_embeddings", 0)),
        rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_base=float(cfg.get("rope_theta", 10000.0)),
        rope_scale=float(rs["factor"]) if rope_type == "linear" else 1.0,
        attn_scale=head_dim**-0.5,
        llama3_rope=dict(rs) if rope_type == "llama3" else None,
    )
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "silu"
    if act not in ("silu", "gelu_pytorch_tanh"):
        raise ModelLoadError(f"'{folder}': activation '{act}' is not supported")
    hp = replace(hp, act="silu" if act == "silu" else "gelu_tanh")
    if arch != "gemma3" and cfg.get("use_sliding_window"):
        raise ModelLoadError(f"'{folder}': sliding-window {arch} models are not supported")
    if arch == "gemma3":
        window = int(cfg.get("sliding_window") or 0)
        types = cfg.get("layer_types")
        if types:
            swa = frozenset(i for i, t in enumerate(types) if t == "sliding_attention")
        else:
            swa = _gemma3_swa(n_layers, int(cfg.get("sliding_window_pattern", 6)))
        if cfg.get("final_logit_softcapping") or cfg.get("attn_logit_softcapping"):
            raise ModelLoadError(f"'{folder}': logit soft-capping is not supported")
        hp = replace(
            hp,
            swa_window=window,
            swa_layers=swa if window > 0 else frozenset(),
            rope_base_swa=float(cfg.get("rope_local_base_freq", 10000.0)),
            embd_scale=math.sqrt(n_embd),
            attn_scale=float(cfg.get("query_pre_attn_scalar", head_dim)) ** -0.5,
            qk_norm=True,
            sandwich_norm=True,
        )
    return hp


# --------------------------------------------------------------------------- weights


@dataclass
class LayerWeights:
    """One transformer block, pre-transposed for ``x @ W`` (D = n_embd, F = n_ff).

    Attributes:
        attn_norm: ``[D]`` RMSNorm weight before attention.
        wqkv: ``[D, (H + 2*KV) * head_dim]`` fused Q, K, V projections (HF/NEOX row order).
        bqkv: ``[(H + 2*KV) * head_dim]`` fused biases (qwen2), or None.
        wo: ``[H * head_dim, D]`` attention output projection.
        ffn_norm: ``[D]`` RMSNorm weight before the MLP.
        w_gate_up: ``[D, 2F]`` fused gate and up projections.
        w_down: ``[F, D]`` down projection.
        q_norm, k_norm: ``[head_dim]`` per-head RMSNorm weights (gemma3), or None.
        post_attn_norm, post_ffn_norm: ``[D]`` sandwich norms (gemma3), or None.
        swa: True for a sliding-window layer.
    """

    attn_norm: np.ndarray
    wqkv: np.ndarray
    bqkv: np.ndarray | None
    wo: np.ndarray
    ffn_norm: np.ndarray
    w_gate_up: np.ndarray
    w_down: np.ndarray
    q_norm: np.ndarray | None = None
    k_norm: np.ndarray | None = None
    post_attn_norm: np.ndarray | None = None
    post_ffn_norm: np.ndarray | None = None
    swa: bool = False


@dataclass
class Weights:
    """All weights in the compute dtype.

    Attributes:
        tok_embd: ``[V, D]`` token embedding (rows are looked up), or None for tied
            embeddings: then the one copy is kept as ``output`` (the layout the LM head's
            GEMV reads fastest) and :meth:`embed` gathers its columns.
        out_norm: ``[D]`` final RMSNorm weight.
        output: ``[D, V]`` LM head, contiguous.
        layers: the blocks.
        freq_factors: GGUF ``rope_freqs.weight`` ``[head_dim/2]``, or None.
    """

    tok_embd: np.ndarray | None
    out_norm: np.ndarray
    output: np.ndarray
    layers: list[LayerWeights]
    freq_factors: np.ndarray | None = None

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """Embedding rows for ``ids: int64[T]`` -> ``[T, D]``."""
        if self.tok_embd is None:
            return np.ascontiguousarray(self.output[:, ids].T)
        return self.tok_embd[ids]


def _build_weights(
    t: dict[str, np.ndarray], hp: HParams, dtype: Any, where: str, permuted_qk: bool
) -> Weights:
    """Turn ``{gguf-style name: float32[out, in]}`` into :class:`Weights` (consumes ``t``).

    Args:
        t: tensors named as in GGUF (``blk.{i}.attn_q.weight`` ...), in nn.Linear layout.
        hp: hyperparameters.
        dtype: compute dtype.
        where: the file or folder, for messages.
        permuted_qk: True for llama-arch GGUF files, whose Q/K rows llama.cpp permuted.
    """
    from edgespec.runtimes.numpy_weights import unpermute_rope_rows

    def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
        arr = t.pop(name, None)
        if arr is None:
            raise ModelLoadError(f"'{where}' has no tensor {name}; the file is incomplete")
        if arr.shape != shape:
            raise ModelLoadError(
                f"'{where}': tensor {name} has shape {arr.shape}, expected {shape}"
            )
        return arr

    def opt(name: str, shape: tuple[int, ...]) -> np.ndarray | None:
        return take(name, shape) if name in t else None

    def mat(*ws: np.ndarray) -> np.ndarray:
        """Concatenate ``[out_i, in]`` weights and transpose to a contiguous ``[in, sum out]``."""
        return np.ascontiguousarray(np.concatenate(ws, axis=0).T, dtype=dtype)

    def vec(w: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(w, dtype=dtype)

    D, F, hd = hp.n_embd, hp.n_ff, hp.head_dim
    nq, nkv = hp.n_head * hd, hp.n_head_kv * hd
    layers = []
    for i in range(hp.n_layers):
        p = f"blk.{i}."
        wq = take(p + "attn_q.weight", (nq, D))
        wk = take(p + "attn_k.weight", (nkv, D))
        wv = take(p + "attn_v.weight", (nkv, D))
        bq, bk = opt(p + "attn_q.bias", (nq,)), opt(p + "attn_k.bias", (nkv,))
        bv = opt(p + "attn_v.bias", (nkv,))
        if permuted_qk:
            wq, wk = unpermute_rope_rows(wq, hp.n_head), unpermute_rope_rows(wk, hp.n_head_kv)
            if bq is not None:
                bq = unpermute_rope_rows(bq, hp.n_head)
            if bk is not None:
                bk = unpermute_rope_rows(bk, hp.n_head_kv)
        bqkv = None
        if bq is not None or bk is not None or bv is not None:
            parts = [
                np.zeros(n, np.float32) if b is None else b
                for b, n in ((bq, nq), (bk, nkv), (bv, nkv))
            ]
            bqkv = vec(np.concatenate(parts))
        qn, kn = opt(p + "attn_q_norm.weight", (hd,)), opt(p + "attn_k_norm.weight", (hd,))
        pa, pf = opt(p + "post_attention_norm.weight", (D,)), opt(p + "post_ffw_norm.weight", (D,))
        if hp.qk_norm and (qn is None or kn is None):
            raise ModelLoadError(f"'{where}' has no q/k norm weights for layer {i}")
        if hp.sandwich_norm and (pa is None or pf is None):
            raise ModelLoadError(f"'{where}' has no post-attention/post-ffw norms for layer {i}")
        layers.append(
            LayerWeights(
                attn_norm=vec(take(p + "attn_norm.weight", (D,))),
                wqkv=mat(wq, wk, wv),
                bqkv=bqkv,
                wo=mat(take(p + "attn_output.weight", (D, nq))),
                ffn_norm=vec(take(p + "ffn_norm.weight", (D,))),
                w_gate_up=mat(
                    take(p + "ffn_gate.weight", (F, D)), take(p + "ffn_up.weight", (F, D))
                ),
                w_down=mat(take(p + "ffn_down.weight", (D, F))),
                q_norm=None if qn is None else vec(qn),
                k_norm=None if kn is None else vec(kn),
                post_attn_norm=None if pa is None else vec(pa),
                post_ffn_norm=None if pf is None else vec(pf),
                swa=i in hp.swa_layers,
            )
        )
    tok = take("token_embd.weight", (hp.n_vocab, D))
    out = opt("output.weight", (hp.n_vocab, D))
    ff = opt("rope_freqs.weight", (hd // 2,))
    return Weights(
        tok_embd=None if out is None else vec(tok),
        out_norm=vec(take("output_norm.weight", (D,))),
        output=mat(tok if out is None else out),
        layers=layers,
        freq_factors=ff,
    )


#: HF tensor name suffix -> GGUF-style name suffix (per layer unless noted).
_HF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def _hf_to_gguf_names(tensors: dict[str, np.ndarray], hp: HParams) -> dict[str, np.ndarray]:
    """Rename HF tensors to GGUF-style names (and apply gemma's ``1 + w`` norm convention)."""
    layer_names = dict(_HF_LAYER_NAMES)
    if hp.sandwich_norm:  # gemma3: post_attention_layernorm is the sandwich norm
        layer_names["post_attention_layernorm.weight"] = "post_attention_norm.weight"
        layer_names["pre_feedforward_layernorm.weight"] = "ffn_norm.weight"
        layer_names["post_feedforward_layernorm.weight"] = "post_ffw_norm.weight"
    else:
        layer_names["post_attention_layernorm.weight"] = "ffn_norm.weight"
    out: dict[str, np.ndarray] = {}
    for name, arr in tensors.items():
        key = name.removeprefix("model.")
        if key == "embed_tokens.weight":
            new = "token_embd.weight"
        elif key == "norm.weight":
            new = "output_norm.weight"
        elif key == "lm_head.weight":
            new = "output.weight"
        elif key.startswith("layers."):
            _, idx, rest = key.split(".", 2)
            if rest not in layer_names:
                continue
            new = f"blk.{idx}.{layer_names[rest]}"
        else:
            continue
        if hp.arch == "gemma3" and new.endswith("norm.weight"):
            arr = arr + 1.0  # HF Gemma3RMSNorm multiplies by (1 + w); GGUF stores 1 + w
        out[new] = arr
    return out


# --------------------------------------------------------------------------- the model


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm over the last axis: ``x[..., D] * w[D] / sqrt(mean(x^2) + eps)``."""
    return x * (1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)) * w


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """NEOX rope (HF ``rotate_half``): ``x[T, heads, hd]``, ``cos, sin[T, 1, hd/2]``."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate((x1 * cos - x2 * sin, x2 * cos + x1 * sin), axis=-1)


def _silu(x: np.ndarray) -> np.ndarray:
    # sigmoid(x) = (1 + tanh(x/2)) / 2 never overflows, unlike 1 / (1 + exp(-x))
    return x * (0.5 + 0.5 * np.tanh(0.5 * x))


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


class KVCacheModel(SlotCacheModel):
    """The cache bookkeeping of the NumPy models (this reference and
    :class:`~edgespec.sparse.blockffn.BlockFFNModel`): arrays ``k_cache, v_cache`` whose
    positions ``0 .. n_past-1`` are valid; ``truncate`` only moves ``n_past`` and ``fork``
    copies both arrays (the weights are shared)."""

    k_cache: np.ndarray
    v_cache: np.ndarray

    def fork(self) -> Self:
        """A new model sharing these weights, with a copy of the cache (same ``n_past``)."""
        other = copy.copy(self)
        other.k_cache = self.k_cache.copy()
        other.v_cache = self.v_cache.copy()
        return other


def _kv_store(
    name: str | None, hp: HParams, n_ctx: int, dtype: Any, chunk: int, info: ModelInfo
) -> Any:
    """The ``--kv-cache`` store for this model (None for no type: the model's own arrays),
    its size recorded in ``info.extra`` as llama.cpp records its cache's."""
    if name is None:
        return None
    from edgespec.kvcache import make_store, size_fields

    L, KV, hd = hp.n_layers, hp.n_head_kv, hp.head_dim
    store = make_store(
        name, n_layers=L, n_kv=KV, n_ctx=n_ctx, head_dim=hd, dtype=dtype, max_write=chunk
    )
    values = 2 * L * KV * n_ctx * hd  # the model's own arrays: its compute dtype
    info.extra.update(size_fields(name, values, store.nbytes, np.dtype(dtype).itemsize))
    return store


class NumpyModel(KVCacheModel):
    """A decoder-only transformer in NumPy with a preallocated KV cache.

    The cache holds ``k_cache, v_cache: dtype[n_layers, n_head_kv, n_ctx, head_dim]``;
    positions ``0 .. n_past-1`` are valid. ``forward`` writes new positions in place and
    ``truncate`` only moves ``n_past`` (stale entries are overwritten by the next forward).

    Args:
        hp: hyperparameters.
        weights: weights in the compute dtype.
        info: architecture facts for :attr:`info`.
        n_ctx: cache capacity in tokens.
        dtype: ``np.float32`` or ``np.float64``.
        n_threads: BLAS threads during ``forward``; None leaves NumPy's BLAS alone. Applied
            only when ``threadpoolctl`` is installed. (OpenBLAS's spinning threads make a
            2-thread decode ~25x slower when another process holds a core; 1 thread is
            as fast as 2 for small models, whose decode is memory-bound.)
        kv_cache: a ``--kv-cache`` type (``edgespec.kvcache``: f32, q8, q4, gear4) held in
            :attr:`kv_store` instead of ``k_cache, v_cache``; None: those arrays.
    """

    backend = "numpy"
    #: longest run of tokens pushed through the layers at once; longer inputs are split so
    #: that attention scores (``[H, chunk, n_past + chunk]``) stay small.
    max_chunk: int = 256

    def __init__(
        self,
        hp: HParams,
        weights: Weights,
        info: ModelInfo,
        n_ctx: int,
        dtype: Any,
        n_threads: int | None = None,
        kv_cache: str | None = None,
    ) -> None:
        if n_ctx < 1:
            raise EdgespecError(f"n_ctx must be at least 1, got {n_ctx}")
        self.hp = hp
        self.w = weights
        self.info = info
        self.n_ctx = int(n_ctx)
        self.dtype = np.dtype(dtype)
        self.n_threads = n_threads
        #: a KV store of ``kv_cache``'s type (edgespec.kvcache), or None: the arrays below
        self.kv_store = _kv_store(kv_cache, hp, self.n_ctx, self.dtype, self.max_chunk, info)
        if self.kv_store is None:
            shape = (hp.n_layers, hp.n_head_kv, self.n_ctx, hp.head_dim)
            self.k_cache = np.zeros(shape, self.dtype)
            self.v_cache = np.zeros(shape, self.dtype)
        self._n_past = 0
        # cos/sin tables [n_ctx, 1, hd/2] for full (False) and sliding (True) layers
        pos = np.arange(self.n_ctx, dtype=np.float64)[:, None]
        self._rope: dict[bool, tuple[np.ndarray, np.ndarray]] = {}
        for swa in {layer.swa for layer in weights.layers}:
            ang = pos * hp.inv_freq(swa, weights.freq_factors)[None, :]
            self._rope[swa] = (
                np.cos(ang)[:, None, :].astype(self.dtype),
                np.sin(ang)[:, None, :].astype(self.dtype),
            )

    def fork(self) -> NumpyModel:
        """A new model sharing these weights, with a copy of the cache or KV store."""
        if self.kv_store is None:
            return super().fork()
        other = copy.copy(self)
        other.kv_store = self.kv_store.fork()
        return other

    def forward(self, tokens: Sequence[int], *, all_logits: bool = True) -> np.ndarray:
        """Append ``tokens`` at positions ``n_past .. n_past+T-1`` and score them.

        Args:
            tokens: T >= 1 token ids in ``[0, V)``.
            all_logits: False returns only the last row (and skips the LM head for the rest).

        Returns:
            ``float32[T, V]`` (``float64[T, V]`` when loaded with dtype "float64"), or
            ``[1, V]`` when ``all_logits`` is False; row i scores the token after
            ``tokens[i]``.

        Raises:
            EdgespecError: the tokens do not fit in the cache (``n_past + T > n_ctx``).
            ValueError: no tokens, or an id outside the vocabulary.
        """
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        T = int(ids.size)
        if T == 0:
            raise ValueError("forward needs at least one token")
        bad = ids[(ids < 0) | (ids >= self.hp.n_vocab)]
        if bad.size:
            raise ValueError(f"token id {int(bad[0])} is outside [0, {self.hp.n_vocab})")
        p0 = self._n_past
        if p0 + T > self.n_ctx:
            raise EdgespecError(
                f"context overflow: {p0} cached + {T} new tokens > n_ctx {self.n_ctx}; "
                "load the model with a larger n_ctx or shorten the prompt"
            )
        with self._thread_limit():
            return self._forward(ids, all_logits)

    def embed_tokens(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """The vectors that enter the first block for ``tokens`` (the embedding rows, times
        the model's embedding scale): ``[T, D]`` in the model's dtype. Feeding them to
        :meth:`forward_embeds` gives exactly :meth:`forward`'s logits."""
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        x = self.w.embed(ids)
        return x * self.dtype.type(self.hp.embd_scale) if self.hp.embd_scale != 1.0 else x

    def forward_embeds(self, embeds: np.ndarray, *, all_logits: bool = True) -> np.ndarray:
        """Like :meth:`forward`, with input embeddings in place of token ids (HF's
        ``inputs_embeds``): ``embeds: float[T, D]`` enter the first block as they are (no
        embedding scale is applied) at positions ``n_past .. n_past+T-1``; later forwards
        continue with token ids over the same cache.

        Returns:
            logits ``[T, V]`` (``[1, V]`` when ``all_logits`` is False), the model's dtype.

        Raises:
            EdgespecError: the rows do not fit in the cache, or ``embeds`` is not ``[T, D]``.
        """
        x_all = np.asarray(embeds)
        if x_all.ndim != 2 or x_all.shape[1] != self.hp.n_embd or x_all.shape[0] == 0:
            raise EdgespecError(
                f"inputs_embeds must have shape [T >= 1, {self.hp.n_embd}], not {x_all.shape}"
            )
        T = int(x_all.shape[0])
        if self._n_past + T > self.n_ctx:
            raise EdgespecError(
                f"context overflow: {self._n_past} cached + {T} new rows > n_ctx {self.n_ctx}"
            )
        return self._embeds_pass(x_all.astype(self.dtype, copy=False), all_logits, True)

    def hidden_states(self, tokens: Sequence[int]) -> np.ndarray:
        """The last block's output after the final RMSNorm for ``tokens`` (appended to the
        cache like :meth:`forward`): ``[T, D]``, the model's dtype; ``logits = h @ output``.
        A context compressor pools these into memory slots (:mod:`edgespec.compress.dolphin`).
        """
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if ids.size == 0 or self._n_past + ids.size > self.n_ctx:
            raise EdgespecError(
                f"hidden_states needs 1 .. {self.n_ctx - self._n_past} tokens, not {ids.size}"
            )
        return self._embeds_pass(self.embed_tokens(ids), True, False)

    def _embeds_pass(self, x_all: np.ndarray, all_logits: bool, head: bool) -> np.ndarray:
        """Run ``x_all: [T, D]`` through the blocks in chunks over the cache; the final-normed
        rows times the LM head (``head``) or without it."""
        T = int(x_all.shape[0])
        rows = []
        with self._thread_limit():
            for s in range(0, T, self.max_chunk):
                x = x_all[s : s + self.max_chunk]
                p = self._n_past
                for li, layer in enumerate(self.w.layers):
                    x = self._block(li, layer, x, p)
                self._n_past = p + x.shape[0]
                if all_logits or s + self.max_chunk >= T:
                    x = _rms_norm(x if all_logits else x[-1:], self.w.out_norm, self.hp.rms_eps)
                    rows.append(matmul(x, self.w.output) if head else x)
        return rows[0] if len(rows) == 1 else np.concatenate(rows, axis=0)

    supports_tree = True
    #: None, or ``hook(layer, act(gate) [T, F], up [T, F]) -> [T, F]``: the input of
    #: down_proj (default ``act(gate) * up``). Training-free neuron sparsity
    #: (:mod:`edgespec.sparse.neuron`) records activations and masks neurons through it.
    ffn_hook: Callable[[int, np.ndarray, np.ndarray], np.ndarray] | None = None

    def forward_tree(self, tokens: Sequence[int], parents: Sequence[int]) -> np.ndarray:
        """Score a token tree in one pass (tree attention); see :meth:`Model.forward_tree`.

        Node i is stored in cache slot ``n_past + i`` but rotated for position
        ``n_past + depth(i) - 1`` and attends to the cache and its own ancestors only, so a
        path's logits equal a linear forward of that path. All T slots stay occupied until
        :meth:`commit_tree_path`.

        Returns:
            ``[T, V]`` logits (the model's dtype).
        """
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        T = int(ids.size)
        if len(parents) != T:
            raise ValueError("parents must list, for each node, an earlier node or -1")
        anc, depth = tree_ancestors(parents)  # anc[i, j]: j is i or an ancestor of i
        if self._n_past + T > self.n_ctx:
            raise EdgespecError(
                f"context overflow: {self._n_past} cached + {T} tree nodes > n_ctx {self.n_ctx}"
            )
        p0 = self._n_past
        with self._thread_limit():
            x = self.w.embed(ids)
            if self.hp.embd_scale != 1.0:
                x = x * self.dtype.type(self.hp.embd_scale)
            for li, layer in enumerate(self.w.layers):
                x = self._block(li, layer, x, p0, tree=(p0 + depth - 1, anc))
            self._n_past = p0 + T
            return matmul(_rms_norm(x, self.w.out_norm, self.hp.rms_eps), self.w.output)

    def commit_tree_path(self, base: int, path: Sequence[int]) -> None:
        """Keep the tree nodes ``path`` (batch indices, root to leaf) after ``base``."""
        idx = tree_path_rows(base, path, self._n_past)
        n = int(idx.size)
        if self.kv_store is not None:
            self.kv_store.commit_rows(base, idx)
            self._n_past = base + n
            return
        self.k_cache[:, :, base : base + n] = self.k_cache[:, :, idx]
        self.v_cache[:, :, base : base + n] = self.v_cache[:, :, idx]
        self._n_past = base + n

    def set_threads(self, n: int) -> bool:
        """Cap BLAS threads at ``n`` for later forwards; False (nothing changes) when
        ``threadpoolctl`` is missing and NumPy's BLAS keeps its own count."""
        if _blas_controller() is None:
            return False
        if n < 1:
            raise EdgespecError(f"n_threads must be at least 1, not {n}")
        self.n_threads = int(n)
        self.info.extra["n_threads"] = self.n_threads
        return True

    def _thread_limit(self) -> contextlib.AbstractContextManager[Any]:
        """Cap BLAS threads at ``n_threads`` for one forward (needs ``threadpoolctl``)."""
        ctl = _blas_controller() if self.n_threads else None
        if ctl is None:
            return contextlib.nullcontext()
        return ctl.limit(limits=self.n_threads, user_api="blas")

    def _forward(self, ids: np.ndarray, all_logits: bool) -> np.ndarray:
        """:meth:`forward` after validation: ``ids: int64[T]`` -> logits ``[T or 1, V]``."""
        T = int(ids.size)
        rows = []
        for s in range(0, T, self.max_chunk):
            chunk = ids[s : s + self.max_chunk]
            last = s + self.max_chunk >= T
            x = self.w.embed(chunk)
            if self.hp.embd_scale != 1.0:
                x = x * self.dtype.type(self.hp.embd_scale)
            p = self._n_past
            for li, layer in enumerate(self.w.layers):
                x = self._block(li, layer, x, p)
            self._n_past = p + chunk.size
            if all_logits or last:
                x = x if all_logits else x[-1:]
                rows.append(matmul(_rms_norm(x, self.w.out_norm, self.hp.rms_eps), self.w.output))
        return rows[0] if len(rows) == 1 else np.concatenate(rows, axis=0)

    def _mask(self, p0: int, T: int, k0: int, window: int) -> np.ndarray | None:
        """Additive mask ``[T, S]`` (0 or -inf) for queries at ``p0+t``, keys at ``k0..p0+T-1``.

        A key at ``j`` is visible to the query at ``p`` when ``j <= p`` and, with a window,
        ``p - j < window``. None when nothing is hidden.
        """
        qpos = np.arange(p0, p0 + T)[:, None]
        kpos = np.arange(k0, p0 + T)[None, :]
        hidden = kpos > qpos
        if window > 0:
            hidden |= qpos - kpos >= window
        if not hidden.any():
            return None
        return np.where(hidden, -np.inf, 0.0).astype(self.dtype)

    def _tree_mask(
        self, p0: int, k0: int, window: int, pos: np.ndarray, anc: np.ndarray
    ) -> np.ndarray:
        """Additive mask ``[T, p0 - k0 + T]``: every cached key (within the sliding window,
        by position; 0 = no window) plus the node's own ancestors."""
        if window > 0:
            past = (pos[:, None] - np.arange(k0, p0)[None, :]) >= window
        else:
            past = np.zeros((len(pos), p0 - k0), dtype=bool)
        hidden = np.concatenate([past, ~anc], axis=1)
        return np.where(hidden, -np.inf, 0.0).astype(self.dtype)

    def _block(
        self,
        li: int,
        L: LayerWeights,
        x: np.ndarray,
        p0: int,
        tree: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> np.ndarray:
        """One transformer block on ``x: [T, D]`` (cache slots ``p0..p0+T-1``) -> ``[T, D]``.

        ``tree`` = (positions ``int[T]``, ancestor matrix ``bool[T, T]``) for tree attention;
        None for a chain at positions ``p0..p0+T-1``.
        """
        hp = self.hp
        T = x.shape[0]
        H, KV, hd = hp.n_head, hp.n_head_kv, hp.head_dim
        G = H // KV
        eps = hp.rms_eps

        h = _rms_norm(x, L.attn_norm, eps)
        qkv = matmul(h, L.wqkv)
        if L.bqkv is not None:
            qkv += L.bqkv
        q = qkv[:, : H * hd].reshape(T, H, hd)
        k = qkv[:, H * hd : (H + KV) * hd].reshape(T, KV, hd)
        v = qkv[:, (H + KV) * hd :].reshape(T, KV, hd)
        if L.q_norm is not None and L.k_norm is not None:
            q = _rms_norm(q, L.q_norm, eps)
            k = _rms_norm(k, L.k_norm, eps)
        cos, sin = self._rope[L.swa]
        pos = np.arange(p0, p0 + T) if tree is None else tree[0]
        cos, sin = cos[pos], sin[pos]
        q = _rope(q, cos, sin) * self.dtype.type(hp.attn_scale)
        k = _rope(k, cos, sin)
        S = p0 + T
        window = hp.swa_window if L.swa else 0
        k0 = max(0, p0 - window + 1) if window > 0 else 0
        if self.kv_store is None:
            self.k_cache[li, :, p0:S] = k.transpose(1, 0, 2)
            self.v_cache[li, :, p0:S] = v.transpose(1, 0, 2)
            keys = self.k_cache[li, :, k0:S]  # [KV, S', hd]
            vals = self.v_cache[li, :, k0:S]
        else:
            kt, vt = k.transpose(1, 0, 2), v.transpose(1, 0, 2)
            keys, vals = self.kv_store.update(li, p0, kt, vt, k0)
        # query head h uses KV head h // G (HF repeat_kv order): group queries by KV head
        qg = q.reshape(T, KV, G, hd).transpose(1, 2, 0, 3).reshape(KV, G * T, hd)
        scores = (qg @ keys.transpose(0, 2, 1)).reshape(KV, G, T, S - k0)
        mask = (
            self._mask(p0, T, k0, window)
            if tree is None
            else self._tree_mask(p0, k0, window, *tree)
        )
        if mask is not None:
            scores += mask
        scores -= scores.max(axis=-1, keepdims=True)
        probs = np.exp(scores, out=scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        o = probs.reshape(KV, G * T, S - k0) @ vals  # [KV, G*T, hd]
        o = o.reshape(KV, G, T, hd).transpose(2, 0, 1, 3).reshape(T, H * hd)
        attn = matmul(o, L.wo)
        if L.post_attn_norm is not None:
            attn = _rms_norm(attn, L.post_attn_norm, eps)
        x = x + attn

        m = self._ffn(li, L, _rms_norm(x, L.ffn_norm, eps))
        if L.post_ffn_norm is not None:
            m = _rms_norm(m, L.post_ffn_norm, eps)
        return x + m

    def _ffn(self, li: int, L: LayerWeights, h: np.ndarray) -> np.ndarray:
        """The gated MLP of block ``li`` on its normed input ``h: [T, D]`` -> ``[T, D]``
        (chunk-sparse variants override it: :mod:`edgespec.sparse.dense`)."""
        gu = matmul(h, L.w_gate_up)
        F = self.hp.n_ff
        act = _silu(gu[:, :F]) if self.hp.act == "silu" else _gelu_tanh(gu[:, :F])
        a = act * gu[:, F:] if self.ffn_hook is None else self.ffn_hook(li, act, gu[:, F:])
        return matmul(a, L.w_down)


# --------------------------------------------------------------------------- the backend


class NumpyBackend(Backend):
    """Loads GGUF files and HF safetensors folders into :class:`NumpyModel` instances.

    ``LoadOptions.n_threads`` caps BLAS threads through ``threadpoolctl`` when it is installed
    (``info.extra["n_threads"]`` says whether it was applied); otherwise NumPy's BLAS picks
    its own count (``OPENBLAS_NUM_THREADS`` controls it).
    """

    name: ClassVar[str] = "numpy"
    accepts: ClassVar[tuple[str, ...]] = ("gguf", "hf")
    requires: ClassVar[tuple[str, ...]] = ("numpy", "gguf")
    extra: ClassVar[str] = ""
    kv_cache_types: ClassVar[tuple[str, ...]] = NUMPY_KV_TYPES
    reference: ClassVar[bool] = True

    @classmethod
    def cheap_to_load(cls, source: ModelSource, options: LoadOptions) -> bool:
        """False: loading dequantizes every weight (seconds to minutes), and the reference
        is never the fast choice, so an automatic backend choice does not time it."""
        return False

    @classmethod
    def load(cls, source: ModelSource, options: LoadOptions) -> NumpyModel:
        """Instantiate a model with an empty KV cache of ``options.n_ctx`` positions.

        Raises:
            ModelLoadError: missing, truncated or corrupt files, or an unsupported architecture.
            EdgespecError: an unknown ``options.dtype`` or source kind.
        """
        dtype = _DTYPES.get(options.dtype)
        if dtype is None:
            raise EdgespecError(
                f"numpy backend: unknown dtype '{options.dtype}'; use one of: " + ", ".join(_DTYPES)
            )
        path = Path(source.path).expanduser()
        if source.kind == "gguf":
            hp, weights, info = _load_gguf(path, dtype, options.progress)
        elif source.kind == "hf":
            hp, weights, info = _load_hf(path, dtype)
        else:
            raise EdgespecError(
                f"numpy backend cannot load a '{source.kind}' source; it accepts: "
                + ", ".join(cls.accepts)
            )
        info = replace(info, source=source.name or str(path))
        n_threads = options.n_threads if _blas_controller() is not None else None
        info = replace(info, extra={**info.extra, "n_threads": n_threads})
        return NumpyModel(hp, weights, info, options.n_ctx, dtype, n_threads, options.kv_cache)


@functools.lru_cache(maxsize=1)
def _blas_controller() -> Any:
    """A ``threadpoolctl.ThreadpoolController``, or None when threadpoolctl is missing."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


def _info(hp: HParams, extra: dict[str, Any]) -> ModelInfo:
    return ModelInfo(
        arch=hp.arch,
        n_layers=hp.n_layers,
        hidden_size=hp.n_embd,
        vocab_size=hp.n_vocab,
        context_length=hp.context_length,
        extra={
            "n_head": hp.n_head,
            "n_head_kv": hp.n_head_kv,
            "head_dim": hp.head_dim,
            "n_ff": hp.n_ff,
            "rope_base": hp.rope_base,
            "rms_eps": hp.rms_eps,
            **extra,
        },
    )


def _load_gguf(path: Path, dtype: Any, progress: bool) -> tuple[HParams, Weights, ModelInfo]:
    from tqdm.auto import tqdm

    from edgespec.gguf_file import open_gguf
    from edgespec.runtimes.numpy_weights import iter_gguf_tensors

    gf = open_gguf(path)
    if gf.arch not in SUPPORTED_GGUF_ARCHS:
        raise ModelLoadError(
            f"'{path}': architecture '{gf.arch}' is not supported by the numpy backend; "
            f"supported: {', '.join(SUPPORTED_GGUF_ARCHS)}"
        )
    try:
        hp = _hparams_from_gguf(gf)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"'{path}': unreadable model metadata ({exc})") from None
    it = tqdm(
        iter_gguf_tensors(gf.reader),
        total=len(gf.reader.tensors),
        desc=f"dequantizing {path.name}",
        unit="tensor",
        disable=not progress,
    )
    tensors = dict(it)
    weights = _build_weights(tensors, hp, dtype, str(path), permuted_qk=gf.arch == "llama")
    info = _info(hp, {**gf.info.extra, "format": "gguf", "dtype": np.dtype(dtype).name})
    return hp, weights, info


def _load_hf(folder: Path, dtype: Any) -> tuple[HParams, Weights, ModelInfo]:
    from edgespec.runtimes.numpy_weights import read_hf_config, read_hf_tensors

    if not folder.is_dir():
        raise ModelLoadError(f"'{folder}' is not a folder; pass an HF model folder")
    config = read_hf_config(folder)
    archs = config.get("architectures") or []
    family = next((SUPPORTED_HF_ARCHS[a] for a in archs if a in SUPPORTED_HF_ARCHS), None)
    if family is None:
        raise ModelLoadError(
            f"'{folder}': architecture {'/'.join(archs) or '(none)'} is not supported by the "
            f"numpy backend; supported: {', '.join(SUPPORTED_HF_ARCHS)}"
        )
    try:
        hp = _hparams_from_hf(config, family, folder)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"'{folder}/config.json': missing or bad field ({exc})") from None
    named = _hf_to_gguf_names(read_hf_tensors(folder), hp)
    if config.get("tie_word_embeddings", family == "gemma3"):
        named.pop("output.weight", None)
    weights = _build_weights(named, hp, dtype, str(folder), permuted_qk=False)
    info = _info(hp, {"format": "hf", "dtype": np.dtype(dtype).name})
    return hp, weights, info
