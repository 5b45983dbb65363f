"""The jitted train step gives the same loss and updated state on one device
and on meshes mixing data, fsdp, tensor and context parallelism, and leaves
the state sharded as the logical rules say."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cwm_jax.model import get_preset, positions_from_segments, transformer
from cwm_jax.model.attention.context_parallel import zigzag_permutation
from cwm_jax.sharding import MeshConfig, make_mesh, param_shardings
from cwm_jax.train import (OptimizerConfig, init_train_state, jit_train_step, make_optimizer,
                           train_state_shardings, train_step)
from cwm_jax.train.objectives import model_inputs

CFG = get_preset("tiny", vocab_size=128, d_model=32, n_layers=2, scan_period=2,
                 layer_types=("global", "local"), n_heads=4, n_kv_heads=2, head_dim=8,
                 mlp_dim=64, window=8, attention_impl="reference")
# A large Adam eps keeps the update a smooth function of the gradient (see test_step.py).
OPT = make_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=0, schedule="constant",
                                     eps=1e-3))
B, T = 8, 32
STEP_KW = dict(z_loss=1e-3, loss_chunk=16)
# XLA's CPU backend optimisations double compile time and buy nothing here.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def make_batch():
  rng = np.random.default_rng(0)
  seg = np.repeat(np.arange(1, 5), T // 4)[None].repeat(B, 0)
  seg[::2] = np.repeat(np.arange(1, 3), T // 2)  # two layouts; documents cross shard edges
  batch = {"tokens": rng.integers(0, CFG.vocab_size, (B, T)), "segment_ids": seg,
           "loss_mask": (rng.random((B, T)) < 0.8)}
  batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
  batch["positions"] = positions_from_segments(batch["segment_ids"])
  return batch


@pytest.fixture(scope="module")
def initial_state():
  return init_train_state(CFG, OPT, jax.random.key(0), compiler_options=FAST_COMPILE)


@pytest.fixture(scope="module")
def reference(initial_state):
  step = jax.jit(lambda s, b: train_step(s, b, model_cfg=CFG, optimizer=OPT, **STEP_KW),
                 compiler_options=FAST_COMPILE)
  return step(initial_state, make_batch())


def _host(tree):
  return jax.tree.map(np.asarray, tree)


@pytest.mark.parametrize("shape, accum_steps", [
    (dict(data=8), 1),
    (dict(data=2, fsdp=4), 1),
    (dict(data=2, fsdp=2, tensor=2), 2),
    (dict(data=1, fsdp=2, tensor=2, context=2), 2),
], ids=["data8", "data2_fsdp4", "data2_fsdp2_tensor2", "fsdp2_tensor2_context2"])
def test_sharded_step_matches_one_device(initial_state, reference, shape, accum_steps):
  ref_state, ref_metrics = _host(reference)
  mesh = make_mesh(MeshConfig(**shape))
  shardings = train_state_shardings(mesh, CFG, OPT)
  # The step donates its input: give it fresh buffers (device_put may alias).
  state = jax.device_put(jax.tree.map(jnp.copy, initial_state), shardings)
  step = jit_train_step(mesh, CFG, OPT, shardings, accum_steps=accum_steps,
                        compiler_options=FAST_COMPILE, **STEP_KW)
  new, metrics = step(state, make_batch())

  for k, v in ref_metrics.items():
    np.testing.assert_allclose(metrics[k], v, rtol=1e-5, err_msg=k)
  for got, want in zip(jax.tree.leaves(new), jax.tree.leaves(ref_state)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(want).max()))

  # The state stays laid out as the rules say, and weights really are split.
  jax.tree.map(lambda x, s: np.testing.assert_equal(x.sharding.spec, s.spec),
               new, shardings)
  p_sh = param_shardings(mesh, CFG)
  assert new.params["layers"]["q"].sharding.spec == p_sh["layers"]["q"].spec
  q = new.params["layers"]["q"]
  local_q = q.addressable_shards[0].data.shape
  expected = (q.shape[0], q.shape[1] // shape.get("fsdp", 1), q.shape[2] // shape.get("tensor", 1),
              q.shape[3])
  assert local_q == expected
  mu_q = new.opt_state[1][0].mu["layers"]["q"]
  assert mu_q.addressable_shards[0].data.shape == expected
  if shape.get("fsdp", 1) * shape.get("tensor", 1) > 1:
    assert local_q != q.shape


def test_sharded_init_matches_one_device(initial_state):
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))
  shardings = train_state_shardings(mesh, CFG, OPT)
  state = init_train_state(CFG, OPT, jax.random.key(0), mesh=mesh,
                           compiler_options=FAST_COMPILE)
  jax.tree.map(lambda x, s: np.testing.assert_equal(x.sharding.spec, s.spec), state, shardings)
  jax.tree.map(np.testing.assert_array_equal, _host(state), _host(initial_state))
  assert state.params["embed"].addressable_shards[0].data.shape == (CFG.vocab_size // 2,
                                                                    CFG.d_model // 2)


def test_activations_follow_the_logical_rules(initial_state):
  """The model's constraints lay out activations without any input hints."""
  mesh = make_mesh(MeshConfig(data=2, tensor=2, context=2))
  batch = make_batch()

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def run(params, tokens, segment_ids):
    x_BTD = transformer.hidden_states(params, tokens, CFG, segment_ids_BT=segment_ids)
    return x_BTD, transformer.logits_from_hidden(params, x_BTD, CFG)

  with jax.set_mesh(mesh):
    x_BTD, logits_BTV = run(initial_state.params, batch["tokens"], batch["segment_ids"])
  assert x_BTD.sharding.spec == P("data", "context")
  assert logits_BTV.sharding.spec == P("data", "context", "tensor")
  np.testing.assert_allclose(
      logits_BTV, transformer.jit_forward(initial_state.params, batch["tokens"], CFG,
                                          None, batch["segment_ids"]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("context", [4])  # 8 chunks of 4 tokens: documents cross them
def test_zigzag_context_load_balance_matches_one_device(initial_state, reference, context):
  """`context_load_balance="zigzag"`: the objective permutes tokens, targets, positions
  and segment ids to the zig-zag layout; loss, metrics and the updated state (so the
  gradients) equal the unsharded step's. Documents cross chunk and shard edges."""
  ref_state, ref_metrics = _host(reference)
  cfg = CFG.replace(context_load_balance="zigzag")
  mesh = make_mesh(MeshConfig(data=8 // (2 * context), tensor=2, context=context))
  shardings = train_state_shardings(mesh, cfg, OPT)
  state = jax.device_put(jax.tree.map(jnp.copy, initial_state), shardings)
  step = jit_train_step(mesh, cfg, OPT, shardings, compiler_options=FAST_COMPILE, **STEP_KW)
  new, metrics = step(state, make_batch())
  for k, v in ref_metrics.items():
    np.testing.assert_allclose(metrics[k], v, rtol=1e-5, err_msg=k)
  for got, want in zip(jax.tree.leaves(new), jax.tree.leaves(ref_state)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(want).max()))
  # The permutation really happens (and only with zig-zag).
  batch = make_batch()
  with jax.set_mesh(mesh):
    permuted = model_inputs(batch, cfg)
    natural = model_inputs(batch, CFG)
  perm = zigzag_permutation(T, context)
  assert not (perm == np.arange(T)).all()
  np.testing.assert_array_equal(permuted.tokens, np.asarray(batch["tokens"])[:, perm])
  np.testing.assert_array_equal(permuted.restore(permuted.targets), natural.targets)
  np.testing.assert_array_equal(natural.tokens, batch["tokens"])
