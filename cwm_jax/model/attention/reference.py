"""Einsum reference attention: materialises [B, K, G, T, S] scores. The oracle
every other backend is tested against; fine for short sequences only."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cwm_jax.model.attention.mask import Mask


def reference_attention(q_BTNH, k_BSKH, v_BSKH, mask: Mask, *, scale=None):
  B, T, N, H = q_BTNH.shape
  S, K = k_BSKH.shape[1], k_BSKH.shape[2]
  G = N // K
  scale = H ** -0.5 if scale is None else scale
  q_BTKGH = q_BTNH.reshape(B, T, K, G, H)
  s_BKGTS = jnp.einsum("BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH,
                       preferred_element_type=jnp.float32) * scale
  ok_BTS = mask.dense_BTS(T, S)
  ok_B11TS = ok_BTS[:, None, None]
  s_BKGTS = jnp.where(ok_B11TS, s_BKGTS, -jnp.inf)
  m_BKGT1 = jnp.max(s_BKGTS, axis=-1, keepdims=True)
  m_BKGT1 = jnp.where(jnp.isfinite(m_BKGT1), m_BKGT1, 0.0)
  p_BKGTS = jnp.where(ok_B11TS, jnp.exp(s_BKGTS - m_BKGT1), 0.0)
  denom_BKGT1 = jnp.sum(p_BKGTS, axis=-1, keepdims=True)
  p_BKGTS = p_BKGTS / jnp.where(denom_BKGT1 > 0, denom_BKGT1, 1.0)
  o_BTKGH = jnp.einsum("BKGTS,BSKH->BTKGH", p_BKGTS.astype(v_BSKH.dtype), v_BSKH,
                       preferred_element_type=jnp.float32)
  return o_BTKGH.reshape(B, T, N, H).astype(q_BTNH.dtype)
