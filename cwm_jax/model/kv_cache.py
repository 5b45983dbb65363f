"""The KV cache, and how one attention layer reads and writes it.

    global_k, global_v   [Lg, B, S, K, H]   slot s holds position s (S = cache length)
    local_k,  local_v    [Ll, B, W, K, H]   slot s holds the latest position p with
                                            p % W == s (W = min(window, S))
    positions            [B] int32          the position the next token is written at

Keys are stored after RoPE. Local layers only ever see the last `window` keys
(key j visible from query i iff i - window < j <= i), so their memory is W
slots whatever the sequence length. Rows of a batch have their own lengths:
every position-dependent quantity (slots, masks) is per row.

A forward pass with a cache feeds T new tokens per row at positions
`positions[b] + t`, of which the first `counts[b]` are real (right padding after
them is never stored where a real key lives, and never read):
  fresh      the cache is empty (a prompt from position 0): attention runs within
             the new tokens with the training backends, then K/V are stored;
  extension  the cache holds earlier tokens (decoding T = 1, or a multi-turn
             observation T > 1): queries attend to the stored keys and the new
             ones, selected by position (causal, window, written), then K/V are
             stored. The ring of a local layer is read before it is overwritten
             when T > 1 (a new key may replace one an earlier new query needs).
`attend_with_cache` is that layer-level step; `layers.decoder_layer` calls it in
place of the training attention when it is given a `LayerKV`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from cwm_jax.model.attention import Mask, attention, reference_attention
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

  def stacks(self, layer_type: str) -> tuple[jax.Array, jax.Array]:
    return (self.global_k, self.global_v) if layer_type == GLOBAL else (self.local_k, self.local_v)

  def with_stacks(self, layer_type: str, k, v) -> "KVCache":
    if layer_type == GLOBAL:
      return self._replace(global_k=k, global_v=v)
    return self._replace(local_k=k, local_v=v)


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


def slot_positions(ring: bool, last_B, slots: int):
  """[B, slots]: the position each slot holds once positions 0..last_B are written
  (negative: none). Global slot s holds s."""
  if ring:
    return ring_slot_positions(last_B, slots)
  s_BS = jnp.broadcast_to(jnp.arange(slots), (last_B.shape[0], slots))
  return jnp.where(s_BS <= last_B[:, None], s_BS, -1)


@dataclasses.dataclass(frozen=True)
class LayerKV:
  """One layer's view of the cache: the stacks of its type and its row in them,
  where the new tokens start (start_B) and how many are real (count_B)."""
  k_LBSKH: jax.Array
  v_LBSKH: jax.Array
  index: jax.Array | int
  start_B: jax.Array
  count_B: jax.Array
  ring: bool
  fresh: bool


def _position_attention(q_BTNH, k_BSKH, v_BSKH, q_pos_BT, kv_pos_BS, window: Optional[int]):
  """Attention where key j is visible from query i iff 0 <= pos_j <= pos_i and
  (with a window) pos_i - pos_j < window. Einsum over all keys (decode-sized)."""
  mask = Mask(causal=True, window=window, q_positions=q_pos_BT, kv_positions=kv_pos_BS)
  return reference_attention(q_BTNH, k_BSKH, v_BSKH, mask)


def _store_fresh(kv: LayerKV, k_BTKH, v_BTKH):
  """Stacks with the new tokens of a fresh cache stored (slot t <- position t;
  a ring slot <- the latest real position with that residue)."""
  slots = kv.k_LBSKH.shape[2]
  if kv.ring:
    pos_BW = jnp.maximum(ring_slot_positions(kv.count_B - 1, slots), 0)
    take = lambda a: jnp.take_along_axis(a, pos_BW[:, :, None, None], axis=1)
    k_new, v_new = take(k_BTKH), take(v_BTKH)
  else:
    k_new, v_new = k_BTKH, v_BTKH
  at = (kv.index, 0, 0, 0, 0)
  ck = jax.lax.dynamic_update_slice(kv.k_LBSKH, k_new[None].astype(kv.k_LBSKH.dtype), at)
  cv = jax.lax.dynamic_update_slice(kv.v_LBSKH, v_new[None].astype(kv.v_LBSKH.dtype), at)
  return ck, cv


def _scatter(kv: LayerKV, k_BTKH, v_BTKH):
  """Stacks with new token t of row b stored at its slot, for t < count_B[b]
  (padding goes to a slot past the cache and is dropped)."""
  B, T = k_BTKH.shape[:2]
  slots = kv.k_LBSKH.shape[2]
  pos_BT = kv.start_B[:, None] + jnp.arange(T)[None, :]
  slot_BT = jnp.mod(pos_BT, slots) if kv.ring else pos_BT
  if kv.ring and T > 1:
    # Of several new tokens with one residue, only the latest real one is kept.
    later_BT = pos_BT + slots < (kv.start_B + kv.count_B)[:, None]
    keep_BT = (jnp.arange(T)[None, :] < kv.count_B[:, None]) & ~later_BT
  else:
    keep_BT = jnp.arange(T)[None, :] < kv.count_B[:, None]
  slot_BT = jnp.where(keep_BT, slot_BT, slots)  # out of bounds: dropped
  rows_BT = jnp.broadcast_to(jnp.arange(B)[:, None], (B, T))
  ck = kv.k_LBSKH.at[kv.index, rows_BT, slot_BT].set(k_BTKH.astype(kv.k_LBSKH.dtype),
                                                      mode="drop")
  cv = kv.v_LBSKH.at[kv.index, rows_BT, slot_BT].set(v_BTKH.astype(kv.v_LBSKH.dtype),
                                                      mode="drop")
  return ck, cv


def attend_with_cache(q_BTNH, k_BTKH, v_BTKH, mask: Mask, kv: LayerKV, cfg: ModelConfig):
  """(out_BTNH, (k stack, v stack)): the layer's attention for T new tokens and
  its cache with their K/V stored (see the module docstring)."""
  if kv.fresh:
    out_BTNH = attention(q_BTNH, k_BTKH, v_BTKH, mask, impl=cfg.attention_impl,
                         chunk=cfg.attention_chunk)
    return out_BTNH, _store_fresh(kv, k_BTKH, v_BTKH)
  T = q_BTNH.shape[1]
  slots = kv.k_LBSKH.shape[2]
  q_pos_BT = kv.start_B[:, None] + jnp.arange(T)[None, :]
  new_pos_BT = jnp.where(jnp.arange(T)[None, :] < kv.count_B[:, None], q_pos_BT, -1)
  window = mask.window
  if kv.ring and T > 1:
    # Read the ring as it was, plus the new keys, before storing overwrites it.
    k_BSKH = jax.lax.dynamic_index_in_dim(kv.k_LBSKH, kv.index, 0, keepdims=False)
    v_BSKH = jax.lax.dynamic_index_in_dim(kv.v_LBSKH, kv.index, 0, keepdims=False)
    old_pos_BS = slot_positions(True, kv.start_B - 1, slots)
    out_BTNH = _position_attention(
        q_BTNH, jnp.concatenate([k_BSKH, k_BTKH.astype(k_BSKH.dtype)], axis=1),
        jnp.concatenate([v_BSKH, v_BTKH.astype(v_BSKH.dtype)], axis=1), q_pos_BT,
        jnp.concatenate([old_pos_BS, new_pos_BT], axis=1), window)
    return out_BTNH, _scatter(kv, k_BTKH, v_BTKH)
  # Store, then read: no real key is overwritten while a new query still needs it.
  ck, cv = _scatter(kv, k_BTKH, v_BTKH)
  k_BSKH = jax.lax.dynamic_index_in_dim(ck, kv.index, 0, keepdims=False)
  v_BSKH = jax.lax.dynamic_index_in_dim(cv, kv.index, 0, keepdims=False)
  kv_pos_BS = slot_positions(kv.ring, kv.start_B + kv.count_B - 1, slots)
  out_BTNH = _position_attention(q_BTNH, k_BSKH, v_BSKH, q_pos_BT, kv_pos_BS, window)
  return out_BTNH, (ck, cv)


__all__ = ["KVCache", "LayerKV", "CACHE_AXES", "POSITION_AXES", "attend_with_cache",
           "cache_bytes", "cache_shapes", "constrain_cache", "init_cache", "ring_size",
           "ring_slot_positions", "slot_positions", "type_indices"]
