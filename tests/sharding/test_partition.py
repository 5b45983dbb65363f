import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import PartitionSpec as P

from cwm_jax.model import abstract_params, get_preset
from cwm_jax.sharding import (MeshConfig, batch_sharding, check_batch_shape, make_mesh,
                              mirror_param_shardings, opt_state_shardings, param_shardings)
from cwm_jax.train import OptimizerConfig, make_optimizer

CFG = get_preset("tiny")
MESH = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))


def _paths(tree):
  return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("optimizer", [
    make_optimizer(OptimizerConfig(total_steps=10, warmup_steps=2)),
    optax.chain(optax.clip_by_global_norm(1.0), optax.adafactor(1e-3)),
    optax.sgd(1e-2, momentum=0.9),
], ids=["project_adamw", "adafactor", "sgd_momentum"])
def test_opt_state_mirrors_param_shardings(optimizer):
  params = abstract_params(CFG)
  p_sh = param_shardings(MESH, CFG)
  opt_state = jax.eval_shape(optimizer.init, params)
  sh = opt_state_shardings(MESH, opt_state, params, p_sh)
  assert jax.tree.structure(sh) == jax.tree.structure(opt_state)
  p_paths = {k: (params_leaf.shape, s) for (k, params_leaf), s in
             zip(_paths(params).items(), jax.tree.leaves(p_sh))}
  n_mirrored = 0
  for key, (leaf, s) in zip(_paths(opt_state), zip(jax.tree.leaves(opt_state), jax.tree.leaves(sh))):
    match = [v for k, v in p_paths.items() if key.endswith(k) and v[0] == leaf.shape]
    if match:
      assert s == match[0][1], key
      n_mirrored += 1
    else:  # counts, factored statistics, ...
      assert s.spec == P(), key
    s.shard_shape(leaf.shape)
  assert n_mirrored >= len(p_paths)


def test_project_optimizer_state_is_sharded_like_params():
  optimizer = make_optimizer(OptimizerConfig(total_steps=10, warmup_steps=2))
  params = abstract_params(CFG)
  sh = opt_state_shardings(MESH, jax.eval_shape(optimizer.init, params), params, cfg=CFG)
  adam = sh[1][0]
  assert adam.mu["layers"]["q"].spec == P(None, "fsdp", "tensor", None)
  assert adam.nu["embed"].spec == P("tensor", "fsdp")
  assert adam.count.spec == P()


def test_mirror_requires_matching_shapes():
  params = {"w": jax.ShapeDtypeStruct((4, 8), jnp.float32)}
  shardings = {"w": jax.sharding.NamedSharding(MESH, P("fsdp", "tensor"))}
  tree = {"a": {"w": jax.ShapeDtypeStruct((4, 8), jnp.float32)},
          "b": {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}}
  sh = mirror_param_shardings(tree, params, shardings, MESH)
  assert sh["a"]["w"].spec == P("fsdp", "tensor")
  assert sh["b"]["w"].spec == P()


def test_batch_sharding_and_shape_check():
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, context=2))
  assert batch_sharding(mesh).spec == P(("data", "fsdp"), "context")
  check_batch_shape(mesh, (4, 6))
  with pytest.raises(ValueError, match="batch size 6 is not divisible by 4.*data x fsdp"):
    check_batch_shape(mesh, (6, 8))
  with pytest.raises(ValueError, match="sequence length 5 is not divisible by 2.*context"):
    check_batch_shape(mesh, (4, 5))
