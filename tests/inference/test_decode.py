"""Cached prefill + decode (and cache extension by several tokens at once, as a
multi-turn episode feeds an observation) computes the logits of the full forward pass.

Every decode step's logits are compared with `transformer.forward` run on the
prompt plus all tokens fed so far, for a batch of prompts of different
lengths, decoding 3x past a small local window (so the ring buffer wraps
several times), scanned (with an unscanned tail) and unscanned layer stacks,
and a window longer than the cache.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwm_jax.model import kv_cache as cache_lib
from cwm_jax.inference.decode import decode_step, extend, prefill
from cwm_jax.model import ModelConfig, init_params, transformer
from cwm_jax.model.config import GLOBAL, LOCAL, RopeScaling

WINDOW = 8
VOCAB = 97
CONFIGS = {
    # 1 scanned group of 4 (G L L L) + an unscanned tail (G L), GQA 4:2.
    "scanned_tail": ModelConfig(
        vocab_size=VOCAB, d_model=32, n_layers=6, n_heads=4, n_kv_heads=2, head_dim=8,
        mlp_dim=48, layer_types=(GLOBAL, LOCAL, LOCAL, LOCAL, GLOBAL, LOCAL), window=WINDOW,
        init_std=0.2, max_seq_len=256, rope_theta=10000.0),
    # Non-periodic list, unscanned, MQA, llama3 RoPE scaling, chunked prefill attention.
    "unscanned_llama3": ModelConfig(
        vocab_size=VOCAB, d_model=32, n_layers=3, n_heads=4, n_kv_heads=1, head_dim=8,
        mlp_dim=48, layer_types=(LOCAL, GLOBAL, LOCAL), window=WINDOW, init_std=0.2,
        max_seq_len=256, scan_layers=False, rope_theta=10000.0, attention_impl="chunked",
        attention_chunk=4, rope_scaling=RopeScaling(4.0, 1.0, 4.0, 8)),
}
# A window longer than the cache: local layers get as many slots as global ones.
CONFIGS["window_beyond_cache"] = CONFIGS["scanned_tail"].replace(window=100)
PROMPT_LENGTHS = (3, 11, 1, 7)
STEPS = 3 * WINDOW


@functools.partial(jax.jit, static_argnames=("cfg", "cache_len"))
def _prefill(params, tokens, lengths, cfg, cache_len):
  return prefill(params, tokens, lengths, cfg, cache_len)


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnums=(1,))
def _decode(params, cache, tokens, cfg):
  return decode_step(params, cache, tokens, cfg)


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnums=(1,))
def _extend(params, cache, tokens, counts, cfg):
  return extend(params, cache, tokens, counts, cfg)


def _close(ours, ref, what):
  ours, ref = np.asarray(ours), np.asarray(ref)
  scale = np.abs(ref).max()
  assert scale > 1.0, f"{what}: logit scale {scale} too small for the test to have teeth"
  err = np.abs(ours - ref).max()
  assert err <= 1e-4 * scale, f"{what}: max abs err {err:.3g} (logit scale {scale:.3g})"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_decode_logits_equal_forward_at_every_step(name):
  cfg = CONFIGS[name]
  params = init_params(cfg, jax.random.key(0))
  rng = np.random.RandomState(0)
  prompts = [rng.randint(0, VOCAB, n) for n in PROMPT_LENGTHS]
  fed = rng.randint(0, VOCAB, (len(prompts), STEPS))  # teacher-forced continuation
  T = 16
  cache_len = 48  # >= 11 + 24; not a multiple of the window on purpose
  tokens = np.zeros((len(prompts), T), np.int32)
  for b, p in enumerate(prompts):
    tokens[b, :len(p)] = p
    tokens[b, len(p):] = rng.randint(0, VOCAB, T - len(p))  # padding garbage must not leak
  lengths = jnp.asarray([len(p) for p in prompts], jnp.int32)

  logits, cache = _prefill(params, jnp.asarray(tokens), lengths, cfg, cache_len)
  steps = [np.asarray(logits)]
  assert cache.local_k.shape[2] == min(cfg.window, cache_len)
  assert cache.global_k.shape[2] == cache_len
  for n in range(STEPS - 1):
    logits, cache = _decode(params, cache, jnp.asarray(fed[:, n], jnp.int32), cfg)
    steps.append(np.asarray(logits))
  np.testing.assert_array_equal(cache.positions, np.asarray(lengths) + STEPS - 1)

  for b, p in enumerate(prompts):
    seq = np.concatenate([p, fed[b, :STEPS - 1]])[None]
    ref = np.asarray(transformer.forward(params, jnp.asarray(seq), cfg.replace(
        attention_impl="reference")))[0]
    for n in range(STEPS):
      _close(steps[n][b], ref[len(p) - 1 + n], f"{name} row {b} step {n}")


def test_local_cache_does_not_grow_with_length():
  cfg = CONFIGS["scanned_tail"]
  short, long = (cache_lib.cache_shapes(cfg, 2, n) for n in (64, 4096))
  assert short["local"] == long["local"] == (4, 2, WINDOW, 2, 8)
  assert long["global"] == (2, 2, 4096, 2, 8)
  # A cache shorter than the window needs no more local slots than global ones.
  assert cache_lib.cache_shapes(cfg, 1, 5)["local"][2] == 5


@pytest.mark.parametrize("ring", [1, 3, 8])
def test_ring_slot_positions_match_numpy(ring):
  last = np.arange(-1, 3 * ring + 2)
  got = np.asarray(cache_lib.ring_slot_positions(jnp.asarray(last), ring))
  for q, row in zip(last, got):
    for s in range(ring):
      written = [p for p in range(q + 1) if p % ring == s]
      assert row[s] == (written[-1] if written else row[s])
      assert (row[s] >= 0) == bool(written)


@pytest.mark.parametrize("name", ["scanned_tail", "unscanned_llama3"])
def test_extending_by_several_tokens_equals_forward(name):
  """Rounds of right-padded extensions with per-row counts (0 included, and more
  tokens than the local window at once, so the ring is read before it is
  overwritten), then decoding: logits after each row's last real token equal the
  full forward pass over everything fed (one causal pass over the final rows)."""
  cfg = CONFIGS[name]
  params = init_params(cfg, jax.random.key(1))
  rng = np.random.RandomState(1)
  prompts = [rng.randint(0, VOCAB, n) for n in PROMPT_LENGTHS]
  tokens = np.zeros((len(prompts), 16), np.int32)
  for b, p in enumerate(prompts):
    tokens[b, :len(p)] = p
  logits, cache = _prefill(params, jnp.asarray(tokens), jnp.asarray(PROMPT_LENGTHS, jnp.int32),
                           cfg, 64)
  fed = [list(p) for p in prompts]
  checks = []  # (row, index of the last token fed, logits after it)
  T = 2 * WINDOW + 3
  for counts in ([3, 0, T, 5], [T, 1, 7, 0], [2, T, 0, 4]):
    chunk = rng.randint(0, VOCAB, (len(prompts), T)).astype(np.int32)  # padding: garbage
    logits, cache = _extend(params, cache, jnp.asarray(chunk), jnp.asarray(counts, jnp.int32),
                            cfg)
    for b, n in enumerate(counts):
      fed[b] += list(chunk[b, :n])
      if n:
        checks.append((b, len(fed[b]) - 1, np.asarray(logits)[b]))
    np.testing.assert_array_equal(cache.positions, [len(f) for f in fed])
  step = rng.randint(0, VOCAB, len(prompts)).astype(np.int32)
  logits, cache = _decode(params, cache, jnp.asarray(step), cfg)
  for b in range(len(prompts)):
    fed[b].append(int(step[b]))
    checks.append((b, len(fed[b]) - 1, np.asarray(logits)[b]))
  L = max(len(f) for f in fed)
  rows = np.asarray([f + [0] * (L - len(f)) for f in fed], np.int32)  # causal: tails unseen
  ref = np.asarray(jax.jit(transformer.forward, static_argnames="cfg")(
      params, jnp.asarray(rows), cfg=cfg.replace(attention_impl="reference")))
  assert len(checks) == 13
  for b, k, got in checks:
    _close(got, ref[b, k], f"{name} row {b} token {k}")
