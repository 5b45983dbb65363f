"""Sampling from logits: the allowed sets of top-k/top-p, frequencies against
softmax, the two log-probs, and config validation. References are numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwm_jax.inference.sampling import SamplingConfig, filter_logits, sample_tokens

N_DRAWS = 20000


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_allowed(logits, top_k, top_p):
  """The set HF's TopK then TopP warpers keep (numpy, one row)."""
  order = np.argsort(-logits, kind="stable")
  keep = np.ones_like(logits, bool)
  if top_k:
    keep = logits >= logits[order[min(top_k, len(logits)) - 1]]
  masked = np.where(keep, logits, -np.inf)
  probs = np.exp(np_log_softmax(masked))
  srt = np.sort(probs)[::-1]
  before = np.cumsum(srt) - srt
  n_keep = len(logits) if top_p >= 1 else max(int(np.sum(before < top_p)), 1)
  return keep & (probs >= srt[n_keep - 1])


def draw(logits_V, sampling, n=N_DRAWS, seed=0):
  logits_BV = jnp.broadcast_to(jnp.asarray(logits_V, jnp.float32), (n, len(logits_V)))
  keys = jax.random.split(jax.random.key(seed), n)
  fn = jax.jit(sample_tokens, static_argnames=("greedy", "filtered"))
  out = fn(logits_BV, keys, 3, jnp.float32(max(sampling.temperature, 1e-6)),
           jnp.int32(sampling.top_k), jnp.float32(sampling.top_p),
           greedy=sampling.greedy, filtered=sampling.filtered)
  return [np.asarray(x) for x in out]


LOGITS = np.array([2.0, 1.5, 1.0, 0.4, 0.0, -0.5, -1.0, -3.0], np.float32)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_temperature_frequencies_match_softmax(temperature):
  tokens, logprobs, raw = draw(LOGITS, SamplingConfig(temperature=temperature))
  p = np.exp(np_log_softmax(LOGITS / temperature))
  freq = np.bincount(tokens, minlength=len(LOGITS)) / N_DRAWS
  tol = 5 * np.sqrt(p * (1 - p) / N_DRAWS) + 1e-3
  np.testing.assert_array_less(np.abs(freq - p), tol)
  np.testing.assert_allclose(logprobs, np_log_softmax(LOGITS / temperature)[tokens], atol=1e-5)
  np.testing.assert_allclose(raw, np_log_softmax(LOGITS)[tokens], atol=1e-5)


@pytest.mark.parametrize("top_k,top_p", [(3, 1.0), (1, 1.0), (0, 0.7), (0, 0.3), (4, 0.8),
                                         (8, 1.0), (100, 0.95)])
def test_top_k_top_p_sample_only_the_allowed_set(top_k, top_p):
  sampling = SamplingConfig(temperature=1.3, top_k=top_k, top_p=top_p)
  tokens, logprobs, _ = draw(LOGITS, sampling)
  allowed = np_allowed(LOGITS / 1.3, top_k, top_p)
  counts = np.bincount(tokens, minlength=len(LOGITS))
  assert set(np.flatnonzero(counts)) == set(np.flatnonzero(allowed))
  # Within the set, frequencies follow the renormalised distribution.
  p = np.exp(np_log_softmax(np.where(allowed, LOGITS / 1.3, -np.inf)))
  np.testing.assert_array_less(np.abs(counts / N_DRAWS - p), 5 * np.sqrt(p * (1 - p) / N_DRAWS) + 1e-3)
  # The reported log-prob is of the distribution sampled from: scaled, then truncated.
  np.testing.assert_allclose(logprobs, np.log(p[tokens]), atol=1e-5)


def test_filter_logits_matches_numpy_on_random_rows():
  rng = np.random.RandomState(0)
  logits = rng.randn(64, 50).astype(np.float32) * 3
  for k, p in zip((0, 5, 17, 60), (1.0, 0.9, 0.5, 0.1)):
    got = np.asarray(filter_logits(jnp.asarray(logits), jnp.int32(k), jnp.float32(p)))
    for row, out in zip(logits, got):
      allowed = np_allowed(row, k, p)
      np.testing.assert_array_equal(np.isfinite(out), allowed)
      np.testing.assert_array_equal(out[allowed], row[allowed])


def test_greedy_is_argmax_and_keys_are_per_row():
  logits = np.random.RandomState(1).randn(5, 30).astype(np.float32)
  tokens, logprobs, raw = draw(logits[0], SamplingConfig(temperature=0.0), n=3)
  assert (tokens == np.argmax(logits[0])).all()
  np.testing.assert_array_equal(logprobs, raw)
  # Row b's sample depends only on its key, not on the other rows.
  keys = jax.random.split(jax.random.key(7), 5)
  fn = lambda l, k: sample_tokens(jnp.asarray(l), k, 2, 1.0, 0, 1.0, greedy=False,
                                  filtered=False)[0]
  together = np.asarray(fn(logits, keys))
  alone = [int(fn(logits[b:b + 1], keys[b:b + 1])[0]) for b in range(5)]
  assert together.tolist() == alone


@pytest.mark.parametrize("kwargs,field", [
    (dict(temperature=-0.1), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=-1), "top_k"),
    (dict(top_k=2.5), "top_k")])
def test_bad_sampling_config(kwargs, field):
  with pytest.raises(ValueError, match=f"SamplingConfig.{field}="):
    SamplingConfig(**kwargs)
