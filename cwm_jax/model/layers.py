"""The pieces of one decoder layer as pure functions of arrays."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cwm_jax.model.attention import Mask, attention
from cwm_jax.model.config import GLOBAL, ModelConfig
from cwm_jax.model.rope import apply_rope


def rms_norm(x_BTD, weight_D, eps: float):
  """RMSNorm computed in f32; the normalised value is cast back to x's dtype
  before the scale (`weight * x_normed`, not `1 + weight`), as HF does."""
  x32 = x_BTD.astype(jnp.float32)
  normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return weight_D * normed.astype(x_BTD.dtype)


def swiglu_mlp(x_BTD, gate_DF, up_DF, down_FD):
  gate_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, gate_DF)
  up_BTF = jnp.einsum("BTD,DF->BTF", x_BTD, up_DF)
  return jnp.einsum("BTF,FD->BTD", jax.nn.silu(gate_BTF) * up_BTF, down_FD)


def self_attention(lp: dict, x_BTD, cos_BTH, sin_BTH, mask: Mask, cfg: ModelConfig):
  q_BTNH = jnp.einsum("BTD,DNH->BTNH", x_BTD, lp["q"])
  k_BTKH = jnp.einsum("BTD,DKH->BTKH", x_BTD, lp["k"])
  v_BTKH = jnp.einsum("BTD,DKH->BTKH", x_BTD, lp["v"])
  q_BTNH = apply_rope(q_BTNH, cos_BTH, sin_BTH)
  k_BTKH = apply_rope(k_BTKH, cos_BTH, sin_BTH)
  out_BTNH = attention(q_BTNH, k_BTKH, v_BTKH, mask, impl=cfg.attention_impl,
                       chunk=cfg.attention_chunk)
  return jnp.einsum("BTNH,NHD->BTD", out_BTNH, lp["o"])


def layer_mask(layer_type: str, segment_ids_BT, cfg: ModelConfig) -> Mask:
  window = None if layer_type == GLOBAL else cfg.window
  return Mask(causal=True, window=window, q_segment_ids=segment_ids_BT,
              kv_segment_ids=segment_ids_BT)


def decoder_layer(lp: dict, x_BTD, cos_BTH, sin_BTH, mask: Mask, cfg: ModelConfig):
  """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x))."""
  h_BTD = rms_norm(x_BTD, lp["attn_norm"], cfg.rms_norm_eps)
  x_BTD = x_BTD + self_attention(lp, h_BTD, cos_BTH, sin_BTH, mask, cfg)
  h_BTD = rms_norm(x_BTD, lp["mlp_norm"], cfg.rms_norm_eps)
  return x_BTD + swiglu_mlp(h_BTD, lp["gate"], lp["up"], lp["down"])
