"""`Mask`: what an attention call may see, as data. Every backend translates it.

Query i (at absolute index `q_offset + i` of the key sequence) sees key j iff
  causal:       j <= q_offset + i
  window W:     j >  q_offset + i - W      (W keys including the query itself)
  segment ids:  q_segment_ids[i] == kv_segment_ids[j]   (packed documents)
Rows that see no key produce zeros.

With explicit per-row positions (`q_positions` [B, T], `kv_positions` [B, S]; a
KV cache's slots are not in position order), causal and window compare positions
instead of indices, and a key with a negative position (an empty slot) is never
seen. Only the reference backend serves such masks.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Mask:
  causal: bool = True
  window: Optional[int] = None
  q_segment_ids: Optional[jax.Array] = None   # [B, T] int
  kv_segment_ids: Optional[jax.Array] = None  # [B, S] int
  q_offset: int = 0
  q_positions: Optional[jax.Array] = None   # [B, T] int
  kv_positions: Optional[jax.Array] = None  # [B, S] int; < 0: an empty slot

  def __post_init__(self):
    if self.window is not None and (not isinstance(self.window, int) or self.window <= 0):
      raise ValueError(f"Mask.window={self.window!r}: expected a positive int or None.")
    if (self.q_segment_ids is None) != (self.kv_segment_ids is None):
      raise ValueError("Mask: q_segment_ids and kv_segment_ids must be given together.")
    if (self.q_positions is None) != (self.kv_positions is None):
      raise ValueError("Mask: q_positions and kv_positions must be given together.")
    if self.has_positions and self.q_offset:
      raise ValueError("Mask: q_offset must be 0 with explicit positions.")

  @property
  def has_segments(self) -> bool:
    return self.q_segment_ids is not None

  @property
  def has_positions(self) -> bool:
    return self.q_positions is not None

  def allowed_TS(self, q_idx_T: jax.Array, k_idx_S: jax.Array) -> jax.Array:
    """Boolean [T, S] from position structure only (no segment ids)."""
    qi = (q_idx_T + self.q_offset)[:, None]
    kj = k_idx_S[None, :]
    ok = jnp.ones((q_idx_T.shape[0], k_idx_S.shape[0]), bool)
    if self.causal:
      ok &= kj <= qi
    if self.window is not None:
      ok &= kj > qi - self.window
    return ok

  def segments_BTS(self, q_seg_BT: jax.Array, kv_seg_BS: jax.Array) -> jax.Array:
    return q_seg_BT[:, :, None] == kv_seg_BS[:, None, :]

  def positions_BTS(self) -> jax.Array:
    """Boolean [B, T, S] from explicit positions."""
    qi_BT1, kj_B1S = self.q_positions[:, :, None], self.kv_positions[:, None, :]
    ok_BTS = kj_B1S >= 0
    if self.causal:
      ok_BTS &= kj_B1S <= qi_BT1
    if self.window is not None:
      ok_BTS &= kj_B1S > qi_BT1 - self.window
    return ok_BTS

  def dense_BTS(self, T: int, S: int) -> jax.Array:
    """The full boolean mask [B or 1, T, S]. Only for references and small T."""
    if self.has_positions:
      ok_BTS = self.positions_BTS()
      if self.has_segments:
        ok_BTS &= self.segments_BTS(self.q_segment_ids, self.kv_segment_ids)
      return ok_BTS
    ok_TS = self.allowed_TS(jnp.arange(T), jnp.arange(S))[None]
    if self.has_segments:
      ok_TS = ok_TS & self.segments_BTS(self.q_segment_ids, self.kv_segment_ids)
    return ok_TS


def self_attention_mask(*, causal=True, window=None, segment_ids_BT=None) -> Mask:
  """The mask of a training/prefill call where queries and keys are one sequence."""
  return Mask(causal=causal, window=window, q_segment_ids=segment_ids_BT,
              kv_segment_ids=segment_ids_BT)
