import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cwm_jax.train.loss import (LossSums, chunked_cross_entropy, chunked_token_logprobs, mean_loss,
                                next_token_targets)

B, D, V = 3, 8, 37
# XLA's CPU backend optimisations double compile time and buy nothing here.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def dense_objective(x_BTD, head_DV, targets_BT, weights_BT, z_loss):
  """The reference: full [B, T, V] logits and optax's cross-entropy."""
  logits_BTV = jnp.einsum("BTD,DV->BTV", x_BTD, head_DV)
  ce_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, targets_BT)
  z_BT = jax.nn.logsumexp(logits_BTV, axis=-1) ** 2
  w_BT = weights_BT.astype(jnp.float32)
  return jnp.sum(w_BT * (ce_BT + z_loss * z_BT)) / jnp.sum(w_BT)


def _inputs(T, seed=0):
  kx, kh, kt, kw = jax.random.split(jax.random.key(seed), 4)
  x = jax.random.normal(kx, (B, T, D))
  head = jax.random.normal(kh, (D, V))
  targets = jax.random.randint(kt, (B, T), 0, V)
  weights = (jax.random.uniform(kw, (B, T)) < 0.7).astype(jnp.float32)
  return x, head, targets, weights


@pytest.mark.parametrize("T, chunk, z_loss", [
    (16, 4, 0.0),     # 4 strided chunks
    (13, 4, 1e-2),    # T not a multiple: 4 chunks of 4 with 3 padded positions
    (7, 100, 1e-2),   # one chunk
    (12, 5, 0.0),     # 3 chunks of 4, no padding
])
def test_chunked_matches_dense_value_and_grads(T, chunk, z_loss):
  x, head, targets, weights = _inputs(T)

  @functools.partial(jax.jit, static_argnums=(0,), compiler_options=FAST_COMPILE)
  def both(use_chunks, x, head):
    if use_chunks:
      f = lambda x, h: mean_loss(chunked_cross_entropy(x, h, targets, weights, chunk_size=chunk),
                                 z_loss)
    else:
      f = lambda x, h: dense_objective(x, h, targets, weights, z_loss)
    return jax.value_and_grad(f, argnums=(0, 1))(x, head)

  value, (gx, gh) = both(True, x, head)
  ref_value, (ref_gx, ref_gh) = both(False, x, head)
  np.testing.assert_allclose(value, ref_value, rtol=1e-6)
  np.testing.assert_allclose(gx, ref_gx, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gh, ref_gh, rtol=1e-5, atol=1e-6)
  # Masked positions get no gradient.
  assert np.all(np.asarray(gx)[np.asarray(weights) == 0] == 0)


def test_sums_and_token_count():
  x, head, targets, weights = _inputs(10)
  sums_fn = jax.jit(functools.partial(chunked_cross_entropy, chunk_size=3),
                    compiler_options=FAST_COMPILE)
  sums = sums_fn(x, head, targets, weights)
  assert isinstance(sums, LossSums)
  assert float(sums.weight) == float(weights.sum())
  logits = jnp.einsum("BTD,DV->BTV", x, head)
  lse = jax.nn.logsumexp(logits, -1)
  np.testing.assert_allclose(sums.z, jnp.sum(weights * lse ** 2), rtol=1e-5)
  # Sums over row subsets add up: what gradient accumulation relies on.
  parts = [sums_fn(x[i:i + 1], head, targets[i:i + 1], weights[i:i + 1]) for i in range(B)]
  for field in range(3):
    np.testing.assert_allclose(sum(p[field] for p in parts), sums[field], rtol=1e-5)


def test_no_tokens_gives_zero_loss():
  x, head, targets, _ = _inputs(6)
  sums = chunked_cross_entropy(x, head, targets, jnp.zeros((B, 6)), chunk_size=4)
  assert float(mean_loss(sums)) == 0.0 and float(sums.weight) == 0.0


def _biggest_array(fn, *args) -> int:
  """Elements of the largest array any equation of fn's jaxpr (nested ones too) makes."""
  jaxpr = jax.make_jaxpr(fn)(*args)
  biggest = 0

  def visit(jaxpr):
    nonlocal biggest
    for eqn in jaxpr.eqns:
      for v in eqn.outvars:
        biggest = max(biggest, int(np.prod(getattr(v.aval, "shape", ()))))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jaxpr.jaxpr)
  return biggest


def test_full_logits_are_never_materialised():
  T, chunk = 64, 16
  x, head, targets, weights = _inputs(T)
  grad = jax.grad(lambda x, h: chunked_cross_entropy(x, h, targets, weights, chunk_size=chunk).ce,
                  argnums=(0, 1))
  assert _biggest_array(grad, x, head) == B * chunk * V  # one chunk of logits, not B * T * V


