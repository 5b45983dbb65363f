import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cwm_jax.model import get_preset, positions_from_segments
from cwm_jax.train import (Objective, ObjectiveSums, OptimizerConfig, init_train_state, loss_sums,
                           make_optimizer, make_schedule, token_logprobs, train_step)

CFG = get_preset("tiny", vocab_size=128, d_model=32, n_layers=2, scan_period=2,
                 layer_types=("global", "local"), n_heads=4, n_kv_heads=2, head_dim=8,
                 mlp_dim=64, window=8, attention_impl="reference")
# A large Adam eps keeps the update a smooth function of the gradient, so
# summation-order noise in near-zero gradients cannot flip whole update steps.
OPT_CFG = OptimizerConfig(learning_rate=1e-2, warmup_steps=2, total_steps=20, eps=1e-3)
OPT = make_optimizer(OPT_CFG)
SCHEDULE = make_schedule(OPT_CFG)
B, T = 8, 32
# XLA's CPU backend optimisations double compile time and buy nothing here.
FAST_COMPILE = {"xla_backend_optimization_level": 0}

step_fn = jax.jit(train_step, static_argnames=(
    "model_cfg", "optimizer", "accum_steps", "z_loss", "loss_chunk", "lr_schedule", "normaliser"),
    compiler_options=FAST_COMPILE)


