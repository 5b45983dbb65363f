import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwm_jax.train.optimizer import OptimizerConfig, decay_mask, make_optimizer, make_schedule


def test_defaults_follow_training_md():
  cfg = OptimizerConfig(total_steps=100_000)
  assert (cfg.b1, cfg.b2, cfg.eps, cfg.weight_decay, cfg.clip_norm) == (0.9, 0.95, 1e-8, 0.1, 1.0)
  assert cfg.schedule == "cosine" and cfg.warmup_steps > 0


@pytest.mark.parametrize("changes, match", [
    (dict(learning_rate=0.0), "learning_rate=0.0: expected a positive number"),
    (dict(schedule="step"), "schedule='step': expected one of"),
    (dict(total_steps=None), r"total_steps=None: expected an integer \(required by schedule='cosine'\)"),
    (dict(total_steps=50, warmup_steps=50), "total_steps=50: expected an integer > warmup_steps=50"),
    (dict(warmup_steps=-1), "warmup_steps=-1: expected an integer >= 0"),
    (dict(b2=1.0), r"b2=1.0: expected a number in \[0, 1\)"),
    (dict(eps=0.0), "eps=0.0: expected a positive number"),
    (dict(weight_decay=-0.1), "weight_decay=-0.1"),
    (dict(clip_norm=0.0), r"clip_norm=0.0: expected None \(no clipping\) or a positive number"),
    (dict(end_lr_fraction=2.0), "end_lr_fraction=2.0"),
    (dict(no_decay_patterns=("(",)), "no_decay_patterns"),
    (dict(mu_dtype="float33"), "mu_dtype='float33'"),
])
def test_bad_configs_are_clear_errors(changes, match):
  kw = dict(total_steps=100, warmup_steps=10)
  kw.update(changes)
  with pytest.raises(ValueError, match=match):
    OptimizerConfig(**kw)


def test_constant_schedule_needs_no_total_steps():
  OptimizerConfig(schedule="constant", total_steps=None)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedules(schedule):
  peak, warmup, total, end = 1e-3, 10, 110, 0.1
  cfg = OptimizerConfig(learning_rate=peak, schedule=schedule, warmup_steps=warmup,
                        total_steps=total, end_lr_fraction=end)
  lr = jax.jit(jax.vmap(make_schedule(cfg)))(jnp.arange(200))
  lr = np.asarray(lr)
  # Linear warmup that never uses lr 0, reaching the peak at step `warmup`.
  np.testing.assert_allclose(lr[:warmup], peak * np.arange(1, warmup + 1) / warmup, rtol=1e-6)
  np.testing.assert_allclose(lr[warmup], peak, rtol=1e-6)
  t = (np.arange(warmup, 200) - warmup) / (total - warmup)
  t = np.clip(t, 0, 1)
  expected = {
      "cosine": peak * end + (peak - peak * end) * 0.5 * (1 + np.cos(math.pi * t)),
      "linear": peak + (peak * end - peak) * t,
      "constant": np.full_like(t, peak),
  }[schedule]
  np.testing.assert_allclose(lr[warmup:], expected, rtol=1e-5)


def test_no_warmup_starts_at_the_peak():
  cfg = OptimizerConfig(learning_rate=0.5, warmup_steps=0, schedule="linear", total_steps=4,
                        end_lr_fraction=0.0)
  np.testing.assert_allclose([make_schedule(cfg)(s) for s in range(5)],
                             [0.5, 0.375, 0.25, 0.125, 0.0], rtol=1e-6)


def _params():
  return {"embed": jnp.ones((4, 3)), "final_norm": jnp.ones((3,)),
          "layers": {"attn_norm": jnp.ones((2, 3)), "q": jnp.ones((2, 3, 2, 2))}}


def test_norm_scales_are_not_decayed():
  cfg = OptimizerConfig(learning_rate=0.1, warmup_steps=0, schedule="constant", weight_decay=0.5)
  params = _params()
  assert decay_mask(cfg, params) == {"embed": True, "final_norm": False,
                                     "layers": {"attn_norm": False, "q": True}}
  opt = make_optimizer(cfg)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = opt.update(zero_grads, opt.init(params), params)
  # With zero gradients only weight decay moves params: -lr * wd * p.
  np.testing.assert_allclose(updates["embed"], -0.1 * 0.5, rtol=1e-6)
  np.testing.assert_allclose(updates["layers"]["q"], -0.1 * 0.5, rtol=1e-6)
  np.testing.assert_array_equal(updates["final_norm"], 0.0)
  np.testing.assert_array_equal(updates["layers"]["attn_norm"], 0.0)


def test_gradients_are_clipped_by_global_norm():
  # A large eps makes Adam's step depend on the gradient's scale, so clipping shows.
  base = dict(learning_rate=1.0, warmup_steps=0, schedule="constant", weight_decay=0.0, eps=10.0)
  params = _params()
  grads = jax.tree.map(lambda p: jnp.full_like(p, 3.0), params)
  norm = float(jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads))))
  clipped = make_optimizer(OptimizerConfig(clip_norm=1.0, **base))
  unclipped = make_optimizer(OptimizerConfig(clip_norm=None, **base))
  u_clip, _ = clipped.update(grads, clipped.init(params), params)
  u_ref, _ = unclipped.update(jax.tree.map(lambda g: g / norm, grads), unclipped.init(params), params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u_clip, u_ref)
  u_big, _ = unclipped.update(grads, unclipped.init(params), params)
  assert not np.allclose(u_big["embed"], u_clip["embed"])
