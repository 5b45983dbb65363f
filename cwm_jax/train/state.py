"""`TrainState`: everything a training step updates, as one pytree.

    opt = make_optimizer(OptimizerConfig(total_steps=1000))
    state = init_train_state(cfg, opt, jax.random.key(0))           # one device
    state = init_train_state(cfg, opt, jax.random.key(0), mesh=mesh)  # sharded

With a mesh, initialisation is jitted with the target shardings as outputs,
so each device creates only its own shards (the full model never sits on one
device).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from cwm_jax.model.config import ModelConfig
from cwm_jax.model.params import init_params
from cwm_jax.sharding import opt_state_shardings, param_shardings, replicated


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array   # int32 scalar: optimizer steps taken
  params: Any       # the tree of `cwm_jax.model.params.param_specs`
  opt_state: Any    # optax state of `optimizer` for `params`


def _init(cfg: ModelConfig, optimizer: optax.GradientTransformation, key) -> TrainState:
  params = init_params(cfg, key)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params))


def abstract_train_state(cfg: ModelConfig, optimizer: optax.GradientTransformation) -> TrainState:
  """Shapes and dtypes of the state (ShapeDtypeStructs), nothing allocated."""
  return jax.eval_shape(lambda key: _init(cfg, optimizer, key), jax.random.key(0))


def train_state_shardings(mesh: Mesh, cfg: ModelConfig,
                          optimizer: optax.GradientTransformation) -> TrainState:
  """NamedShardings of the state: params by the logical rules, optimizer
  statistics like the params they mirror, step and counters replicated."""
  abstract = abstract_train_state(cfg, optimizer)
  p_sh = param_shardings(mesh, cfg)
  return TrainState(step=replicated(mesh), params=p_sh,
                    opt_state=opt_state_shardings(mesh, abstract.opt_state, abstract.params, p_sh))


def init_train_state(cfg: ModelConfig, optimizer: optax.GradientTransformation, key,
                     mesh: Optional[Mesh] = None,
                     compiler_options: Optional[dict] = None) -> TrainState:
  """Fresh state: params from `init_params(cfg, key)`, step 0, optimizer init.
  With `mesh`, every leaf is created directly with its sharding."""
  if mesh is None:
    return jax.jit(_init, static_argnums=(0, 1), compiler_options=compiler_options)(
        cfg, optimizer, key)
  shardings = train_state_shardings(mesh, cfg, optimizer)
  with jax.set_mesh(mesh):
    return jax.jit(_init, static_argnums=(0, 1), out_shardings=shardings,
                   compiler_options=compiler_options)(cfg, optimizer, key)
