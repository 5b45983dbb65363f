"""Checkpoint conversion: HF transformers CWM checkpoints and Orbax <-> `Cwm`.

    config, model = load_hf("/ckpt/cwm")                  # -> ModelConfig, Cwm
    logits_BTV = model(tokens_BT)                         # f32, equals HF's logits
    save_hf(model, config, "/out/cwm_hf", max_shard_size="5GB")
    save_orbax(model.params(), config, "/out/cwm_orbax")
    config, params = load_orbax("/out/cwm_orbax", dtype="bfloat16")

CLI: `python -m cwm_jax.convert hf-to-orbax --hf_dir D --out D2` and
`python -m cwm_jax.convert orbax-to-hf --orbax_dir D2 --out D3`.
Never imports torch or transformers.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Union

import jax.numpy as jnp

from cwm_jax.convert.hf_config import bookkeeping, config_from_hf, config_to_hf, scan_settings
from cwm_jax.convert.hf_weights import INDEX_FILE, read_hf_params, tensor_maps, write_hf_weights
from cwm_jax.convert.orbax_io import load_orbax, save_orbax
from cwm_jax.model.config import ModelConfig
from cwm_jax.model.module import Cwm

HF_CONFIG_FILE = "config.json"


def read_hf_config_json(path: str) -> dict:
  """The raw config.json dict of an HF checkpoint directory."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"HF checkpoint directory {path!r} does not exist.")
  file = os.path.join(path, HF_CONFIG_FILE)
  if not os.path.exists(file):
    raise FileNotFoundError(f"{file} is missing; {path!r} is not an HF checkpoint directory.")
  try:
    with open(file) as f:
      return json.load(f)
  except ValueError as e:
    raise ValueError(f"{file}: not valid JSON ({e}).") from None


def load_hf_config(path: str, **overrides: Any) -> ModelConfig:
  """The ModelConfig of the HF checkpoint in `path` (see `hf_config.config_from_hf`)."""
  return config_from_hf(read_hf_config_json(path), **overrides)


def load_hf_params(path: str, dtype: Optional[str] = None, scratch_dir: Optional[str] = None,
                   **overrides: Any) -> tuple[ModelConfig, dict]:
  """(config, params as host numpy arrays) from an HF CWM checkpoint directory.

  dtype None keeps the checkpoint's dtype; either way the config's param and
  compute dtype are the params' dtype, as HF computes in the weights' dtype.
  `overrides` set execution fields (attention_impl, scan_layers, remat, ...).
  `scratch_dir` memory-maps the arrays there (for models larger than RAM).
  """
  for key in ("param_dtype", "dtype"):
    if key in overrides:
      raise TypeError(f"load_hf_params: pass dtype=..., not the override {key}=.")
  config = load_hf_config(path, **overrides)
  params = read_hf_params(path, config, dtype=dtype, scratch_dir=scratch_dir)
  actual = str(params["embed"].dtype)
  return config.replace(param_dtype=actual, dtype=actual), params


def load_hf(path: str, dtype: Optional[str] = None, **overrides: Any) -> tuple[ModelConfig, Cwm]:
  """(config, Cwm) from an HF CWM checkpoint directory; see `load_hf_params`."""
  config, params = load_hf_params(path, dtype=dtype, **overrides)
  # Move leaf by leaf, dropping each host copy, so the peak stays near one model.
  device = {"layers": {}}
  for name in list(params["layers"]):
    device["layers"][name] = jnp.asarray(params["layers"].pop(name))
  for name in [k for k in params if k != "layers"]:
    device[name] = jnp.asarray(params.pop(name))
  return config, Cwm(config, params=device)


_HF_OUTPUTS = (HF_CONFIG_FILE, INDEX_FILE)


def _clear_hf_dir(path: str, overwrite: bool) -> None:
  if not os.path.isdir(path):
    return
  old = [n for n in os.listdir(path) if n in _HF_OUTPUTS or
         (n.startswith("model") and n.endswith(".safetensors"))]
  if old and not overwrite:
    raise FileExistsError(f"{path!r} already holds an HF checkpoint ({sorted(old)}); "
                          "pass overwrite=True.")
  for name in old:
    os.remove(os.path.join(path, name))


def save_hf(model_or_params: Union[Cwm, dict], config: Optional[ModelConfig], path: str, *,
            max_shard_size: Union[int, str] = "5GB", dtype: Optional[str] = None,
            hf_extra: Optional[dict] = None, overwrite: bool = False) -> dict:
  """Writes an HF CWM checkpoint (safetensors shards, index, config.json) to `path`.

  dtype None keeps the params' dtype. `hf_extra`: HF bookkeeping keys for
  config.json (token ids, ...). Returns {"tensors", "params", "bytes", "files"}.
  """
  if isinstance(model_or_params, Cwm):
    config = config or model_or_params.config
    params = model_or_params.params()
  else:
    params = model_or_params
  if config is None:
    raise ValueError("save_hf: pass the ModelConfig of these params.")
  hf_config = config_to_hf(config if dtype is None else config.replace(param_dtype=dtype),
                           extra=hf_extra)
  if dtype is None:
    hf_config["dtype"] = str(params["embed"].dtype)
  _clear_hf_dir(path, overwrite)
  stats = write_hf_weights(params, config, path, max_shard_size=max_shard_size, dtype=dtype)
  with open(os.path.join(path, HF_CONFIG_FILE), "w") as f:
    json.dump(hf_config, f, indent=2, sort_keys=True)
  stats["files"] = stats["files"] + [HF_CONFIG_FILE]
  return stats


__all__ = ["load_hf", "load_hf_params", "load_hf_config", "save_hf", "save_orbax",
           "load_orbax", "config_from_hf", "config_to_hf", "bookkeeping", "scan_settings",
           "tensor_maps", "read_hf_config_json"]
