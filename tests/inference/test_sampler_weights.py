"""A `Sampler` that follows a learner: weights swapped between calls and between
decode steps of a running generation (no recompiling), and per-token versions.

References: a Sampler built on the new weights; and for a swap mid-generation, the
functional prefill/decode path run step by step with each step's weights.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwm_jax.inference import Sampler, SamplingConfig, compile_count
from cwm_jax.inference.decode import decode_step, prefill
from cwm_jax.model import init_params

SAMPLING = SamplingConfig(temperature=0.8, top_k=40, top_p=0.9)
PROMPTS = [[5, 9, 13, 2], [7, 1], [3, 3, 3, 3, 3, 3, 8]]


@pytest.fixture(scope="module")
def weights(model):
  cfg, params = model
  return params, init_params(cfg, jax.random.key(42))


def test_weights_swapped_between_calls_without_recompiling(model, weights):
  cfg, _ = model
  a, b = weights
  sampler = Sampler(cfg, a, max_len=64)
  first = sampler.generate(PROMPTS, max_new_tokens=10, sampling=SAMPLING, seed=1)
  assert all((v == 0).all() for v in first.versions)
  before = compile_count()
  sampler.update_weights(b, version=3)
  after = sampler.generate(PROMPTS, max_new_tokens=10, sampling=SAMPLING, seed=1)
  assert compile_count() == before
  fresh = Sampler(cfg, b, max_len=64).generate(PROMPTS, max_new_tokens=10, sampling=SAMPLING,
                                               seed=1)
  assert after.tokens == fresh.tokens and after.tokens != first.tokens
  for got, want in zip(after.logprobs, fresh.logprobs):
    np.testing.assert_allclose(got, want, atol=1e-5)
  assert all((v == 3).all() for v in after.versions)


def test_weights_swapped_between_decode_steps(model, weights):
  """Greedy, new weights from the forward pass of token 5 on: tokens, T=1 log-probs
  and versions equal prefill + decode run with A for tokens 0-4 and B after (the
  cache keeps the keys A computed)."""
  cfg, _ = model
  a, b = weights
  sampler = Sampler(cfg, a, max_len=64)
  swap = lambda step: sampler.update_weights(b, version=7) if step == 5 else None
  out = sampler.generate(PROMPTS, max_new_tokens=9, on_step=swap)
  assert [v.tolist() for v in out.versions] == [[0] * 5 + [7] * 4] * len(PROMPTS)

  tokens = np.zeros((len(PROMPTS), 8), np.int32)
  for i, p in enumerate(PROMPTS):
    tokens[i, :len(p)] = p
  logits, cache = jax.jit(prefill, static_argnames=("cfg", "cache_len"))(
      a, jnp.asarray(tokens), jnp.asarray([len(p) for p in PROMPTS]), cfg=cfg, cache_len=32)
  step = jax.jit(decode_step, static_argnames=("cfg",))
  ref_tokens, ref_raw = [], []
  for n in range(9):
    if n:
      logits, cache = step(a if n < 5 else b, cache, jnp.asarray(ref_tokens[-1]), cfg=cfg)
    ref_tokens.append(np.asarray(jnp.argmax(logits, -1)))
    ref_raw.append(np.asarray(jax.nn.log_softmax(logits, -1))[np.arange(len(PROMPTS)),
                                                              ref_tokens[-1]])
  assert out.tokens == np.stack(ref_tokens, 1).tolist()
  np.testing.assert_allclose(np.stack(out.raw_logprobs), np.stack(ref_raw, 1), atol=1e-4)
  # Greedy: `logprobs` is the T=1 log-prob (no sampling distribution).
  np.testing.assert_array_equal(np.stack(out.logprobs), np.stack(out.raw_logprobs))


def test_update_weights_errors(model, weights):
  cfg, params = model
  sampler = Sampler(cfg, params, max_len=64)
  with pytest.raises(ValueError, match="version=-1: expected an int >= 0"):
    sampler.update_weights(params, version=-1)
  wrong = dict(params, embed=params["embed"][:10])
  with pytest.raises(ValueError, match="do not match the model config"):
    sampler.update_weights(wrong, version=1)
  assert sampler.weights()[1] == 0


def test_updated_weights_survive_the_caller_donating_its_arrays(model, weights):
  """update_weights copies: donating the learner's arrays afterwards (as the next
  train step does) leaves the sampler's weights intact."""
  cfg, _ = model
  a, b = weights
  sampler = Sampler(cfg, a, max_len=64)
  b_device = jax.tree.map(jnp.copy, b)  # the learner's own buffers
  sampler.update_weights(b_device, version=1)
  jax.jit(lambda t: jax.tree.map(lambda x: x + 1, t), donate_argnums=0)(b_device)
  out = sampler.generate(PROMPTS[:1], max_new_tokens=3)
  ref = Sampler(cfg, b, max_len=64).generate(PROMPTS[:1], max_new_tokens=3)
  assert out.tokens == ref.tokens