def make_batch(seed=0):
  """Rows of 2-3 packed documents, random loss masks (so micro-batches hold
  different token counts) and trailing padding in some rows."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, CFG.vocab_size, (B, T))
  seg = np.zeros((B, T), np.int64)
  for b in range(B):
    cuts = np.sort(rng.choice(np.arange(4, T - 4), size=2, replace=False))
    seg[b] = np.searchsorted(cuts, np.arange(T), side="right") + 1
    if b % 3 == 0:
      seg[b, T - 5:] = 0  # padding
  mask = (rng.random((B, T)) < 0.8) & (seg > 0)
  batch = dict(tokens=tokens, segment_ids=seg, loss_mask=mask.astype(np.int32))
  batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
  batch["positions"] = positions_from_segments(batch["segment_ids"])
  return batch


@pytest.fixture(scope="module")
def state():
  return init_train_state(CFG, OPT, jax.random.key(0), compiler_options=FAST_COMPILE)


def _close(tree, ref, rtol=1e-5, atol=1e-6):
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol), tree, ref)


@pytest.fixture(scope="module")
def one_big_batch(state):
  return step_fn(state, make_batch(), model_cfg=CFG, optimizer=OPT, z_loss=1e-3,
                 loss_chunk=16, lr_schedule=SCHEDULE)


@pytest.mark.parametrize("accum_steps", [2, 4])
def test_accumulation_matches_one_big_batch(state, one_big_batch, accum_steps):
  batch = make_batch()
  micro_tokens = [float(batch["loss_mask"][i::accum_steps].sum()) for i in range(accum_steps)]
  assert len(set(micro_tokens)) > 1  # token weighting, not a mean of means, is tested
  new, metrics = step_fn(state, batch, model_cfg=CFG, optimizer=OPT, z_loss=1e-3, loss_chunk=16,
                         accum_steps=accum_steps, lr_schedule=SCHEDULE)
  ref, ref_metrics = one_big_batch
  _close(metrics, ref_metrics)
  _close(new.params, ref.params)
  _close(new.opt_state, ref.opt_state)


def test_metrics_and_bookkeeping(state, one_big_batch):
  new, metrics = one_big_batch
  assert int(new.step) == int(state.step) + 1
  batch = make_batch()
  seg, mask = np.asarray(batch["segment_ids"]), np.asarray(batch["loss_mask"])
  expected_tokens = np.sum(mask[:, 1:] * (seg[:, 1:] == seg[:, :-1]))
  assert float(metrics["n_tokens"]) == expected_tokens
  np.testing.assert_allclose(metrics["lr"], SCHEDULE(0), rtol=1e-6)
  assert 0 < float(metrics["z_loss"]) < 1e-3 * 100
  assert float(metrics["grad_norm"]) > 0
  assert abs(float(metrics["loss"]) - np.log(CFG.vocab_size)) < 0.5  # near-uniform at init


def test_a_few_steps_reduce_the_loss(state):
  batch = make_batch(seed=1)
  losses = []
  for _ in range(8):
    state, metrics = step_fn(state, batch, model_cfg=CFG, optimizer=OPT, z_loss=1e-3,
                             loss_chunk=16, lr_schedule=SCHEDULE)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0] - 1.0, losses


def test_packed_documents_equal_separate_documents(state):
  """No loss and no attention across documents: a packed row's loss sums are
  the sums of its documents run alone (each at the start of its own row)."""
  rng = np.random.default_rng(3)
  lengths = (11, 13, 8)
  docs = [rng.integers(0, CFG.vocab_size, n) for n in lengths]
  masks = [(rng.random(n) < 0.7).astype(np.int32) for n in lengths]

  def row(parts, part_masks, seg_ids):
    tokens = np.concatenate(parts + [np.zeros(T - sum(map(len, parts)), np.int64)])
    mask = np.concatenate(part_masks + [np.zeros(T - sum(map(len, parts)), np.int32)])
    seg = np.concatenate([np.full(len(p), s) for p, s in zip(parts, seg_ids)]
                         + [np.zeros(T - sum(map(len, parts)), np.int64)])
    b = {"tokens": tokens[None], "segment_ids": seg[None], "loss_mask": mask[None]}
    return {k: jnp.asarray(v, jnp.int32) for k, v in b.items()}

  sums = jax.jit(functools.partial(loss_sums, model_cfg=CFG, loss_chunk=16),
                 compiler_options=FAST_COMPILE)
  packed = sums(state.params, row(docs, masks, (1, 2, 3)))
  alone = [sums(state.params, row([d], [m], (7,))) for d, m in zip(docs, masks)]
  for field in range(3):
    np.testing.assert_allclose(packed[field], sum(a[field] for a in alone), rtol=1e-5)
  assert float(packed.weight) == sum(int(m[1:].sum()) for m in masks)


def test_bad_batches_are_clear_errors(state):
  batch = make_batch()
  kw = dict(model_cfg=CFG, optimizer=OPT)
  with pytest.raises(ValueError, match="batch must be a dict with 'tokens'"):
    train_step(state, {"inputs": batch["tokens"]}, **kw)
  with pytest.raises(ValueError, match="expected \\[B, T\\] arrays"):
    train_step(state, dict(batch, loss_mask=batch["loss_mask"][:, :5]), **kw)
  with pytest.raises(ValueError, match="batch size 8 is not divisible by accum_steps=3"):
    train_step(state, batch, accum_steps=3, **kw)


N_CONSTANT = 131072.0


@pytest.fixture(scope="module")
def constant_normaliser_step(state):
  return step_fn(state, make_batch(), model_cfg=CFG, optimizer=OPT, z_loss=1e-3, loss_chunk=16,
                 normaliser=N_CONSTANT, lr_schedule=SCHEDULE)


def test_constant_normaliser_divides_the_same_sum(one_big_batch, constant_normaliser_step):
  """Dividing by a constant N (CWM's RL) instead of the token count: the same loss
  sum, so loss * N equals the token-mean loss * n_tokens."""
  _, metrics = constant_normaliser_step
  _, ref_metrics = one_big_batch
  np.testing.assert_allclose(metrics["loss"] * N_CONSTANT,
                             ref_metrics["loss"] * ref_metrics["n_tokens"], rtol=1e-5)


def test_constant_normaliser_accumulates_exactly(state, constant_normaliser_step):
  new, metrics = step_fn(state, make_batch(), model_cfg=CFG, optimizer=OPT, z_loss=1e-3,
                         loss_chunk=16, accum_steps=4, normaliser=N_CONSTANT,
                         lr_schedule=SCHEDULE)
  ref_new, ref_metrics = constant_normaliser_step
  _close(metrics, ref_metrics)
  _close(new.params, ref_new.params)
  _close(new.opt_state, ref_new.opt_state)


def test_objective_reads_its_declared_arrays(state):
  """A custom objective built on per-token log-probs, reading a declared [B, T] and a
  declared [B] array: with both set to ones it is the cross-entropy (z_loss 0), so
  the update equals the default step's, also split into micro-batches."""
  def sums(params, micro):
    logp_BT, weights_BT = token_logprobs(params, micro, CFG, loss_chunk=16)
    w_BT = weights_BT * micro["token_scale"] * micro["row_scale"][:, None]
    return ObjectiveSums(-jnp.sum(w_BT * logp_BT), jnp.sum(weights_BT), {"loss": -jnp.sum(w_BT * logp_BT)})

  objective = Objective("scaled_logprob", sums, token_keys=("token_scale",),
                        row_keys=("row_scale",))
  batch = make_batch()
  extra = dict(batch, token_scale=jnp.ones((B, T)), row_scale=jnp.ones((B,)))
  step = jax.jit(train_step, static_argnames=("model_cfg", "optimizer", "accum_steps",
                                               "loss_chunk", "lr_schedule", "objective"),
                 compiler_options=FAST_COMPILE)
  new, metrics = step(state, extra, objective=objective, model_cfg=CFG, optimizer=OPT,
                      accum_steps=2, lr_schedule=SCHEDULE)
  ref, ref_metrics = step_fn(state, batch, model_cfg=CFG, optimizer=OPT, loss_chunk=16,
                             lr_schedule=SCHEDULE)
  np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
  _close(new.params, ref.params)
  with pytest.raises(ValueError, match=r"batch keys \['advantages'\] are not read by objective "
                                       r"'scaled_logprob'"):
    train_step(state, dict(extra, advantages=jnp.ones((B, T))), objective=objective,
               model_cfg=CFG, optimizer=OPT)
  with pytest.raises(ValueError, match=r"\[B\] arrays under \('row_scale',\)"):
    train_step(state, dict(extra, row_scale=jnp.ones((B, T))), objective=objective,
               model_cfg=CFG, optimizer=OPT)
