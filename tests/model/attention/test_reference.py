"""`reference_attention`, the oracle the other backends are tested against, against
the textbook formula differentiated by plain autodiff in float64: values, q/k/v
gradients and a second derivative, over causal / windowed / packed / offset /
explicit-position masks, GQA ratios, and rows that see no key (zeros, zero grads).
Its softmax carries a hand-written JVP (`masked_softmax`), so this is the test that
pins it down."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwm_jax.model.attention.mask import Mask
from cwm_jax.model.attention.reference import reference_attention

B, N, H = 2, 4, 8


def _textbook(q, k, v, ok_BTS, scale):
  """softmax(q k^T * scale over the allowed keys) v, float64, every step an
  ordinary jnp op (autodiff differentiates the masks, max and exp as written). A
  row with no allowed key gives zeros."""
  T, K = q.shape[1], k.shape[2]
  q_BKGTH = q.reshape(B, T, K, N // K, H).transpose(0, 2, 3, 1, 4)
  s = jnp.einsum("BKGTH,BSKH->BKGTS", q_BKGTH, k) * scale
  ok = ok_BTS[:, None, None]
  s = jnp.where(ok, s, -1e30)
  e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
  p = jnp.where(ok, e / jnp.sum(e, axis=-1, keepdims=True), 0.0)
  o = jnp.einsum("BKGTS,BSKH->BTKGH", p, v)
  return o.reshape(B, T, N, H)


def _mask(kind, T, S, rng):
  if kind == "causal":
    return Mask()
  if kind == "window":
    return Mask(window=5)
  if kind == "packed_no_keys":  # queries of a document absent from the keys see nothing
    q_seg = np.sort(rng.integers(1, 4, size=(B, T)), axis=1)
    kv_seg = np.sort(rng.integers(1, 3, size=(B, S)), axis=1)
    return Mask(causal=False, q_segment_ids=jnp.asarray(q_seg, jnp.int32),
                kv_segment_ids=jnp.asarray(kv_seg, jnp.int32))
  if kind == "offset":  # a chunk of queries late in the key sequence
    return Mask(window=9, q_offset=S - T)
  if kind == "positions":  # decode-style: some cache slots empty (position -1)
    kv_pos = np.tile(np.arange(S), (B, 1))
    kv_pos[1, S // 2:] = -1
    q_pos = np.tile(np.arange(S - T, S), (B, 1))
    return Mask(window=7, q_positions=jnp.asarray(q_pos, jnp.int32),
                kv_positions=jnp.asarray(kv_pos, jnp.int32))
  raise ValueError(kind)


@pytest.mark.parametrize("kind, T, S, K", [
    ("causal", 12, 12, 2),
    ("window", 13, 13, 1),
    ("packed_no_keys", 11, 10, 4),
    ("offset", 6, 15, 2),
    ("positions", 3, 16, 1),
])
def test_values_and_grads_match_textbook_autodiff(kind, T, S, K):
  rng = np.random.default_rng(T * 100 + S * 10 + K)
  q, w = (rng.normal(size=(B, T, N, H)) for _ in range(2))
  k, v = (rng.normal(size=(B, S, K, H)) for _ in range(2))
  mask, scale = _mask(kind, T, S, rng), 0.7
  ok_BTS = np.broadcast_to(np.asarray(mask.dense_BTS(T, S)), (B, T, S))
  no_keys = ~ok_BTS.any(axis=-1)  # [B, T]
  assert not no_keys.all() and (kind not in ("packed_no_keys", "positions") or no_keys.any())

  def out_and_grads(fn, q, k, v):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(jnp.asarray(w, out.dtype))

  got, got_grads = jax.jit(lambda q, k, v: out_and_grads(
      lambda q, k, v: reference_attention(q, k, v, mask, scale=scale), q, k, v))(
          *(jnp.asarray(a, jnp.float32) for a in (q, k, v)))
  with jax.enable_x64(True):
    want, want_grads = jax.jit(lambda q, k, v: out_and_grads(
        lambda q, k, v: _textbook(q, k, v, jnp.asarray(ok_BTS), scale), q, k, v))(
            *(jnp.asarray(a, jnp.float64) for a in (q, k, v)))
    want, want_grads = np.asarray(want), [np.asarray(g) for g in want_grads]
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  for name, g, r in zip(("dq", "dk", "dv"), got_grads, want_grads):
    np.testing.assert_allclose(np.asarray(g), r, rtol=1e-4, atol=1e-5, err_msg=name)
  assert np.all(np.asarray(got)[no_keys] == 0) and np.all(np.asarray(got_grads[0])[no_keys] == 0)


def test_second_derivative_matches_textbook():
  """The JVP rule is itself differentiable: a Hessian-vector product of the loss in
  q (forward-over-reverse) equals the textbook's."""
  rng = np.random.default_rng(1)
  T, K = 9, 2
  q, w, dq = (rng.normal(size=(B, T, N, H)) for _ in range(3))
  k, v = (rng.normal(size=(B, T, K, H)) for _ in range(2))
  mask = Mask(window=4)
  ok_BTS = np.asarray(mask.dense_BTS(T, T))

  def hvp(fn, dtype):
    grad_q = jax.grad(lambda q: jnp.sum(fn(q) * w.astype(dtype)))
    return jax.jit(lambda q, dq: jax.jvp(grad_q, (q,), (dq,))[1])(
        jnp.asarray(q, dtype), jnp.asarray(dq, dtype))

  k32, v32 = jnp.asarray(k, jnp.float32), jnp.asarray(v, jnp.float32)
  got = hvp(lambda q: reference_attention(q, k32, v32, mask), jnp.float32)
  with jax.enable_x64(True):
    k64, v64 = jnp.asarray(k, jnp.float64), jnp.asarray(v, jnp.float64)
    want = np.asarray(hvp(lambda q: _textbook(q, k64, v64, jnp.asarray(ok_BTS), H ** -0.5),
                          jnp.float64))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
