"""`Mask`: what an attention call may see, as data. Every backend translates it.

Query i (at absolute index `q_offset + i` of the key sequence) sees key j iff
  causal:       j <= q_offset + i
  window W:     j >  q_offset + i - W      (W keys including the query itself)
  segment ids:  q_segment_ids[i] == kv_segment_ids[j]   (packed documents)
Rows that see no key produce zeros.
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

  def __post_init__(self):
    if self.window is not None and (not isinstance(self.window, int) or self.window <= 0):
      raise ValueError(f"Mask.window={self.window!r}: expected a positive int or None.")
    if (self.q_segment_ids is None) != (self.kv_segment_ids is None):
      raise ValueError("Mask: q_segment_ids and kv_segment_ids must be given together.")

  @property
  def has_segments(self) -> bool:
    return self.q_segment_ids is not None

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

  def dense_BTS(self, T: int, S: int) -> jax.Array:
    """The full boolean mask [B or 1, T, S]. Only for references and small T."""
    ok_TS = self.allowed_TS(jnp.arange(T), jnp.arange(S))[None]
    if self.has_segments:
      ok_TS = ok_TS & self.segments_BTS(self.q_segment_ids, self.kv_segment_ids)
    return ok_TS


def self_attention_mask(*, causal=True, window=None, segment_ids_BT=None) -> Mask:
  """The mask of a training/prefill call where queries and keys are one sequence."""
  return Mask(causal=causal, window=window, q_segment_ids=segment_ids_BT,
              kv_segment_ids=segment_ids_BT)
