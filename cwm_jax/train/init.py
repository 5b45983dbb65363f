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
from cwm_jax.train.checkpoint import Checkpoints, check_compatible, load_params
from cwm_jax.train.config import ConfigError, ExperimentConfig
from cwm_jax.train.state import TrainState, init_train_state


def is_hf_dir(path: str) -> bool:
  return (os.path.isfile(os.path.join(path, "config.json"))
          and bool(glob.glob(os.path.join(path, "*.safetensors"))))


def checkpoints_dir(path: str) -> str:
  """A training workdir -> its checkpoints/ directory (other paths unchanged)."""
  sub = os.path.join(path, "checkpoints")
  return sub if os.path.isdir(sub) else path


def _checked(source_cfg: ModelConfig, cfg: ModelConfig, path: str) -> None:
  try:
    check_compatible(source_cfg, cfg, path)
  except ValueError as e:
    raise ConfigError(f"config.init_from={path!r} holds a different model: {e}") from None


def load_init_params(path: str, cfg: ModelConfig) -> dict:
  """Host parameters from an HF dir or one of our checkpoints, checked against `cfg`."""
  if is_hf_dir(path):
    from cwm_jax.convert import load_hf_params  # pylint: disable=import-outside-toplevel
    source_cfg, params = load_hf_params(path, dtype=cfg.param_dtype)
  else:
    try:
      source_cfg, params = load_params(path, dtype=cfg.param_dtype)
    except (FileNotFoundError, ValueError) as e:
      raise ConfigError(f"config.init_from={path!r}: not a training checkpoint, an Orbax params "
                        f"dir or an HF safetensors dir ({e}).") from None
  _checked(source_cfg, cfg, path)
  return params


def initial_state(cfg: ExperimentConfig, optimizer: optax.GradientTransformation, mesh: Mesh,
                  shardings: TrainState, abstract: TrainState) -> TrainState:
  """Step-0 state of a fresh run (no checkpoint in the workdir yet)."""
  if not cfg.init_from:
    logging.info("initialising %s from scratch (seed %d)", cfg.name, cfg.seed)
    return init_train_state(cfg.model, optimizer, jax.random.key(cfg.seed), mesh)
  if cfg.init_optimizer_state:
    source = Checkpoints(checkpoints_dir(cfg.init_from), async_save=False, read_only=True)
    try:
      if source.latest_step() is None:
        raise ConfigError(f"config.init_from={cfg.init_from!r} holds no training checkpoint, so "
                          "config.init_optimizer_state=True has no optimizer state to take.")
      stored = source.stored_model_config()
      if stored is not None:  # otherwise restore's own shape check names the leaf
        _checked(stored, cfg.model, cfg.init_from)  # reads no parameters
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
