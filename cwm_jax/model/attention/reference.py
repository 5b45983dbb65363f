"""Einsum reference attention: materialises [B, K, G, T, S] scores. The oracle
every other backend is tested against; fine for short sequences only.

Two choices make it fast enough to be CPU `auto`'s pick for small score matrices
and the decode path's attention, with the same values (issue 13; benchmarks/RESULTS.md
"2026-12-05 (later)"; together, one call at T = 64-256: forward 1.2-2.9x,
forward+backward 1.2-3.1x, `python -m benchmarks.reference_layout`):
- Operands go heads-first ([B, K, G, T, H] · [B, K, S, H]) before the einsums.
  From the token-major layout XLA:CPU emitted the scores as [K, S, G*T], so every
  elementwise pass of the softmax read them transposed (4 ns per score against 0.5).
- `masked_softmax` carries softmax's own derivative, so autodiff keeps only the
  probabilities for the backward instead of the masked scores, the exp and the
  select masks (26 bytes per f32 score -> 4; `cwm_jax/sharding/plan.py` counts
  them): forward+backward 1.1-1.5x on top of the layout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cwm_jax.model.attention.mask import Mask


@jax.custom_jvp
def masked_softmax(s_BKGTS, ok_B11TS):
  """Softmax of the scores over the allowed keys (`ok`, broadcast against them);
  a row that allows no key gives zeros. Its JVP is softmax's, p * (ds - sum(p * ds)):
  the select masks, the row max and the exp are not differentiated."""
  s_BKGTS = jnp.where(ok_B11TS, s_BKGTS, -jnp.inf)
  m_BKGT1 = jnp.max(s_BKGTS, axis=-1, keepdims=True)
  m_BKGT1 = jnp.where(jnp.isfinite(m_BKGT1), m_BKGT1, 0.0)
  p_BKGTS = jnp.where(ok_B11TS, jnp.exp(s_BKGTS - m_BKGT1), 0.0)
  denom_BKGT1 = jnp.sum(p_BKGTS, axis=-1, keepdims=True)
  return p_BKGTS / jnp.where(denom_BKGT1 > 0, denom_BKGT1, 1.0)


@masked_softmax.defjvp
def _masked_softmax_jvp(primals, tangents):
  s_BKGTS, ok_B11TS = primals
  ds_BKGTS = tangents[0]  # `ok` is boolean: no tangent
  p_BKGTS = masked_softmax(s_BKGTS, ok_B11TS)
  # Masked entries have p = 0, so whatever ds holds there does not reach the result.
  return p_BKGTS, p_BKGTS * (ds_BKGTS - jnp.sum(p_BKGTS * ds_BKGTS, axis=-1, keepdims=True))


def reference_attention(q_BTNH, k_BSKH, v_BSKH, mask: Mask, *, scale=None):
  B, T, N, H = q_BTNH.shape
  S, K = k_BSKH.shape[1], k_BSKH.shape[2]
  G = N // K
  scale = H ** -0.5 if scale is None else scale
  q_BKGTH = q_BTNH.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4)
  k_BKSH = k_BSKH.transpose(0, 2, 1, 3)
  v_BKSH = v_BSKH.transpose(0, 2, 1, 3)
  s_BKGTS = jnp.einsum("BKGTH,BKSH->BKGTS", q_BKGTH, k_BKSH,
                       preferred_element_type=jnp.float32) * scale
  ok_BTS = mask.dense_BTS(T, S)
  p_BKGTS = masked_softmax(s_BKGTS, ok_BTS[:, None, None])
  o_BKGTH = jnp.einsum("BKGTS,BKSH->BKGTH", p_BKGTS.astype(v_BSKH.dtype), v_BKSH,
                       preferred_element_type=jnp.float32)
  return o_BKGTH.transpose(0, 3, 1, 2, 4).reshape(B, T, N, H).astype(q_BTNH.dtype)