def _numpy_logprobs(x, head, targets, temperature):
  logits = np.einsum("btd,dv->btv", np.asarray(x, np.float64), np.asarray(head, np.float64))
  logits = logits / temperature
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  p = np.exp(logp)
  picked = np.take_along_axis(logp, np.asarray(targets)[..., None], -1)[..., 0]
  return picked, -(p * logp).sum(-1)


@pytest.mark.parametrize("T, chunk, temperature", [(16, 4, 1.0), (13, 4, 0.7), (7, 100, 1.3)])
def test_token_logprobs_and_entropy_match_numpy_and_dense_grads(T, chunk, temperature):
  x, head, targets, weights = _inputs(T, seed=1)
  logp, ent = jax.jit(functools.partial(chunked_token_logprobs, chunk_size=chunk,
                                        temperature=temperature, with_entropy=True),
                      compiler_options=FAST_COMPILE)(x, head, targets)
  ref_logp, ref_ent = _numpy_logprobs(x, head, targets, temperature)
  np.testing.assert_allclose(logp, ref_logp, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ent, ref_ent, rtol=1e-5, atol=1e-5)
  # Gradients of a weighted sum (a policy-gradient-shaped loss) equal the dense path's.
  adv = jax.random.normal(jax.random.key(2), (B, T))

  @functools.partial(jax.jit, static_argnums=(0,), compiler_options=FAST_COMPILE)
  def grads(chunked, x, head):
    def f(x, h):
      if chunked:
        lp, e = chunked_token_logprobs(x, h, targets, chunk_size=chunk, temperature=temperature,
                                       with_entropy=True)
      else:
        logits = jnp.einsum("BTD,DV->BTV", x, h) / temperature
        all_lp = jax.nn.log_softmax(logits, -1)
        lp = jnp.take_along_axis(all_lp, targets[..., None], -1)[..., 0]
        e = -jnp.sum(jnp.exp(all_lp) * all_lp, -1)
      return jnp.sum(weights * (adv * lp + 0.1 * e))
    return jax.grad(f, argnums=(0, 1))(x, head)

  # Both sides are float32 with different summation orders: an entry that is a small
  # difference of large terms carries rounding of the order of eps * (the gradient's
  # scale), so atol follows that scale (one entry of ~0.06 among entries up to ~6 once
  # differed by 1.6e-6). A wrong chunk or temperature is off by far more.
  for got, want in zip(grads(True, x, head), grads(False, x, head)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))


def test_token_logprobs_never_materialise_full_logits():
  T, chunk = 64, 16
  x, head, targets, _ = _inputs(T)
  loss = lambda x, h: jnp.sum(chunked_token_logprobs(x, h, targets, chunk_size=chunk,
                                                      with_entropy=True)[0])
  assert _biggest_array(jax.grad(loss, argnums=(0, 1)), x, head) == B * chunk * V


def test_next_token_targets_convention():
  tokens = jnp.array([[10, 11, 12, 20, 21, 22, 0, 0]])
  segs = jnp.array([[1, 1, 1, 2, 2, 2, 0, 0]])
  mask = jnp.array([[0, 1, 1, 0, 1, 1, 0, 0]])  # e.g. prompt tokens 10, 20 unmasked
  targets, weights = next_token_targets(tokens, mask, segs)
  np.testing.assert_array_equal(targets, [[11, 12, 20, 21, 22, 0, 0, 0]])
  # t predicts t+1: counted iff mask[t+1] and same document; last position never.
  np.testing.assert_array_equal(weights, [[1, 1, 0, 1, 1, 0, 0, 0]])
  # A masked first token of the next document is excluded twice over; unmasked,
  # the document boundary alone excludes it.
  _, weights = next_token_targets(tokens, jnp.ones_like(mask), segs)
  np.testing.assert_array_equal(weights, [[1, 1, 0, 1, 1, 0, 1, 0]])
  _, weights = next_token_targets(tokens)
  np.testing.assert_array_equal(weights, [[1, 1, 1, 1, 1, 1, 1, 0]])
  # A float mask acts as per-token weights; a bool mask as 0/1.
  _, weights = next_token_targets(tokens, 0.5 * mask, segs)
  np.testing.assert_allclose(weights, 0.5 * np.array([[1, 1, 0, 1, 1, 0, 0, 0]]))
  _, weights = next_token_targets(tokens, mask.astype(bool), segs)
  assert weights.dtype == jnp.float32
  np.testing.assert_array_equal(weights, [[1, 1, 0, 1, 1, 0, 0, 0]])
