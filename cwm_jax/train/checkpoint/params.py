"""`load_params`: only the parameters of a checkpoint, for init_from and inference.

    cfg, params = load_params("/runs/pretrain")                        # workdir: latest step
    cfg, params = load_params("/runs/pretrain/checkpoints/5000", model_cfg=midtrain_cfg,
                              shardings=param_shardings(mesh, midtrain_cfg))
    cfg, params = load_params("/ckpt/cwm_orbax")                       # cwm_jax.convert.save_orbax

Reads the `params` item of a training step and never the optimizer state, so
it costs one model's worth of memory. The config comes from the checkpoint;
with `model_cfg` the checkpoint must fit it: same parameter shapes and same
values for every field that changes what the weights mean, while fields that
leave the weights valid (`WEIGHT_NEUTRAL`: RoPE scaling and theta, lengths,
dtypes, remat, attention kernel, scan layout) may differ, as when
mid-training switches RoPE scaling on.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from cwm_jax.convert.orbax_io import (CONFIG_FILE, PARAMS_DIR, load_orbax, load_orbax_config,
                                     params_restore_args)
from cwm_jax.model.config import ModelConfig
from cwm_jax.model.params import abstract_params, check_params
from cwm_jax.train.checkpoint.manager import META, META_FILE, PARAMS, Checkpoints, item_handlers

WEIGHT_NEUTRAL = ("rope_theta", "rope_scaling", "max_seq_len", "init_std", "param_dtype", "dtype",
                  "scan_layers", "scan_period", "remat", "remat_scope", "attention_impl",
                  "attention_chunk", "context_load_balance")


class LoadParamsError(ValueError):
  """The caller's request does not fit a readable checkpoint (`model_cfg`
  changes what the weights mean, or no config is recorded and none is given):
  raised at once, never a reason to try an older step."""


def check_compatible(stored: ModelConfig, wanted: ModelConfig, where: str) -> None:
  """Raises LoadParamsError if weights trained with `stored` cannot serve `wanted`: any
  field outside WEIGHT_NEUTRAL differs (parameter shapes are functions of those fields)."""
  for f in dataclasses.fields(ModelConfig):
    if f.name not in WEIGHT_NEUTRAL and getattr(stored, f.name) != getattr(wanted, f.name):
      raise LoadParamsError(f"load_params: model_cfg.{f.name}={getattr(wanted, f.name)!r}, "
                            f"but {where} was trained with {f.name}={getattr(stored, f.name)!r}.")


def _result_config(stored: Optional[ModelConfig], model_cfg: Optional[ModelConfig],
                   dtype: Optional[str], where: str) -> ModelConfig:
  """model_cfg (checked) or the stored config, with the param dtype to load as:
  `dtype`, else model_cfg's, else the stored one. Without model_cfg, `dtype`
  also becomes the compute dtype (as in `load_orbax`)."""
  if model_cfg is None:
    if stored is None:
      raise LoadParamsError(f"load_params: {where} records no model config; pass model_cfg.")
    return stored if dtype is None else stored.replace(param_dtype=dtype, dtype=dtype)
  if stored is not None:
    check_compatible(stored, model_cfg, where)
  return model_cfg if dtype is None else model_cfg.replace(param_dtype=dtype)


def _restore_step_params(step_dir: epath.Path, model_cfg, shardings, dtype):
  meta = item_handlers()[META].restore(step_dir / META)
  stored = meta.get("model_config")
  stored = None if stored is None else ModelConfig.from_dict(stored)
  config = _result_config(stored, model_cfg, dtype, f"checkpoint {step_dir}")
  target = abstract_params(config)
  restore_args = params_restore_args(target, shardings)
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
    params = checkpointer.restore(step_dir / PARAMS, args=ocp.args.PyTreeRestore(
        target, restore_args=restore_args))
  check_params(config, params, what=f"checkpoint {step_dir}")
  return config, params


def _is_step_dir(path: epath.Path) -> bool:
  return (path / PARAMS).is_dir() and (path / META / META_FILE).exists()


def load_params(path: str, *, model_cfg: Optional[ModelConfig] = None, shardings=None,
                dtype: Optional[str] = None) -> tuple[ModelConfig, dict]:
  """(config, params) from a training workdir (its latest readable step), its
  `checkpoints/` directory, one step directory, or a `save_orbax` directory.

  Without `shardings` (a tree of `jax.sharding.Sharding` like the params)
  arrays come back as host numpy; with it, as sharded jax arrays, each device
  reading only its shards.
  """
  root = epath.Path(path)
  if not root.is_dir():
    raise FileNotFoundError(f"load_params: {path!r} is not a directory.")
  if (root / CONFIG_FILE).exists() and (root / PARAMS_DIR).is_dir():
    stored = load_orbax_config(str(root))
    config = _result_config(stored, model_cfg, dtype, f"orbax checkpoint {path!r}")
    _, params = load_orbax(str(root), dtype=config.param_dtype, shardings=shardings)
    return config, params
  if _is_step_dir(root):
    return _restore_step_params(root, model_cfg, shardings, dtype)
  if (root / "checkpoints").is_dir():
    root = root / "checkpoints"
  with Checkpoints(str(root), read_only=True) as ckpts:
    steps = [s for s in ckpts.all_steps() if _is_step_dir(root / str(s))]
  if not steps:
    raise FileNotFoundError(
        f"load_params: {path!r} holds no checkpoint: expected a training workdir, its checkpoints/ "
        f"directory, one step directory (with {PARAMS}/ and {META}/) or a save_orbax directory "
        f"(with {CONFIG_FILE} and {PARAMS_DIR}/).")
  errors = []
  for s in reversed(steps):
    try:
      return _restore_step_params(root / str(s), model_cfg, shardings, dtype)
    except LoadParamsError:
      raise
    except Exception as e:  # orbax / tensorstore raise many types for damaged files
      errors.append(f"step {s}: {type(e).__name__}: {e}")
    logging.warning("load_params: checkpoint %s is unreadable (%s); trying an older step.",
                    root / str(s), errors[-1])
  raise ValueError(f"load_params: no checkpoint in {root} could be read: " + " | ".join(errors))
