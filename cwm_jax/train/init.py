"""The state a fresh run starts from: random init, or `init_from` another run / HF weights.

Stage transitions go through here: midtraining starts from a pretraining
checkpoint (optionally with its optimizer state and step, so the learning-rate
schedule carries on), SFT from a midtraining checkpoint, any stage from
converted HF weights. Only parameters must match the new model config; fields
that do not change weights (RoPE scaling, max_seq_len, remat, attention
backend) may differ, which is how midtraining switches RoPE scaling on.
"""

from __future__ import annotations

import glob
import os

import jax
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh

from cwm_jax.model.config import ModelConfig
from cwm_jax.model.params import abstract_params
from cwm_jax.train.config import WEIGHT_FIELDS, ConfigError, ExperimentConfig
from cwm_jax.train.state import TrainState, init_train_state


def is_hf_dir(path: str) -> bool:
  return (os.path.isfile(os.path.join(path, "config.json"))
          and bool(glob.glob(os.path.join(path, "*.safetensors"))))


def checkpoints_dir(path: str) -> str:
  """A training workdir -> its checkpoints/ directory (other paths unchanged)."""
  sub = os.path.join(path, "checkpoints")
  return sub if os.path.isdir(sub) else path


def check_compatible(source: ModelConfig, target: ModelConfig, what: str) -> None:
  """Raises ConfigError when weights of `source` cannot initialise `target`."""
  diffs = {f: (getattr(source, f), getattr(target, f)) for f in WEIGHT_FIELDS
           if getattr(source, f) != getattr(target, f) and f != "param_dtype"}
  if diffs:
    detail = "; ".join(f"{k}: {a!r} there vs {b!r} here" for k, (a, b) in diffs.items())
    raise ConfigError(f"config.init_from={what!r} holds a different model ({detail}).")


def _check_param_shapes(params: dict, cfg: ModelConfig, what: str) -> None:
  want = abstract_params(cfg)
  got_leaves = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  for path, spec in jax.tree_util.tree_flatten_with_path(want)[0]:
    name = jax.tree_util.keystr(path)
    if path not in got_leaves:
      raise ConfigError(f"config.init_from={what!r}: parameter {name} is missing.")
    if tuple(got_leaves[path].shape) != tuple(spec.shape):
      raise ConfigError(f"config.init_from={what!r}: parameter {name} has shape "
                        f"{tuple(got_leaves[path].shape)}, the model needs {tuple(spec.shape)}.")


def load_init_params(path: str, cfg: ModelConfig) -> dict:
  """Host parameters from an HF dir or one of our checkpoints, checked against `cfg`."""
  if is_hf_dir(path):
    from cwm_jax.convert import load_hf_params  # pylint: disable=import-outside-toplevel
    source_cfg, params = load_hf_params(path, dtype=cfg.param_dtype)
  else:
    from cwm_jax.train.checkpoint import load_params  # pylint: disable=import-outside-toplevel
    try:
      source_cfg, params = load_params(path)
    except (FileNotFoundError, ValueError) as e:
      raise ConfigError(f"config.init_from={path!r}: not a training checkpoint, an Orbax params "
                        f"dir or an HF safetensors dir ({e}).") from None
  check_compatible(source_cfg, cfg, path)
  _check_param_shapes(params, cfg, path)
  return jax.tree.map(lambda x: np.asarray(x, dtype=cfg.param_dtype), params)


def initial_state(cfg: ExperimentConfig, optimizer: optax.GradientTransformation, mesh: Mesh,
                  shardings: TrainState, abstract: TrainState) -> TrainState:
  """Step-0 state of a fresh run (no checkpoint in the workdir yet)."""
  if not cfg.init_from:
    logging.info("initialising %s from scratch (seed %d)", cfg.name, cfg.seed)
    return init_train_state(cfg.model, optimizer, jax.random.key(cfg.seed), mesh)
  if cfg.init_optimizer_state:
    from cwm_jax.train.checkpoint import Checkpoints  # pylint: disable=import-outside-toplevel
    source = Checkpoints(checkpoints_dir(cfg.init_from), async_save=False, read_only=True)
    try:
      if source.latest_step() is None:
        raise ConfigError(f"config.init_from={cfg.init_from!r} holds no training checkpoint, so "
                          "config.init_optimizer_state=True has no optimizer state to take.")
      load_init_params(cfg.init_from, cfg.model)  # config/shape checks with clear errors
      restored = source.restore(abstract)
    finally:
      source.close()
    logging.info("initialising %s from %s step %d with its optimizer state", cfg.name,
                 cfg.init_from, int(restored.state.step))
    return restored.state
  params = load_init_params(cfg.init_from, cfg.model)
  logging.info("initialising %s with the parameters of %s (fresh optimizer)", cfg.name,
               cfg.init_from)
  params = jax.device_put(params, shardings.params)
  with jax.set_mesh(mesh):
    opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
  return TrainState(step=jax.device_put(np.zeros((), np.int32), shardings.step),
                    params=params, opt_state=opt_state)
