"""The decode-time KV cache: a full cache for global layers, a ring buffer for local ones.

    global_k, global_v   [Lg, B, S, K, H]   slot s holds position s (S = cache length)
    local_k,  local_v    [Ll, B, W, K, H]   slot s holds the latest position p with
                                            p % W == s (W = min(window, S))
    positions            [B] int32          the position the next token is written at

Keys are stored after RoPE. Local layers only ever see the last `window` keys
(key j visible from query i iff i - window < j <= i), so their memory is W
slots whatever the sequence length. Rows of a batch have their own lengths:
every position-dependent quantity (slots, masks) is per row.

Which slots a query at position q may read is a function of q alone:
global slot s iff s <= q; local slot s holds position q - ((q - s) mod W),
readable iff that is >= 0 (it lies in (q - W, q] by construction).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from cwm_jax.model.config import GLOBAL, LOCAL, ModelConfig
from cwm_jax.sharding.rules import constrain

# [L, B, S, K, H]: the batch and KV heads split like the activations; cache
# slots are not split (a decode step reads all of them for one query).
CACHE_AXES = ("layers", "batch", None, "act_kv_heads", None)
POSITION_AXES = ("batch",)


class KVCache(NamedTuple):
  global_k: jax.Array
  global_v: jax.Array
  local_k: jax.Array
  local_v: jax.Array
  positions: jax.Array

  @property
  def length(self) -> int:
    """Slots of a global layer: the longest sequence this cache can hold."""
    return self.global_k.shape[2]

  @property
  def ring(self) -> int:
    """Slots of a local layer."""
    return self.local_k.shape[2]


def type_indices(cfg: ModelConfig) -> tuple[int, ...]:
  """Per layer, its index among the layers of its type (its row in the cache stack)."""
  seen = {GLOBAL: 0, LOCAL: 0}
  out = []
  for t in cfg.layer_types:
    out.append(seen[t])
    seen[t] += 1
  return tuple(out)


def ring_size(cfg: ModelConfig, length: int) -> int:
  """Local-layer slots for a cache of `length` global slots."""
  return min(cfg.window, length)


def cache_shapes(cfg: ModelConfig, batch: int, length: int) -> dict:
  n_global = sum(t == GLOBAL for t in cfg.layer_types)
  n_local = cfg.n_layers - n_global
  K, H = cfg.n_kv_heads, cfg.head_dim
  return {"global": (n_global, batch, length, K, H),
          "local": (n_local, batch, ring_size(cfg, length), K, H)}


def init_cache(cfg: ModelConfig, batch: int, length: int) -> KVCache:
  """An empty cache (all rows at position 0) in the compute dtype."""
  dtype = jnp.dtype(cfg.dtype)
  shapes = cache_shapes(cfg, batch, length)
  zeros = lambda shape: constrain(jnp.zeros(shape, dtype), CACHE_AXES)
  return KVCache(zeros(shapes["global"]), zeros(shapes["global"]), zeros(shapes["local"]),
                 zeros(shapes["local"]), jnp.zeros((batch,), jnp.int32))


def constrain_cache(cache: KVCache) -> KVCache:
  return KVCache(*(constrain(a, CACHE_AXES) for a in cache[:4]),
                 constrain(cache.positions, POSITION_AXES))


def cache_bytes(cfg: ModelConfig, batch: int, length: int) -> int:
  """Bytes held by a cache (K and V of every layer)."""
  item = jnp.dtype(cfg.dtype).itemsize
  return sum(2 * item * math.prod(s) for s in cache_shapes(cfg, batch, length).values())


def ring_slot_positions(last_B, ring: int):
  """[B, W]: the position held by each local slot once positions 0..last are
  written (negative: never written)."""
  s_W = jnp.arange(ring)
  return last_B[:, None] - jnp.mod(last_B[:, None] - s_W[None, :], ring)


def readable_slots(layer_type: str, q_B, slots: int):
  """[B, slots] bool: which cache slots a query at position q_B may attend to."""
  if layer_type == GLOBAL:
    return jnp.arange(slots)[None, :] <= q_B[:, None]
  return ring_slot_positions(q_B, slots) >= 0


def write_slots(layer_type: str, q_B, slots: int):
  """[B]: the slot a token at position q_B is written to."""
  return q_B if layer_type == GLOBAL else jnp.mod(q_B, slots)
