"""Prefill and single-token decode with a KV cache, as pure functions of the params.

    logits_BV, cache = prefill(params, tokens_BT, lengths_B, cfg, cache_len)
    logits_BV, cache = decode_step(params, cache, tokens_B, cfg)

Prompts are right-padded: row b holds lengths_B[b] real tokens at positions
0..lengths_B[b]-1, and prefill returns the logits after its last real token.
`decode_step` feeds one token per row at that row's `cache.positions` and
returns the logits after it.

The training forward (`transformer.forward`) cannot be reused as is because
it neither reads nor returns K/V, so the layer is rewritten here from the
model's own pieces (RMSNorm, SwiGLU, RoPE, attention backends, params tree)
and tested against `transformer.forward`. Layers run in scanned groups of
`scan_period` exactly as in training (`transformer.scan_plan`), so compile
time does not grow with depth; the cache rides in the scan carry and is
updated in place.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cwm_jax.inference.cache import (KVCache, constrain_cache, init_cache, readable_slots,
                                     ring_slot_positions, type_indices, write_slots)
from cwm_jax.model.attention import Mask, attention
from cwm_jax.model.attention.reference import reference_attention
from cwm_jax.model.config import GLOBAL, LOCAL, ModelConfig
from cwm_jax.model.layers import KV_AXES, Q_AXES, X_AXES, layer_mask, rms_norm, swiglu_mlp
from cwm_jax.model.rope import apply_rope, inverse_frequencies, rope_cos_sin
from cwm_jax.model.transformer import logits_from_hidden, scan_plan
from cwm_jax.sharding.rules import constrain


def _qkv(lp: dict, h_BTD, cos_BTH, sin_BTH):
  q_BTNH = constrain(jnp.einsum("BTD,DNH->BTNH", h_BTD, lp["q"]), Q_AXES)
  k_BTKH = constrain(jnp.einsum("BTD,DKH->BTKH", h_BTD, lp["k"]), KV_AXES)
  v_BTKH = constrain(jnp.einsum("BTD,DKH->BTKH", h_BTD, lp["v"]), KV_AXES)
  return apply_rope(q_BTNH, cos_BTH, sin_BTH), apply_rope(k_BTKH, cos_BTH, sin_BTH), v_BTKH


def _finish_layer(lp: dict, x_BTD, out_BTNH, cfg: ModelConfig):
  """Output projection, residual, then the pre-normed MLP block (as `decoder_layer`)."""
  out_BTNH = constrain(out_BTNH, Q_AXES)
  x_BTD = x_BTD + constrain(jnp.einsum("BTNH,NHD->BTD", out_BTNH, lp["o"]), X_AXES)
  h_BTD = rms_norm(x_BTD, lp["mlp_norm"], cfg.rms_norm_eps)
  return x_BTD + swiglu_mlp(h_BTD, lp["gate"], lp["up"], lp["down"])


def _cache_kv(cache: KVCache, layer_type: str):
  return (cache.global_k, cache.global_v) if layer_type == GLOBAL else (cache.local_k, cache.local_v)


def _with_kv(cache: KVCache, layer_type: str, k, v) -> KVCache:
  if layer_type == GLOBAL:
    return cache._replace(global_k=k, global_v=v)
  return cache._replace(local_k=k, local_v=v)


def _run_layers(layers: dict, x_BTD, cache: KVCache, cfg: ModelConfig, layer_fn):
  """Applies every layer as `layer_fn(lp, x, cache, layer_type, type_index)`,
  scanning groups of `scan_period` layers like `transformer._apply_layers`."""
  n_groups, tail_start = scan_plan(cfg)
  p = cfg.scan_period
  dtype = jnp.dtype(cfg.dtype)
  index = type_indices(cfg)
  cast = lambda lp: jax.tree.map(lambda a: a.astype(dtype), lp)

  if n_groups:
    per_group = {t: sum(cfg.layer_types[j] == t for j in range(p)) for t in (GLOBAL, LOCAL)}

    def group(carry, xs):
      x_BTD, cache = carry
      g, gp = xs
      for j in range(p):
        t = cfg.layer_types[j]
        # Layer g*p+j is row g*per_group[t] + index[j] of its type's cache stack.
        x_BTD, cache = layer_fn(cast(jax.tree.map(lambda a: a[j], gp)), x_BTD, cache, t,
                                g * per_group[t] + index[j])
      return (x_BTD, cache), None

    grouped = jax.tree.map(lambda a: a[:tail_start].reshape(n_groups, p, *a.shape[1:]), layers)
    (x_BTD, cache), _ = jax.lax.scan(group, (x_BTD, cache), (jnp.arange(n_groups), grouped))

  for i in range(tail_start, cfg.n_layers):
    x_BTD, cache = layer_fn(cast(jax.tree.map(lambda a: a[i], layers)), x_BTD, cache,
                            cfg.layer_types[i], index[i])
  return x_BTD, cache


def _embed(params: dict, tokens_BT, positions_BT, cfg: ModelConfig):
  inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
  cos_BTH, sin_BTH = rope_cos_sin(positions_BT, inv_freq)
  embed_VD = constrain(params["embed"], ("vocab", None))
  x_BTD = constrain(jnp.take(embed_VD, tokens_BT, axis=0).astype(jnp.dtype(cfg.dtype)), X_AXES)
  return x_BTD, cos_BTH, sin_BTH


def _logits(params: dict, x_B1D, cfg: ModelConfig):
  final_norm_D = params["final_norm"].astype(jnp.dtype(cfg.dtype))
  x_B1D = rms_norm(x_B1D, final_norm_D, cfg.rms_norm_eps)
  return logits_from_hidden(params, x_B1D, cfg)[:, 0]


def prefill(params: dict, tokens_BT, lengths_B, cfg: ModelConfig, cache_len: int
            ) -> tuple[jax.Array, KVCache]:
  """Runs right-padded prompts [B, T] and fills a new cache of `cache_len` slots.

  Returns the f32 logits [B, V] after each row's last real token and the cache
  with `positions` = lengths_B. Padding tokens never influence real ones
  (causal mask, padding comes last) and are overwritten by decoding.
  """
  B, T = tokens_BT.shape
  if T > cache_len:
    raise ValueError(f"prefill: prompt bucket {T} exceeds the cache length {cache_len}.")
  positions_BT = jnp.broadcast_to(jnp.arange(T), (B, T))
  x_BTD, cos_BTH, sin_BTH = _embed(params, tokens_BT, positions_BT, cfg)
  last_B = lengths_B.astype(jnp.int32) - 1

  def layer(lp, x_BTD, cache, layer_type, idx):
    h_BTD = rms_norm(x_BTD, lp["attn_norm"], cfg.rms_norm_eps)
    q_BTNH, k_BTKH, v_BTKH = _qkv(lp, h_BTD, cos_BTH, sin_BTH)
    out_BTNH = attention(q_BTNH, k_BTKH, v_BTKH, layer_mask(layer_type, None, cfg),
                         impl=cfg.attention_impl, chunk=cfg.attention_chunk)
    ck, cv = _cache_kv(cache, layer_type)
    if layer_type == GLOBAL:
      k_new, v_new = k_BTKH, v_BTKH                      # slot t <- position t
    else:
      # Slot s <- the latest real position p <= last with p % W == s.
      pos_BW = jnp.maximum(ring_slot_positions(last_B, ck.shape[2]), 0)
      take = lambda a: jnp.take_along_axis(a, pos_BW[:, :, None, None], axis=1)
      k_new, v_new = take(k_BTKH), take(v_BTKH)
    at = (idx, 0, 0, 0, 0)
    ck = jax.lax.dynamic_update_slice(ck, k_new[None].astype(ck.dtype), at)
    cv = jax.lax.dynamic_update_slice(cv, v_new[None].astype(cv.dtype), at)
    return _finish_layer(lp, x_BTD, out_BTNH, cfg), _with_kv(cache, layer_type, ck, cv)

  cache = init_cache(cfg, B, cache_len)
  x_BTD, cache = _run_layers(params["layers"], x_BTD, cache, cfg, layer)
  x_B1D = jnp.take_along_axis(x_BTD, last_B[:, None, None], axis=1)
  cache = constrain_cache(cache._replace(positions=lengths_B.astype(jnp.int32)))
  return _logits(params, x_B1D, cfg), cache


def decode_step(params: dict, cache: KVCache, tokens_B, cfg: ModelConfig
                ) -> tuple[jax.Array, KVCache]:
  """Feeds one token per row at `cache.positions`; returns the f32 logits [B, V]
  after it and the cache with the token's K/V written and positions + 1."""
  B = tokens_B.shape[0]
  q_B = cache.positions
  x_B1D, cos_B1H, sin_B1H = _embed(params, tokens_B[:, None], q_B[:, None], cfg)
  rows_B = jnp.arange(B)
  q_seg_B1 = jnp.ones((B, 1), jnp.int32)

  def layer(lp, x_B1D, cache, layer_type, idx):
    h_B1D = rms_norm(x_B1D, lp["attn_norm"], cfg.rms_norm_eps)
    q_B1NH, k_B1KH, v_B1KH = _qkv(lp, h_B1D, cos_B1H, sin_B1H)
    ck, cv = _cache_kv(cache, layer_type)
    slots = ck.shape[2]
    w_B = write_slots(layer_type, q_B, slots)
    ck = ck.at[idx, rows_B, w_B].set(k_B1KH[:, 0].astype(ck.dtype))
    cv = cv.at[idx, rows_B, w_B].set(v_B1KH[:, 0].astype(cv.dtype))
    k_BSKH = jax.lax.dynamic_index_in_dim(ck, idx, 0, keepdims=False)
    v_BSKH = jax.lax.dynamic_index_in_dim(cv, idx, 0, keepdims=False)
    # Which slots this query reads is per row: a segment-id mask says it.
    ok_BS = readable_slots(layer_type, q_B, slots).astype(jnp.int32)
    mask = Mask(causal=False, q_segment_ids=q_seg_B1, kv_segment_ids=ok_BS)
    out_B1NH = reference_attention(q_B1NH, k_BSKH, v_BSKH, mask)
    return _finish_layer(lp, x_B1D, out_B1NH, cfg), _with_kv(cache, layer_type, ck, cv)

  x_B1D, cache = _run_layers(params["layers"], x_B1D, cache, cfg, layer)
  cache = constrain_cache(cache._replace(positions=q_B + 1))
  return _logits(params, x_B1D, cfg), cache
