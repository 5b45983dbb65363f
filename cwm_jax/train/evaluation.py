"""Held-out evaluation during training: token-mean loss on the config's eval sources.

Every evaluation reads the held-out set from the start, once: each record at
most once (data_pipelines/pipeline/held_out.py), for at most `eval_batches`
batches, stopping early when the set is exhausted. So numbers at different
steps (and of runs with the same data) are comparable, and with N processes,
each feeding its own rows, they equal those of one process. Stage-specific
metrics plug in as hooks: functions (params, step) -> dict of numbers, merged
into the same metrics line.

    sums = jit_eval_sums(mesh, cfg.model, shardings.params, cfg.train.loss_chunk)
    held_out = HeldOutLoss(held_out_batches(pipeline_config(cfg, eval_split=True)),
                           cfg.train.eval_batches, sums)
    metrics = held_out(params, step)  # eval_loss, eval_tokens, eval_batches, eval_complete
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from cwm_jax.model.config import ModelConfig
from cwm_jax.sharding import batch_sharding, replicated
from cwm_jax.sharding.distributed import global_batch
from cwm_jax.train.loss import LossSums
from cwm_jax.train.step import BATCH_KEYS, loss_sums

EvalHook = Callable[[dict, int], dict]


def jit_eval_sums(mesh: Mesh, model_cfg: ModelConfig, params_shardings, loss_chunk: int):
  """Jitted (params, process-local batch) -> LossSums of the global batch.

  Each process passes only its own rows (batch_size // process_count of them,
  as its pipeline yields them); `global_batch` assembles the global batch, as
  the training loop does, so the sums do not depend on the process count.
  """
  sharding = batch_sharding(mesh)

  def sums(params, batch):
    return loss_sums(params, batch, model_cfg, loss_chunk)
  jitted = jax.jit(sums, in_shardings=(params_shardings, sharding),
                   out_shardings=replicated(mesh))

  def run(params, batch):
    batch = {k: v for k, v in batch.items() if k in BATCH_KEYS}
    with jax.set_mesh(mesh):
      return jitted(params, global_batch(batch, sharding))
  return run


def held_out_batches(pipeline) -> Callable:
  """`make_iterator` for `HeldOutLoss`: one pass over `pipeline`'s sources, this process's
  shard of the records, in batches of its share of the global `pipeline.batch_size`."""
  from data_pipelines.pipeline import build_held_out_iterator  # pylint: disable=import-outside-toplevel
  processes = jax.process_count()
  if pipeline.batch_size % processes:
    raise ValueError(f"held-out batch_size={pipeline.batch_size} is not divisible by the "
                     f"{processes} processes.")
  local = dataclasses.replace(pipeline, batch_size=pipeline.batch_size // processes)
  return lambda: build_held_out_iterator(local)


def _processes_with_data(batch: Optional[dict]) -> tuple[int, tuple]:
  """(how many processes still have a batch, the [B, T] shape of one) over all
  processes; a collective, so every process calls it once per batch."""
  shape = np.shape(batch["tokens"]) if batch is not None else (0, 0)
  mine = np.asarray([batch is not None, *shape], np.int64)
  if jax.process_count() == 1:
    return int(mine[0]), tuple(shape)
  every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, 3)
  having = every[every[:, 0] > 0]
  return len(having), (tuple(int(n) for n in having[0, 1:]) if len(having) else (0, 0))


def _empty_batch(last: Optional[dict], shape: tuple) -> dict:
  """A batch without targets (loss_mask 0) for a process whose data ran out: shaped
  like its last batch, or [B, T] arrays under BATCH_KEYS if it had none."""
  if last is None:
    return {k: np.zeros(shape, np.int32) for k in BATCH_KEYS}
  return {k: np.zeros(np.shape(v), np.asarray(v).dtype) for k, v in last.items()}


class HeldOutLoss:
  """`__call__(params, step)` -> {"eval_loss", "eval_tokens", "eval_batches", "eval_complete"}.

  `make_iterator()` returns a context manager iterating this process's batches
  (`held_out_batches(...)`); `num_batches` caps the (global) batches per
  evaluation (None: the whole set). With several processes, one whose data ran
  out feeds batches without targets until all have, so every process runs the
  same collectives. `eval_complete` says whether the whole set was read.
  """

  def __init__(self, make_iterator: Callable, num_batches: Optional[int], sums_fn):
    if num_batches is not None and (isinstance(num_batches, bool) or
                                    not isinstance(num_batches, int) or num_batches < 1):
      raise ValueError(f"HeldOutLoss: num_batches={num_batches!r}; expected an int >= 1 "
                       "(config.train.eval_batches) or None for the whole held-out set.")
    self._make_iterator, self._num_batches, self._sums_fn = make_iterator, num_batches, sums_fn

  def __call__(self, params, step: int) -> dict:
    del step
    total, batches, last = LossSums.zeros(), 0, None
    with self._make_iterator() as it:
      while self._num_batches is None or batches < self._num_batches:
        batch = next(it, None)
        having, shape = _processes_with_data(batch)
        if not having:
          return self._metrics(total, batches, complete=True)
        if batch is None:  # this process's data ran out before others'
          batch = _empty_batch(last, shape)
        else:
          last = batch
        total = total + self._sums_fn(params, batch)
        batches += 1
      # Stopped at the cap: report whether anything was left unread.
      having, _ = _processes_with_data(next(it, None))
      return self._metrics(total, batches, complete=not having)

  @staticmethod
  def _metrics(total: LossSums, batches: int, complete: bool) -> dict:
    weight = float(total.weight)
    loss = float(total.ce) / weight if weight else None
    return {"eval_loss": loss, "eval_tokens": int(weight), "eval_batches": batches,
            "eval_complete": complete}
