"""`band_attention` against the einsum reference (values and q/k/v gradients) over
windows shorter and longer than a block and than the sequence, ragged lengths,
GQA ratios and packed documents; its memory is a band, never the [T, T] square;
masks it cannot serve raise, naming the feature."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwm_jax.model.attention.band import band_attention, block_rows
from cwm_jax.model.attention.mask import Mask
from cwm_jax.model.attention.reference import reference_attention
from tests.model.attention.test_backends import B, _packed_segments  # [B, T] packed ids

N, H = 4, 8


def _inputs(T, K, seed, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  def normal(*shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32).astype(dtype)
  return normal(B, T, N, H), normal(B, T, K, H), normal(B, T, K, H), normal(B, T, N, H)


def _out_and_grads(fn, q, k, v, w):
  out, vjp = jax.vjp(fn, q, k, v)
  return (out, *vjp(w))


@pytest.mark.parametrize("T, window, block, K, segments", [
    (50, 5, None, 2, False),    # window < block (8): one block of keys back
    (50, 16, None, 1, True),    # block 8, two blocks back, MQA, packed documents
    (50, 33, 7, 4, False),      # ragged: 50 % 7 != 0, five blocks back, MHA
    (50, 1, None, 2, True),     # each query sees only itself
    (37, 1000, 16, 2, True),    # window longer than the sequence: plain causal
])
def test_matches_reference(T, window, block, K, segments):
  seed = zlib.crc32(repr((T, window, block, K, segments)).encode())
  q, k, v, w = _inputs(T, K, seed)
  seg = _packed_segments(np.random.default_rng(seed), T) if segments else None
  mask = Mask(window=window, q_segment_ids=seg, kv_segment_ids=seg)
  got = jax.jit(lambda q, k, v, w: _out_and_grads(
      lambda q, k, v: band_attention(q, k, v, mask, block=block), q, k, v, w))(q, k, v, w)
  want = _out_and_grads(lambda q, k, v: reference_attention(q, k, v, mask), q, k, v, w)
  for name, g, r in zip(("out", "dq", "dk", "dv"), got, want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=2e-5, err_msg=name)


def test_bfloat16_and_scale():
  """bf16 inputs give bf16 out within bf16 rounding of the float32 reference; an
  explicit scale is used."""
  q, k, v, _ = _inputs(40, 2, seed=3)
  mask = Mask(window=12)
  got = band_attention(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16),
                       mask, scale=0.2)
  assert got.dtype == jnp.bfloat16
  want = reference_attention(q, k, v, mask, scale=0.2)
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), atol=3e-2)
  assert not np.allclose(np.asarray(got, np.float32),
                         np.asarray(reference_attention(q, k, v, mask)), atol=3e-2)


def test_memory_is_a_band_not_the_square():
  """The largest array of the forward+backward program holds O(T * N * (W + block))
  elements, far below the reference's B * N * T * T scores."""
  T, W = 512, 16
  q, k, v, w = _inputs(T, 2, seed=0)
  mask = Mask(window=W)
  jaxpr = jax.make_jaxpr(lambda q, k, v, w: _out_and_grads(
      lambda q, k, v: band_attention(q, k, v, mask), q, k, v, w))(q, k, v, w)
  sizes = [int(np.prod(var.aval.shape)) for eqn in jaxpr.jaxpr.eqns for var in eqn.outvars
           if hasattr(var.aval, "shape")]
  c = block_rows(W)
  assert max(sizes) <= B * N * T * (W + 2 * c)
  assert max(sizes) < B * N * T * T // 10


@pytest.mark.parametrize("mask, T, S, phrase", [
    (Mask(), 16, 16, "without a window"),
    (Mask(causal=False, window=4), 16, 16, "without a causal"),
    (Mask(window=4, q_offset=3), 16, 19, "q_offset 3"),
    (Mask(window=4), 16, 20, "T=16 != S=20"),
])
def test_unsupported_masks_raise(mask, T, S, phrase):
  q = jnp.zeros((1, T, 2, 8))
  kv = jnp.zeros((1, S, 1, 8))
  with pytest.raises(ValueError, match=f"band_attention does not support .*{phrase}"):
    band_attention(q, kv, kv, mask)
