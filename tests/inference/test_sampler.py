"""`Sampler.generate` end to end: stops, seeds, bucketing, sharding, scoring, errors."""

import jax
import numpy as np
import pytest

from cwm_jax.inference import Sampler, SamplingConfig, compile_count, generate
from cwm_jax.inference import sampler as sampler_lib
from cwm_jax.inference.stopping import decode_text
from cwm_jax.model import abstract_params, get_preset
from cwm_jax.sharding import MeshConfig, make_mesh

SAMPLING = SamplingConfig(temperature=0.9, top_p=0.95, top_k=50)


@pytest.fixture(scope="module")
def sampler(model):
  cfg, params = model
  return Sampler(cfg, params, max_len=64)


def prompts_of(lengths, seed=0, vocab=1024):
  rng = np.random.RandomState(seed)
  return [rng.randint(0, vocab, n).tolist() for n in lengths]


def test_stop_tokens_cut_each_row_at_its_first_stop(sampler):
  prompts = prompts_of((4, 9, 2))
  free = sampler.generate(prompts, max_new_tokens=12)
  # Row 0 stops at the token it produced 5th, row 1 at its 2nd; row 2 never sees either.
  stops = [free.tokens[0][4], free.tokens[1][1]]
  stopped = sampler.generate(prompts, max_new_tokens=12, stop_token_ids=stops)
  for i, toks in enumerate(free.tokens):
    cut = next((j for j, t in enumerate(toks) if t in stops), None)
    if cut is None:
      assert stopped.finish_reasons[i] == "length" and stopped.tokens[i] == toks
    else:
      assert stopped.finish_reasons[i] == "stop_token"
      assert stopped.tokens[i] == toks[:cut + 1]        # the stop token is kept
      np.testing.assert_array_equal(stopped.logprobs[i], free.logprobs[i][:cut + 1])
  assert stopped.finish_reasons[:2] == ["stop_token"] * 2


