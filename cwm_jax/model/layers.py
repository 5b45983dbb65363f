"""The pieces of one decoder layer as pure functions of arrays.

Activations are pinned to logical axes with `constrain` (a no-op without a
mesh), so XLA's sharding propagation gives FSDP + tensor parallelism: the
residual stream is split over batch and length only, heads and the MLP
hidden over the tensor axis.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from cwm_jax.model.attention import Mask, attention
from cwm_jax.model.attention.context_parallel import context_parallel_attention
from cwm_jax.model.config import GLOBAL, ModelConfig
from cwm_jax.model.dense import fold_tokens, project
from cwm_jax.model.kv_cache import LayerKV, attend_with_cache
from cwm_jax.model.rope import apply_rope
from cwm_jax.sharding.rules import ambient_axis_size, constrain

X_AXES = ("batch", "length", "act_embed")          # residual stream [B, T, D]
Q_AXES = ("batch", "length", "act_heads", None)     # [B, T, N, H]
KV_AXES = ("batch", "length", "act_kv_heads", None)  # [B, T, K, H]
MLP_AXES = ("batch", "length", "act_mlp")           # [B, T, F]


def rms_norm(x_BTD, weight_D, eps: float):
  """RMSNorm computed in f32; the normalised value is cast back to x's dtype
  before the scale (`weight * x_normed`, not `1 + weight`), as HF does.

  Where `project` folds the token axes (CPU, `dense.fold_tokens`) so does this:
  with a size-1 batch axis, XLA:CPU ran the backward's reductions over [1, T, D]
  3-10x slower than over [T, D] (forward+backward of a [1, 1024, 128] norm 1.9 vs
  0.5 ms: `benchmarks/norm_fold.py`, issue 13). Same values either way."""
  if fold_tokens() and x_BTD.ndim > 2:
    x_MD = x_BTD.reshape(-1, x_BTD.shape[-1])
    return _rms_norm(x_MD, weight_D, eps).reshape(x_BTD.shape)
  return _rms_norm(x_BTD, weight_D, eps)


def _rms_norm(x, weight_D, eps: float):
  """RMSNorm over the last axis of x [..., D]."""
  x32 = x.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return weight_D * normed.astype(x.dtype)


def swiglu_mlp(x_BTD, gate_DF, up_DF, down_FD):
  gate_BTF, up_BTF = project("BTD,DF->BTF", x_BTD, gate_DF, up_DF)
  gate_BTF, up_BTF = constrain(gate_BTF, MLP_AXES), constrain(up_BTF, MLP_AXES)
  return constrain(project("BTF,FD->BTD", jax.nn.silu(gate_BTF) * up_BTF, down_FD), X_AXES)


def project_qkv(lp: dict, x_BTD, cos_BTH, sin_BTH):
  """Queries, keys (both after RoPE) and values of one layer."""
  # One spec for all three (K kv heads take the N letter): x is folded once.
  q_BTNH, k_BTKH, v_BTKH = project("BTD,DNH->BTNH", x_BTD, lp["q"], lp["k"], lp["v"])
  q_BTNH = constrain(q_BTNH, Q_AXES)
  k_BTKH, v_BTKH = constrain(k_BTKH, KV_AXES), constrain(v_BTKH, KV_AXES)
  return apply_rope(q_BTNH, cos_BTH, sin_BTH), apply_rope(k_BTKH, cos_BTH, sin_BTH), v_BTKH


def self_attention(lp: dict, x_BTD, cos_BTH, sin_BTH, mask: Mask, cfg: ModelConfig,
                   kv: Optional[LayerKV] = None):
  """(out_BTD, cache stacks): attention of the layer. Without `kv` (training) the
  keys are the sequence itself; with it (inference) they are the cached ones plus
  the new tokens, whose K/V are stored (`kv_cache.attend_with_cache`)."""
  q_BTNH, k_BTKH, v_BTKH = project_qkv(lp, x_BTD, cos_BTH, sin_BTH)
  stacks = None
  if kv is not None:
    out_BTNH, stacks = attend_with_cache(q_BTNH, k_BTKH, v_BTKH, mask, kv, cfg)
  elif ambient_axis_size("length") > 1:
    # Sequence sharded over the context axis: shard_map attention that gathers
    # K/V (global layers) or only a window-sized halo (local layers). With
    # zig-zag load balance the tokens arrive permuted (`context_layout`).
    impl = "chunked" if cfg.attention_impl == "auto" else cfg.attention_impl
    out_BTNH = context_parallel_attention(q_BTNH, k_BTKH, v_BTKH, mask, impl=impl,
                                          chunk=cfg.attention_chunk,
                                          load_balance=cfg.context_load_balance)
  else:
    out_BTNH = attention(q_BTNH, k_BTKH, v_BTKH, mask, impl=cfg.attention_impl,
                         chunk=cfg.attention_chunk)
  out_BTNH = constrain(out_BTNH, Q_AXES)
  return constrain(project("BTNH,NHD->BTD", out_BTNH, lp["o"]), X_AXES), stacks


def layer_mask(layer_type: str, segment_ids_BT, cfg: ModelConfig) -> Mask:
  window = None if layer_type == GLOBAL else cfg.window
  return Mask(causal=True, window=window, q_segment_ids=segment_ids_BT,
              kv_segment_ids=segment_ids_BT)


def decoder_layer(lp: dict, x_BTD, cos_BTH, sin_BTH, mask: Mask, cfg: ModelConfig,
                  kv: Optional[LayerKV] = None):
  """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x)). The one layer
  body of training, prefill and decoding: returns (x_BTD, cache stacks or None)."""
  x_BTD = constrain(x_BTD, X_AXES)
  h_BTD = rms_norm(x_BTD, lp["attn_norm"], cfg.rms_norm_eps)
  attn_BTD, stacks = self_attention(lp, h_BTD, cos_BTH, sin_BTH, mask, cfg, kv)
  x_BTD = x_BTD + attn_BTD
  h_BTD = rms_norm(x_BTD, lp["mlp_norm"], cfg.rms_norm_eps)
  return x_BTD + swiglu_mlp(h_BTD, lp["gate"], lp["up"], lp["down"]), stacks
