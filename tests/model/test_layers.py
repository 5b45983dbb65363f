"""`layers.rms_norm`: the token-folded (CPU) and unfolded programs both equal a
float64 NumPy RMSNorm, values and gradients, with a size-1 batch axis (the
shape the fold is for) and without."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwm_jax.model.dense import fold_tokens, forced_folding
from cwm_jax.model.layers import rms_norm

EPS = 1e-5


def _numpy_rms_norm_and_grads(x, w, dy):
  """y = w * x / rms(x) and the vjp of dy, in float64 by the chain rule."""
  x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
  r = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + EPS)
  n = x * r
  g = dy * w
  dx = r * (g - n * np.mean(g * n, axis=-1, keepdims=True))
  dw = np.sum(dy * n, axis=tuple(range(x.ndim - 1)))
  return w * n, dx, dw


@pytest.mark.parametrize("shape", [(1, 12, 8), (3, 5, 8)])
@pytest.mark.parametrize("fold", [True, False])
def test_rms_norm_matches_numpy_folded_or_not(shape, fold):
  rng = np.random.default_rng(0)
  x, dy = (jnp.asarray(rng.normal(size=shape) * 3, jnp.float32) for _ in range(2))
  w = jnp.asarray(rng.normal(size=shape[-1:]), jnp.float32)

  with forced_folding(fold):  # traced inside: jit below sees the forced choice
    y, vjp = jax.vjp(lambda x, w: rms_norm(x, w, EPS), x, w)
    dx, dw = vjp(dy)
  assert fold_tokens()  # the automatic choice (CPU, no mesh) is restored
  want_y, want_dx, want_dw = _numpy_rms_norm_and_grads(x, w, dy)
  assert y.shape == shape and y.dtype == jnp.float32
  np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dw, want_dw, rtol=1e-4, atol=1e-4)


def test_rms_norm_keeps_the_input_dtype_and_hf_cast_order():
  """bf16 input: normalised in f32, cast to bf16, then scaled (HF's order), folded
  or not the same bits."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(1, 7, 16)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(16,)), jnp.bfloat16)
  x32 = np.asarray(x, np.float32)
  normed = x32 / np.sqrt(np.mean(x32 * x32, axis=-1, keepdims=True) + EPS)
  want = w * jnp.asarray(normed).astype(jnp.bfloat16)
  outs = []
  for fold in (True, False):
    with forced_folding(fold):
      outs.append(jax.jit(lambda x, w: rms_norm(x, w, EPS))(x, w))
  for out in outs:
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(want, np.float32))
