"""`Cwm`: the Flax NNX module users hold. It owns the parameters (each tagged
with its logical axes) and calls the pure forward pass of `transformer.py`.

    model = Cwm(get_preset("tiny"), rngs=nnx.Rngs(0))
    logits_BTV = model(tokens_BT, positions=None, segment_ids=None)  # f32
    optimizer = nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cwm_jax.model import params as params_lib
from cwm_jax.model import transformer
from cwm_jax.model.config import ModelConfig


def _param(value, axes):
  # Logical axes only; the sharding package maps them to mesh axes. No eager
  # sharding: creating a model must not require a mesh context.
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class DecoderLayers(nnx.Module):
  """All decoder layers' weights, stacked over a leading `layers` axis."""

  def __init__(self, layers: dict, axes: dict):
    for name, value in layers.items():
      setattr(self, name, _param(value, axes[name]))


class Cwm(nnx.Module):

  def __init__(self, config: ModelConfig, *, rngs: Optional[nnx.Rngs] = None,
               params: Optional[dict] = None):
    """Random init from `rngs`, or wraps an existing parameter tree `params`."""
    if (rngs is None) == (params is None):
      raise ValueError("Cwm: pass exactly one of rngs= (random init) or params= (existing weights).")
    self.config = config
    if params is None:
      params = params_lib.init_params(config, rngs.params())
    else:
      params_lib.check_params(config, params)
    axes = params_lib.param_axes(config)
    self.embed = _param(params["embed"], axes["embed"])
    self.layers = DecoderLayers(params["layers"], axes["layers"])
    self.final_norm = _param(params["final_norm"], axes["final_norm"])
    self.lm_head = _param(params["lm_head"], axes["lm_head"])

  def params(self) -> dict:
    """The parameter tree (plain arrays) in the layout of `params.param_specs`."""
    return nnx.to_pure_dict(nnx.state(self, nnx.Param))

  def __call__(self, input_ids, positions=None, segment_ids=None):
    """Float32 logits [B, T, V] for int tokens [B, T]."""
    check_inputs(self.config, input_ids, positions, segment_ids)
    return transformer.jit_forward(self.params(), input_ids, self.config,
                                   positions, segment_ids)


def check_inputs(cfg: ModelConfig, tokens_BT, positions_BT=None, segment_ids_BT=None):
  """Clear errors for wrong shapes/dtypes and (when concrete) out-of-range ids."""
  shape = getattr(tokens_BT, "shape", None)
  if shape is None or len(shape) != 2:
    raise ValueError(f"input_ids: expected an int array [batch, seq], got shape {shape}.")
  if not jnp.issubdtype(tokens_BT.dtype, jnp.integer):
    raise ValueError(f"input_ids: expected an integer dtype, got {tokens_BT.dtype}.")
  for name, x in (("positions", positions_BT), ("segment_ids", segment_ids_BT)):
    if x is not None and tuple(x.shape) != tuple(shape):
      raise ValueError(f"{name}: expected shape {tuple(shape)} like input_ids, got {tuple(x.shape)}.")
  if shape[1] > cfg.max_seq_len:
    raise ValueError(f"input_ids: sequence length {shape[1]} exceeds max_seq_len={cfg.max_seq_len}.")
  if not isinstance(tokens_BT, jax.core.Tracer) and shape[0] * shape[1]:
    lo, hi = int(np.min(tokens_BT)), int(np.max(tokens_BT))
    if lo < 0 or hi >= cfg.vocab_size:
      raise ValueError(f"input_ids: token ids must lie in [0, {cfg.vocab_size}); got min {lo}, max {hi}.")
