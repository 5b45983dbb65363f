"""Our parameter tree <-> an Orbax checkpoint directory.

    DIR/model_config.json   ModelConfig.to_dict()
    DIR/params/             orbax PyTree checkpoint (tensorstore zarr, no OCDBT)

Saving never holds a second copy of the model: it is synchronous, numpy
leaves go to tensorstore without Orbax's default defensive deep copy, arrays
are written in `CHUNK_BYTES` chunks, and the OCDBT format is off (its writer
buffered ~80% of the model before committing, in our measurements; the plain
zarr layout costs one file per chunk instead). Saving 750 MB of float32 took
~+60-150 MB of host memory. That holds for host numpy arrays, including the
`np.memmap` arrays of `hf_weights.read_hf_params(scratch_dir=...)`; jax arrays
are first copied to host by Orbax's own array handler.
"""

from __future__ import annotations

import json
import math
import os
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from cwm_jax.model.config import ModelConfig
from cwm_jax.model.params import abstract_params, check_params

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
# Tensorstore chunk size. Write buffers scale with it (a few chunks in flight),
# not with the model; it is also the granularity of sharded restores.
CHUNK_BYTES = 16 * 2**20


def _checkpointer() -> ocp.Checkpointer:
  registry = ocp.type_handlers.create_type_handler_registry(
      (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
      (jax.Array, ocp.type_handlers.get_type_handler(jax.Array)))
  return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=registry,
                                                      use_ocdbt=False))


def save_orbax(params: dict, config: ModelConfig, path: str, overwrite: bool = False) -> None:
  """Saves `params` (numpy or jax arrays) and `config` under directory `path`."""
  check_params(config, params)
  path = os.path.abspath(path)
  ckpt = os.path.join(path, PARAMS_DIR)
  if os.path.exists(ckpt) and not overwrite:
    raise FileExistsError(f"orbax checkpoint {ckpt!r} already exists; pass overwrite=True.")
  os.makedirs(path, exist_ok=True)
  save_args = jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES), params)
  _checkpointer().save(ckpt, args=ocp.args.PyTreeSave(params, save_args=save_args),
                       force=overwrite)
  with open(os.path.join(path, CONFIG_FILE), "w") as f:
    json.dump(config.to_dict(), f, indent=2)


def load_orbax_config(path: str) -> ModelConfig:
  file = os.path.join(path, CONFIG_FILE)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"orbax checkpoint directory {path!r} does not exist.")
  if not os.path.exists(file):
    raise FileNotFoundError(f"{file} is missing; {path!r} is not a checkpoint written by save_orbax.")
  try:
    with open(file) as f:
      return ModelConfig.from_dict(json.load(f))
  except (ValueError, TypeError) as e:
    raise ValueError(f"{file}: not a valid model config ({e}).") from None


def _restore_leaf_by_leaf(ckpt: str, target: dict, restore_args: dict) -> dict:
  """Restores one leaf per call: restoring the whole tree at once held every
  leaf's read buffers together (~1.5x the model in host memory, measured)."""
  checkpointer = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
  leaves, _ = jax.tree_util.tree_flatten_with_path(target)
  arg_leaves = jax.tree.leaves(restore_args, is_leaf=lambda x: isinstance(x, ocp.RestoreArgs))
  out = []
  for (path, abstract), arg in zip(leaves, arg_leaves):
    keys = [p.key for p in path]
    item, args = abstract, arg
    for k in reversed(keys):
      item, args = {k: item}, {k: args}
    restored = checkpointer.restore(ckpt, args=ocp.args.PyTreeRestore(
        item, restore_args=args, partial_restore=True))
    for k in keys:
      restored = restored[k]
    out.append(restored)
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(target), out)


def params_restore_args(target, shardings=None):
  """Orbax restore args for a params tree: host numpy arrays, or jax arrays placed
  with `shardings` (a matching tree), in each target leaf's dtype."""
  if shardings is None:
    return jax.tree.map(lambda a: ocp.RestoreArgs(restore_type=np.ndarray, dtype=a.dtype), target)
  return jax.tree.map(
      lambda a, s: ocp.ArrayRestoreArgs(sharding=s, global_shape=a.shape, dtype=a.dtype),
      target, shardings)


def load_orbax(path: str, dtype: Optional[str] = None, shardings=None) -> tuple[ModelConfig, dict]:
  """(config, params) from `save_orbax`'s directory.

  dtype None keeps the stored dtype and config; otherwise arrays are cast on
  restore and the config's param and compute dtype both become `dtype`.
  Without `shardings` (a tree of `jax.sharding.Sharding` like the params)
  arrays come back as host numpy; with it, as sharded jax arrays.
  """
  path = os.path.abspath(path)
  config = load_orbax_config(path)
  ckpt = os.path.join(path, PARAMS_DIR)
  if not os.path.isdir(ckpt):
    raise FileNotFoundError(f"orbax checkpoint {ckpt!r} is missing.")
  try:
    stored = ocp.StandardCheckpointer().metadata(ckpt).item_metadata.tree
    stored_dtypes = {str(np.dtype(m.dtype)) for m in jax.tree.leaves(stored)}
  except Exception as e:  # orbax raises many types for a damaged directory
    raise ValueError(f"orbax checkpoint {ckpt!r} is unreadable ({type(e).__name__}: {e}).") from None
  if dtype is None:
    stored_dtype = stored_dtypes.pop() if len(stored_dtypes) == 1 else config.param_dtype
    config = config.replace(param_dtype=stored_dtype)
  else:
    config = config.replace(param_dtype=dtype, dtype=dtype)
  target = abstract_params(config)
  restore_args = params_restore_args(target, shardings)
  try:
    params = _restore_leaf_by_leaf(ckpt, target, restore_args)
  except Exception as e:
    raise ValueError(f"orbax checkpoint {ckpt!r} could not be restored against "
                     f"{CONFIG_FILE} ({type(e).__name__}: {e}).") from None
  check_params(config, params, what=f"orbax checkpoint {ckpt!r}")
  return config, params
