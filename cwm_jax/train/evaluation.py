"""Held-out evaluation during training: token-mean loss on the config's eval sources.

Every evaluation reads the same first `eval_batches` batches of a fresh,
unshuffled iterator over `config.data.eval_sources`, so numbers at different
steps (and of different runs with the same data) are comparable. Stage-specific
metrics plug in as hooks: functions (params, step) -> dict of numbers, merged
into the same metrics line.
"""

from __future__ import annotations

import itertools
from typing import Callable

import jax
from jax.sharding import Mesh

from cwm_jax.model.config import ModelConfig
from cwm_jax.sharding import batch_sharding, replicated
from cwm_jax.train.loss import LossSums
from cwm_jax.train.step import BATCH_KEYS, loss_sums

EvalHook = Callable[[dict, int], dict]


def jit_eval_sums(mesh: Mesh, model_cfg: ModelConfig, params_shardings, loss_chunk: int):
  """Jitted (params, batch) -> LossSums, with the training shardings."""
  def sums(params, batch):
    return loss_sums(params, batch, model_cfg, loss_chunk)
  jitted = jax.jit(sums, in_shardings=(params_shardings, batch_sharding(mesh)),
                   out_shardings=replicated(mesh))

  def run(params, batch):
    batch = {k: v for k, v in batch.items() if k in BATCH_KEYS}
    with jax.set_mesh(mesh):
      return jitted(params, jax.device_put(batch, batch_sharding(mesh)))
  return run


class HeldOutLoss:
  """`__call__(params, step)` -> {"eval_loss", "eval_tokens"} over fixed batches."""

  def __init__(self, make_iterator: Callable, num_batches: int, sums_fn):
    self._make_iterator, self._num_batches, self._sums_fn = make_iterator, num_batches, sums_fn

  def __call__(self, params, step: int) -> dict:
    del step
    total = LossSums.zeros()
    with self._make_iterator() as it:
      for batch in itertools.islice(it, self._num_batches):
        total = total + self._sums_fn(params, batch)
    weight = float(total.weight)
    if weight == 0:
      return {"eval_loss": None, "eval_tokens": 0}
    return {"eval_loss": float(total.ce) / weight, "eval_tokens": int(weight)}
