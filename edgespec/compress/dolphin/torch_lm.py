"""A frozen torch copy of a :class:`~edgespec.runtimes.numpy_ref.NumpyModel`, for training.

The projector of :mod:`edgespec.compress.dolphin` learns through the target's gradient with
respect to its input embeddings, so the target must run in torch. Rather than load the
weights a second way (transformers' GGUF path dequantizes differently from ``gguf`` and needs
``accelerate``), :class:`TorchLM` wraps the NumPy reference's own arrays with
``torch.from_numpy`` (no copy: the same memory), so both forwards read the same numbers;
``tests/compress/test_memory_torch.py`` checks the logits agree. Only whole sequences are
run (no KV cache): training sees each example once per step.

torch is imported by this module: import it only where torch is required.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch


def _t(a: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # GGUF weights are read-only views; torch never writes
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(a))


def _opt(a: np.ndarray | None) -> torch.Tensor | None:
    return None if a is None else _t(a)


def _rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """NEOX rope on ``x[B, T, heads, hd]`` with ``cos, sin[T, 1, hd/2]``."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def _act(x: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "silu":
        return x * (0.5 + 0.5 * torch.tanh(0.5 * x))
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


class TorchLM:
    """The decoder of ``model`` (a NumpyModel) in torch, weights frozen and shared.

    Args:
        model: a loaded :class:`~edgespec.runtimes.numpy_ref.NumpyModel`; its dtype is the
            compute dtype here (float32, or float64 in tests).
    """

    def __init__(self, model: Any) -> None:
        self.hp = model.hp
        self.dtype = torch.float64 if model.dtype == np.float64 else torch.float32
        w = model.w
        self._embd = _opt(w.tok_embd)
        self._output = _t(w.output)  # [D, V]
        self._out_norm = _t(w.out_norm)
        self.layers: list[dict[str, Any]] = [
            {k: _opt(getattr(L, k)) for k in _LAYER_KEYS} | {"swa": L.swa} for L in w.layers
        ]
        self._rope = {swa: (_t(c), _t(s)) for swa, (c, s) in model._rope.items()}
        self.n_ctx = model.n_ctx

    @property
    def n_embd(self) -> int:
        return int(self.hp.n_embd)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids: int64[B, T]`` -> the first block's input ``[B, T, D]`` (embedding scale
        applied), as :meth:`NumpyModel.embed_tokens`."""
        x = self._output.T[ids] if self._embd is None else self._embd[ids]
        return x * self.hp.embd_scale if self.hp.embd_scale != 1.0 else x

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Causal forward of ``x: [B, T, D]`` at positions ``0..T-1`` -> final-normed
        hidden states ``[B, T, D]``."""
        hp = self.hp
        B, T, _ = x.shape
        if T > self.n_ctx:
            raise ValueError(f"{T} positions > n_ctx {self.n_ctx}")
        H, KV, hd = hp.n_head, hp.n_head_kv, hp.head_dim
        pos = torch.arange(T)
        for L in self.layers:
            h = _rms_norm(x, L["attn_norm"], hp.rms_eps)
            qkv = h @ L["wqkv"]
            if L["bqkv"] is not None:
                qkv = qkv + L["bqkv"]
            q = qkv[..., : H * hd].reshape(B, T, H, hd)
            k = qkv[..., H * hd : (H + KV) * hd].reshape(B, T, KV, hd)
            v = qkv[..., (H + KV) * hd :].reshape(B, T, KV, hd)
            if L["q_norm"] is not None:
                q = _rms_norm(q, L["q_norm"], hp.rms_eps)
                k = _rms_norm(k, L["k_norm"], hp.rms_eps)
            cos, sin = self._rope[L["swa"]]
            q = _rope(q, cos[:T], sin[:T]) * hp.attn_scale
            k = _rope(k, cos[:T], sin[:T])
            G = H // KV  # query head h uses KV head h // G
            k = k.repeat_interleave(G, dim=2)
            v = v.repeat_interleave(G, dim=2)
            scores = torch.einsum("bqhd,bkhd->bhqk", q, k)
            hidden = pos[None, :] > pos[:, None]
            window = hp.swa_window if L["swa"] else 0
            if window > 0:
                hidden = hidden | (pos[:, None] - pos[None, :] >= window)
            scores = scores.masked_fill(hidden, float("-inf"))
            probs = torch.softmax(scores, dim=-1)
            o = torch.einsum("bhqk,bkhd->bqhd", probs, v).reshape(B, T, H * hd)
            attn = o @ L["wo"]
            if L["post_attn_norm"] is not None:
                attn = _rms_norm(attn, L["post_attn_norm"], hp.rms_eps)
            x = x + attn
            h = _rms_norm(x, L["ffn_norm"], hp.rms_eps)
            gu = h @ L["w_gate_up"]
            F = hp.n_ff
            m = (_act(gu[..., :F], hp.act) * gu[..., F:]) @ L["w_down"]
            if L["post_ffn_norm"] is not None:
                m = _rms_norm(m, L["post_ffn_norm"], hp.rms_eps)
            x = x + m
        return _rms_norm(x, self._out_norm, hp.rms_eps)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden states ``[..., D]`` -> logits ``[..., V]``."""
        return h @ self._output


_LAYER_KEYS = (
    "attn_norm",
    "wqkv",
    "bqkv",
    "wo",
    "ffn_norm",
    "w_gate_up",
    "w_down",
    "q_norm",
    "k_norm",
    "post_attn_norm",
    "post_ffn_norm",
)