def test_stop_strings(sampler, tokenizer):
  prompts = prompts_of((3, 6, 2), seed=1, vocab=tokenizer.vocab_size)
  free = sampler.generate(prompts, max_new_tokens=16, tokenizer=tokenizer)
  # The model's vocab (1024) is padded past the tokenizer's (912): those ids have no text.
  assert free.texts == [tokenizer.decode([i for i in t if i < 912]) for t in free.tokens]
  text = free.texts[0]
  # A string that first appears in the middle of row 0's text.
  stop = text[len(text) // 2:len(text) // 2 + 3]
  stopped = sampler.generate(prompts, max_new_tokens=16, stop_strings=[stop],
                             tokenizer=tokenizer)
  for i, toks in enumerate(free.tokens):
    cut = next((j for j in range(len(toks)) if stop in decode_text(tokenizer, toks[:j + 1])), None)
    if cut is None:
      assert stopped.finish_reasons[i] == "length" and stopped.tokens[i] == toks
    else:
      assert stopped.finish_reasons[i] == "stop_string" and stopped.tokens[i] == toks[:cut + 1]
      assert stop in stopped.texts[i]
  assert stopped.finish_reasons[0] == "stop_string" and len(stopped.tokens[0]) < 16


def test_seeds_reproduce_and_rows_do_not_depend_on_batch_mates(sampler):
  a, b, c = prompts_of((5, 11, 3), seed=2)
  first = sampler.generate([a, b], max_new_tokens=10, sampling=SAMPLING, seed=3)
  again = sampler.generate([a, b], max_new_tokens=10, sampling=SAMPLING, seed=3)
  other = sampler.generate([a, b], max_new_tokens=10, sampling=SAMPLING, seed=4)
  assert first.tokens == again.tokens
  np.testing.assert_array_equal(first.logprobs[1], again.logprobs[1])
  assert first.tokens != other.tokens
  # One seed per prompt: b's sample is the same with other batch mates, at
  # another index, in another batch bucket.
  together = sampler.generate([a, b, c], max_new_tokens=10, sampling=SAMPLING, seed=[1, 2, 3])
  other = sampler.generate([c, b], max_new_tokens=10, sampling=SAMPLING, seed=[9, 2])
  assert together.tokens[1] == other.tokens[1]
  np.testing.assert_allclose(together.logprobs[1], other.logprobs[1], atol=1e-5)


def test_buckets_avoid_recompiling(model):
  cfg, params = model
  # A config no other test uses (init_std does not change the computation), so the
  # count below does not depend on which programs other tests compiled before.
  sampler = Sampler(cfg.replace(init_std=0.123), params, max_len=64)
  before = compile_count()
  # Batch bucket 2, prompt bucket 16, cache bucket 32 (longest prompt + new - 1 in (16, 32]).
  sampler.generate(prompts_of((3, 7)), max_new_tokens=20, sampling=SAMPLING)
  assert compile_count() == before + 2    # one prefill and one decode program
  before = compile_count()
  for i, lengths in enumerate([(1, 9), (12, 2), (16, 3), (4, 4)]):
    out = sampler.generate(prompts_of(lengths, seed=i), max_new_tokens=12 + i,
                           sampling=SamplingConfig(temperature=0.5 + i / 4, top_p=0.9, top_k=7 + i),
                           seed=i)
    assert [len(t) for t in out.tokens] == [12 + i] * len(lengths)
  assert compile_count() == before
  # A longer generation needs the next cache bucket: one prefill and one decode program.
  sampler.generate(prompts_of((3, 7)), max_new_tokens=40, sampling=SAMPLING)
  assert compile_count() == before + 2


def test_score_equals_generated_logprobs(sampler):
  prompts = prompts_of((6, 2, 10), seed=5)
  out = sampler.generate(prompts, max_new_tokens=12, sampling=SAMPLING, seed=1)
  # Log-probs are of the distribution sampled from: temperature-scaled, then top-k/top-p.
  behaviour, raw = sampler.score(prompts, out.tokens, sampling=SAMPLING)
  scaled, _ = sampler.score(prompts, out.tokens, temperature=SAMPLING.temperature)
  for i in range(len(prompts)):
    np.testing.assert_allclose(behaviour[i], out.logprobs[i], atol=1e-4)
    np.testing.assert_allclose(raw[i], out.raw_logprobs[i], atol=1e-4)
    assert np.all(scaled[i] <= behaviour[i] + 1e-6)  # truncation only adds mass
  assert not np.allclose(scaled[0], raw[0]) and not np.allclose(scaled[0], behaviour[0])


def test_sharded_equals_unsharded(model, sampler):
  cfg, params = model
  mesh = make_mesh(MeshConfig(data=4, tensor=2))
  sharded = Sampler(cfg, params, mesh=mesh, max_len=64)
  assert sharded.params["layers"]["k"].sharding.spec[2] == "tensor"  # kv_heads
  prompts = prompts_of((5, 1, 12), seed=6)
  ours = sharded.generate(prompts, max_new_tokens=20, sampling=SAMPLING, seed=[4, 5, 6])
  ref = sampler.generate(prompts, max_new_tokens=20, sampling=SAMPLING, seed=[4, 5, 6])
  assert ours.tokens == ref.tokens
  for a, b in zip(ours.logprobs, ref.logprobs):
    np.testing.assert_allclose(a, b, atol=1e-4)
  # The cache is split like the activations: batch over data, KV heads over tensor.
  tokens, lengths = sharded._pad_batch([np.asarray(p, np.int32) for p in prompts])
  with jax.set_mesh(mesh):
    cache = sampler_lib._PREFILL(
        sharded.params, sharded._put(tokens, ("batch", None)), sharded._put(lengths, ("batch",)),
        sampler_lib._row_keys(0, 3, 4), 1.0, 0, 1.0, cfg=cfg, cache_len=32, greedy=True,
        filtered=False)[0]
  for a in (cache.global_k, cache.local_v):
    spec = tuple(a.sharding.spec) + (None,) * (a.ndim - len(a.sharding.spec))
    assert spec == (None, "data", None, "tensor", None)


def test_generate_wrapper(model, sampler):
  cfg, params = model
  prompts = prompts_of((3, 9, 1), seed=7)
  assert generate(params, cfg, prompts, max_new_tokens=12).tokens == \
      sampler.generate(prompts, max_new_tokens=12).tokens


def test_errors(model, sampler, tokenizer):
  cfg, params = model
  with pytest.raises(ValueError, match=r"prompts\[1\] has 60 tokens.*max_new_tokens=8.*"
                                       r"max_len=64.*at most 56"):
    sampler.generate([[1], [2] * 60], max_new_tokens=8)
  with pytest.raises(ValueError, match=r"prompts\[0\] is empty"):
    sampler.generate([[]], max_new_tokens=2)
  with pytest.raises(ValueError, match=r"token ids must lie in \[0, 1024\)"):
    sampler.generate([[1, 1024]], max_new_tokens=2)
  with pytest.raises(ValueError, match="prompts\\[0\\] is text"):
    sampler.generate(["hello"], max_new_tokens=2)
  with pytest.raises(ValueError, match="need a tokenizer"):
    sampler.generate([[1]], max_new_tokens=2, stop_strings=["x"])
  with pytest.raises(ValueError, match="max_new_tokens=0"):
    sampler.generate([[1]], max_new_tokens=0)
  with pytest.raises(ValueError, match="one int per prompt"):
    sampler.generate([[1], [2]], max_new_tokens=2, seed=[1])
  with pytest.raises(ValueError, match="max_len=512.*max_seq_len"):
    Sampler(cfg, params, max_len=512)
  small = get_preset("tiny", vocab_size=512)
  small_params = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract_params(small))
  with pytest.raises(ValueError, match=r"ids 0\.\.911.*vocab_size is 512"):
    Sampler(small, small_params, max_len=32).generate([[1]], max_new_tokens=2,
                                                      tokenizer=tokenizer)
  with pytest.raises(ValueError, match="do not match the model config"):
    Sampler(small, params)
