"""Prefill, decode and cache extension, as pure functions of the params.

    logits_BV, cache = prefill(params, tokens_BT, lengths_B, cfg, cache_len)
    logits_BV, cache = decode_step(params, cache, tokens_B, cfg)
    logits_BV, cache = extend(params, cache, tokens_BT, counts_B, cfg)

Prompts are right-padded: row b holds lengths_B[b] real tokens at positions
0..lengths_B[b]-1, and prefill returns the logits after its last real token.
`decode_step` feeds one token per row at that row's `cache.positions`;
`extend` feeds up to T (counts_B[b] real) at once, e.g. an environment's
observation in a multi-turn episode, without recomputing the prefix. Each
returns the logits after the last real token fed.

All three run the training model's own layer body (`transformer.cached_hidden_states`
-> `layers.decoder_layer` with a `kv_cache.LayerKV`), scanned in groups of
`scan_period` like training, with the cache in the scan carry.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cwm_jax.model.config import ModelConfig
from cwm_jax.model.kv_cache import KVCache, init_cache
from cwm_jax.model.transformer import cached_hidden_states, logits_from_hidden


def _last_logits(params: dict, x_BTD, counts_B, cfg: ModelConfig):
  """f32 logits [B, V] after each row's last real token (the first when none)."""
  last_B = jnp.maximum(counts_B.astype(jnp.int32) - 1, 0)
  x_B1D = jnp.take_along_axis(x_BTD, last_B[:, None, None], axis=1)
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
  x_BTD, cache = cached_hidden_states(params, tokens_BT, cfg, init_cache(cfg, B, cache_len),
                                      lengths_B, fresh=True)
  return _last_logits(params, x_BTD, lengths_B, cfg), cache


def extend(params: dict, cache: KVCache, tokens_BT, counts_B, cfg: ModelConfig
           ) -> tuple[jax.Array, KVCache]:
  """Feeds `counts_B[b]` tokens of row b (right-padded to T) at `cache.positions`;
  returns the f32 logits [B, V] after the last one and the cache with them stored
  (positions + counts_B). A row with count 0 is left as it was."""
  x_BTD, cache = cached_hidden_states(params, tokens_BT, cfg, cache, counts_B, fresh=False)
  return _last_logits(params, x_BTD, counts_B, cfg), cache


def decode_step(params: dict, cache: KVCache, tokens_B, cfg: ModelConfig
                ) -> tuple[jax.Array, KVCache]:
  """Feeds one token per row at `cache.positions`; returns the f32 logits [B, V]
  after it and the cache with the token's K/V written and positions + 1."""
  return extend(params, cache, tokens_B[:, None], jnp.ones_like(cache.positions), cfg)
