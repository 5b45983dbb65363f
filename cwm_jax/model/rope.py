"""Rotary position embeddings in HF's "rotate_half" layout, with optional
Llama-3 frequency scaling (CWM switches it on from mid-training)."""

from __future__ import annotations

import math
from typing import Optional

import jax.numpy as jnp
import numpy as np

from cwm_jax.model.config import RopeScaling


def inverse_frequencies(head_dim: int, theta: float,
                        scaling: Optional[RopeScaling] = None) -> np.ndarray:
  """The head_dim/2 inverse frequencies f_i = theta^(-2i/head_dim), scaled.

  Computed in float32 exactly as HF does so converted checkpoints match.
  """
  exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
  inv_freq = (1.0 / (np.float32(theta) ** exponent)).astype(np.float32)
  if scaling is None:
    return inv_freq
  low_wavelen = scaling.original_max_positions / scaling.low_freq_factor
  high_wavelen = scaling.original_max_positions / scaling.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  # Long wavelengths are divided by `factor`; short ones kept; in between a
  # linear blend in 1/wavelength.
  scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
  smooth = ((scaling.original_max_positions / wavelen - scaling.low_freq_factor)
            / (scaling.high_freq_factor - scaling.low_freq_factor))
  blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return np.where(medium, blended, scaled).astype(np.float32)


def rope_cos_sin(positions_BT, inv_freq_H2):
  """cos/sin tables [B, T, H] (f32) for integer positions."""
  angles_BTh = positions_BT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq_H2)
  angles_BTH = jnp.concatenate([angles_BTh, angles_BTh], axis=-1)
  return jnp.cos(angles_BTH), jnp.sin(angles_BTH)


def apply_rope(x_BTNH, cos_BTH, sin_BTH):
  """x*cos + rotate_half(x)*sin, in x's dtype (HF casts cos/sin to it first)."""
  half = x_BTNH.shape[-1] // 2
  rotated_BTNH = jnp.concatenate([-x_BTNH[..., half:], x_BTNH[..., :half]], axis=-1)
  cos = cos_BTH[:, :, None, :].astype(x_BTNH.dtype)
  sin = sin_BTH[:, :, None, :].astype(x_BTNH.dtype)
  return x_BTNH * cos + rotated_BTNH * sin
