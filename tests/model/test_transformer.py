import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from cwm_jax.model import Cwm, forward, get_preset, init_params, positions_from_segments


def small_cfg(**kw):
  base = dict(vocab_size=61, d_model=32, n_layers=6, n_heads=4, n_kv_heads=2, head_dim=8,
              mlp_dim=48, window=5, init_std=0.2, attention_impl="reference")
  base.update(kw)
  return get_preset("tiny", **base)


jit_forward = jax.jit(forward, static_argnames="cfg")


@functools.partial(jax.jit, static_argnames="cfg")
def loss_and_grads(cfg, params, tokens):
  def loss(p):
    return jnp.mean(forward(p, tokens, cfg) ** 2)
  return jax.value_and_grad(loss)(params)


def test_positions_restart_per_document():
  seg = np.array([[1, 1, 1, 2, 2, 3, 3, 3, 3], [5, 5, 5, 5, 5, 5, 0, 0, 0]])
  expected = np.array([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 0, 1, 2]])
  np.testing.assert_array_equal(positions_from_segments(jnp.asarray(seg)), expected)


@pytest.mark.parametrize("variant", [
    dict(scan_layers=True, scan_period=4),                 # 1 group of 4 + 2 unscanned layers
    dict(scan_layers=True, scan_period=2, layer_types=("global", "local") * 3),
    dict(scan_layers=True, scan_period=4, remat="full"),
    dict(scan_layers=True, scan_period=4, remat="full", remat_scope="group"),
    dict(scan_layers=True, scan_period=4, remat="dots"),
    dict(scan_layers=False, remat="dots_no_batch"),
])
def test_scan_and_remat_do_not_change_numbers(variant):
  ref_cfg = small_cfg(scan_layers=False, **{k: v for k, v in variant.items() if k == "layer_types"})
  cfg = small_cfg(**variant)
  params = init_params(cfg, jax.random.key(1))
  tokens = jax.random.randint(jax.random.key(2), (2, 13), 0, cfg.vocab_size)
  l_ref, g_ref = loss_and_grads(ref_cfg, params, tokens)
  l, g = loss_and_grads(cfg, params, tokens)
  np.testing.assert_allclose(l, l_ref, rtol=1e-6)
  # Same math, different op order: compare relative to each gradient's scale.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max())), g, g_ref)


def test_non_periodic_layer_types_need_scan_off():
  types = ("global", "local", "local", "local", "local", "global", "local", "local")
  with pytest.raises(ValueError, match="periodic with scan_period=4 .*layer 4 differs from layer 0"):
    small_cfg(n_layers=8, layer_types=types)
  small_cfg(n_layers=8, layer_types=types, scan_layers=False)


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_packed_row_equals_documents_run_alone(impl):
  cfg = small_cfg(attention_impl=impl, attention_chunk=4)
  params = init_params(cfg, jax.random.key(3))
  lengths = [7, 3, 9]
  docs = [np.random.RandomState(i).randint(0, cfg.vocab_size, n) for i, n in enumerate(lengths)]
  packed = jnp.asarray(np.concatenate(docs))[None]
  seg = jnp.asarray(np.repeat(np.arange(1, 4), lengths))[None]
  out = jit_forward(params, packed, cfg, segment_ids_BT=seg)
  start = 0
  for doc in docs:
    alone = jit_forward(params, jnp.asarray(doc)[None], cfg)
    np.testing.assert_allclose(out[0, start:start + len(doc)], alone[0], atol=2e-5, rtol=1e-5)
    start += len(doc)


def test_window_limits_what_a_local_layer_sees():
  # Changing a token more than `window` steps back changes logits only through
  # the global layers: with all layers local, it must not change them at all.
  cfg = small_cfg(layer_types=("local",) * 6, scan_period=1)
  params = init_params(cfg, jax.random.key(4))
  tokens = np.random.RandomState(0).randint(0, cfg.vocab_size, (1, 20))
  changed = tokens.copy()
  changed[0, 2] = (changed[0, 2] + 1) % cfg.vocab_size
  a = jit_forward(params, jnp.asarray(tokens), cfg)
  b = jit_forward(params, jnp.asarray(changed), cfg)
  # A change at 2 reaches position 2 + n_layers * (window - 1) at most.
  reach = 2 + cfg.n_layers * (cfg.window - 1)
  assert not np.allclose(a[0, 2], b[0, 2])
  if reach + 1 < 20:
    np.testing.assert_array_equal(a[0, reach + 1:], b[0, reach + 1:])
  np.testing.assert_array_equal(a[0, :2], b[0, :2])


def test_bfloat16_compute_is_close_to_float32():
  cfg = small_cfg()
  params = init_params(cfg, jax.random.key(5))
  tokens = jax.random.randint(jax.random.key(6), (2, 11), 0, cfg.vocab_size)
  f32 = jit_forward(params, tokens, cfg)
  bf16 = jit_forward(params, tokens, cfg.replace(dtype="bfloat16"))
  assert bf16.dtype == jnp.float32
  scale = float(jnp.max(jnp.abs(f32)))
  assert float(jnp.max(jnp.abs(bf16 - f32))) < 0.05 * scale


def test_module_errors_name_the_problem():
  model = Cwm(small_cfg(), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"token ids must lie in \[0, 61\); got min 0, max 61"):
    model(jnp.array([[0, 61]]))
  with pytest.raises(ValueError, match="expected an int array \\[batch, seq\\]"):
    model(jnp.array([1, 2, 3]))
  with pytest.raises(ValueError, match="integer dtype"):
    model(jnp.zeros((1, 3)))
  with pytest.raises(ValueError, match="segment_ids: expected shape \\(1, 3\\)"):
    model(jnp.zeros((1, 3), jnp.int32), segment_ids=jnp.zeros((1, 4), jnp.int32))
  with pytest.raises(ValueError, match="exactly one of rngs"):
    Cwm(small_cfg())


def test_nnx_optimizer_trains_the_module():
  cfg = small_cfg()
  model = Cwm(cfg, rngs=nnx.Rngs(0))
  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  tokens = jax.random.randint(jax.random.key(0), (4, 12), 0, cfg.vocab_size)

  @nnx.jit
  def step(model, opt, tokens):
    def loss_fn(model):
      logits = model(tokens[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  losses = [float(step(model, opt, tokens)) for _ in range(15)]
  assert losses[-1] < 0.5 * losses[0]
