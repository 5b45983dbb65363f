import math

import numpy as np
import jax.numpy as jnp
import pytest

from cwm_jax.model import RopeScaling
from cwm_jax.model.rope import apply_rope, inverse_frequencies, rope_cos_sin


def llama3_by_the_book(head_dim, theta, s):
  """MODEL.md's formula, per frequency, in float64."""
  out = []
  for i in range(head_dim // 2):
    f = theta ** (-2 * i / head_dim)
    w = 2 * math.pi / f
    if w > s.original_max_positions / s.low_freq_factor:
      out.append(f / s.factor)
    elif w < s.original_max_positions / s.high_freq_factor:
      out.append(f)
    else:
      sm = (s.original_max_positions / w - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
      out.append((1 - sm) * f / s.factor + sm * f)
  return np.array(out)


@pytest.mark.parametrize("scaling", [RopeScaling(), RopeScaling(8.0, 1.0, 4.0, 64)])
def test_llama3_scaling_matches_formula(scaling):
  ours = inverse_frequencies(128, 1e6, scaling)
  ref = llama3_by_the_book(128, 1e6, scaling)
  np.testing.assert_allclose(ours, ref, rtol=2e-6)
  # The formula really changes something: low frequencies are divided.
  assert ours[-1] < inverse_frequencies(128, 1e6)[-1]


def test_rope_is_rotate_half_and_relative():
  rng = np.random.RandomState(0)
  H = 8
  q = rng.randn(1, 1, 1, H).astype(np.float32)
  k = rng.randn(1, 1, 1, H).astype(np.float32)
  inv = inverse_frequencies(H, 10000.0)

  def rot(x, pos):
    c, s = rope_cos_sin(jnp.array([[pos]]), inv)
    return np.asarray(apply_rope(jnp.asarray(x), c, s))[0, 0, 0]

  # rotate_half layout: dims i and i + H/2 form a pair rotated by angle pos*f_i.
  x = rot(q, 3)
  for i in range(H // 2):
    a = 3 * inv[i]
    np.testing.assert_allclose(x[i], q[0, 0, 0, i] * np.cos(a) - q[0, 0, 0, i + H // 2] * np.sin(a), rtol=1e-5)
  # Scores depend only on the relative offset.
  np.testing.assert_allclose(rot(q, 7) @ rot(k, 2), rot(q, 15) @ rot(k, 10), rtol=1e-4)
