"""One optimizer step: the objective's sums per micro-batch (forward, backward,
gradient accumulation), one division by the normaliser, AdamW update, metrics.

A batch is a dict of arrays with a leading batch dimension B:
    tokens       [B, T] int32  token ids
    segment_ids  [B, T] int32  document id per token in a packed row (optional)
    positions    [B, T] int32  position within the document (optional: derived from
                               segment_ids, or 0..T-1)
    loss_mask    [B, T]        1 where the token is a prediction target (optional)
plus the [B, T] / [B] arrays the objective declares (`Objective.token_keys`,
`row_keys`). What is minimised is the objective's (see `objectives.py`; the
default is next-token cross-entropy): its summed loss over the whole batch divided
by the normaliser, the batch's total loss weight ("weight") or a constant,
whatever `accum_steps` is.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from cwm_jax.model.config import ModelConfig
from cwm_jax.model.params import param_axes
from cwm_jax.sharding import batch_tree_sharding, check_batch_shape, constrain, replicated
from cwm_jax.train.objectives import (BATCH_KEYS, WEIGHT, Normaliser, Objective, check_normaliser,
                                      cross_entropy, denominator, loss_sums)
from cwm_jax.train.state import TrainState

__all__ = ["BATCH_KEYS", "loss_sums", "split_microbatches", "check_batch", "train_step",
           "guard_nonfinite", "jit_train_step", "resolve_objective"]


def split_microbatches(batch: dict, accum_steps: int) -> dict:
  """[B, ...] -> [accum_steps, B / accum_steps, ...]; micro-batch i holds rows
  i, i + accum_steps, ... so each one stays spread over the batch shards."""
  def split(x):
    if x.shape[0] % accum_steps:
      raise ValueError(f"train_step: batch size {x.shape[0]} is not divisible by "
                       f"accum_steps={accum_steps}.")
    return jnp.swapaxes(x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def check_batch(batch: dict, objective: Optional[Objective] = None) -> None:
  """A clear error unless `batch` holds [B, T] `tokens`, the optional [B, T] keys, and
  the objective's declared [B, T] / [B] arrays, and nothing else."""
  token_keys = BATCH_KEYS[1:] + (objective.token_keys if objective else ())
  row_keys = objective.row_keys if objective else ()
  if not isinstance(batch, dict) or "tokens" not in batch:
    raise ValueError(f"train_step: batch must be a dict with 'tokens' (and optionally "
                     f"{token_keys + row_keys}); got {type(batch).__name__} "
                     f"{sorted(batch) if isinstance(batch, dict) else ''}.")
  unknown = sorted(set(batch) - {"tokens", *token_keys, *row_keys})
  if unknown:
    name = f"objective {objective.name!r}" if objective else "the objective"
    raise ValueError(f"train_step: batch keys {unknown} are not read by {name}; it reads "
                     f"[B, T] arrays {('tokens',) + token_keys} and [B] arrays {row_keys}.")
  shapes = {k: tuple(v.shape) for k, v in batch.items()}
  bt = shapes["tokens"]
  wrong = {k: v for k, v in shapes.items()
           if v != (bt if k in ("tokens",) + token_keys else bt[:1])}
  if len(bt) != 2 or wrong:
    raise ValueError(f"train_step: expected [B, T] arrays under keys {('tokens',) + token_keys} "
                     f"and [B] arrays under {row_keys}; got {shapes}.")


def resolve_objective(objective: Optional[Objective], model_cfg: Optional[ModelConfig],
                      z_loss: float = 0.0, loss_chunk: int = 1024) -> Objective:
  """The objective to minimise: `objective`, else cross-entropy of `model_cfg`."""
  if objective is not None:
    return objective
  if model_cfg is None:
    raise ValueError("train_step: pass an objective, or model_cfg for the default "
                     "cross-entropy objective.")
  return cross_entropy(model_cfg, loss_chunk=loss_chunk, z_loss=z_loss)


def train_step(state: TrainState, batch: dict, *, optimizer: optax.GradientTransformation,
               objective: Optional[Objective] = None, model_cfg: Optional[ModelConfig] = None,
               accum_steps: int = 1, normaliser: Normaliser = WEIGHT, z_loss: float = 0.0,
               loss_chunk: int = 1024, lr_schedule: Optional[Callable] = None
               ) -> tuple[TrainState, dict]:
  """Pure: the new state and metrics. Minimises the objective's loss summed over
  the whole batch (split into `accum_steps` micro-batches) divided by `normaliser`.
  Without `objective`, next-token cross-entropy of `model_cfg` (with `z_loss`,
  `loss_chunk`). Metrics: the objective's report (loss, ...), grad_norm (before
  clipping) and, with `lr_schedule`, lr (the rate this update used)."""
  objective = resolve_objective(objective, model_cfg, z_loss, loss_chunk)
  normaliser = check_normaliser(normaliser)
  check_batch(batch, objective)
  # Gradients laid out like the params (by their logical axes, when known).
  layout = (lambda g: g) if model_cfg is None else (
      lambda g: jax.tree.map(constrain, g, param_axes(model_cfg)))

  def loss_fn(params, micro):
    sums = objective.sums(params, micro)
    return sums.loss, sums

  def accumulate(carry, micro):
    grads, sums = carry
    (_, micro_sums), micro_grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, micro)
    grads = layout(jax.tree.map(lambda g, mg: g + mg.astype(jnp.float32), grads, micro_grads))
    return (grads, sums + micro_sums), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
  micro_batches = split_microbatches(batch, accum_steps)
  zero_sums = jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), jax.eval_shape(
      objective.sums, state.params, jax.tree.map(lambda x: x[0], micro_batches)))
  (grads, sums), _ = jax.lax.scan(accumulate, (zeros, zero_sums), micro_batches)
  denom = denominator(normaliser, sums.weight)
  grads = jax.tree.map(lambda g: g / denom, grads)  # summed loss -> normalised loss
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, opt_state=opt_state,
                            params=optax.apply_updates(state.params, updates))
  metrics = {**objective.report(sums.metrics, denom, sums.weight),
             "grad_norm": optax.tree.norm(grads)}
  if lr_schedule is not None:
    metrics["lr"] = lr_schedule(state.step)
  return new_state, metrics


def guard_nonfinite(state: TrainState, new_state: TrainState, metrics: dict
                   ) -> tuple[TrainState, dict]:
  """Keeps `state` (params and optimizer statistics) when the step's loss or
  gradient norm is NaN/inf, so a non-finite value never enters the state (nor a
  checkpoint). The step counter still advances: the batch is skipped, not
  retried. metrics["nonfinite"] is 1 for such a step, else 0."""
  ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
  kept = jax.tree.map(lambda new, old: jnp.where(ok, new, old),
                      (new_state.params, new_state.opt_state), (state.params, state.opt_state))
  return (new_state.replace(params=kept[0], opt_state=kept[1]),
          {**metrics, "nonfinite": (~ok).astype(jnp.int32)})


def jit_train_step(mesh: Mesh, model_cfg: ModelConfig, optimizer: optax.GradientTransformation,
                   state_shardings: TrainState, *, objective: Optional[Objective] = None,
                   donate: bool = True, compiler_options: Optional[dict] = None,
                   nonfinite_guard: bool = False, **step_kwargs):
  """`train_step` jitted for `mesh`: state in and out with `state_shardings`
  (see `state.train_state_shardings`), batch arrays placed by
  `sharding.batch_tree_sharding` ([B, T] and [B] arrays split over the batch),
  metrics replicated, the input state donated.

  The returned function traces and runs under `jax.set_mesh(mesh)`, so the
  model's logical activation constraints apply. `objective` defaults to
  cross-entropy; `step_kwargs` go to `train_step` (accum_steps, normaliser,
  z_loss, loss_chunk, lr_schedule); `compiler_options` to XLA (e.g.
  {"xla_backend_optimization_level": 0} halves CPU compile time in tests). With
  `nonfinite_guard`, a step with a NaN/inf loss or gradient norm leaves params and
  optimizer state unchanged (`guard_nonfinite`)."""
  objective = resolve_objective(objective, model_cfg, step_kwargs.pop("z_loss", 0.0),
                                step_kwargs.pop("loss_chunk", 1024))

  def step(state, batch):
    # Looked up at trace time (not bound at definition) so tests can wrap it.
    new_state, metrics = train_step(state, batch, objective=objective, model_cfg=model_cfg,
                                    optimizer=optimizer, **step_kwargs)
    return guard_nonfinite(state, new_state, metrics) if nonfinite_guard else (new_state, metrics)

  # The batch is placed by `run` (one sharding per array rank); jit keeps it.
  jitted = jax.jit(step, in_shardings=(state_shardings, None),
                   out_shardings=(state_shardings, replicated(mesh)),
                   donate_argnums=(0,) if donate else (), compiler_options=compiler_options)

  def run(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    check_batch(batch, objective)
    check_batch_shape(mesh, batch["tokens"].shape)
    with jax.set_mesh(mesh):
      # A no-op for global arrays already laid out so (multi-host input); moves
      # host or otherwise placed arrays.
      return jitted(state, jax.device_put(batch, batch_tree_sharding(mesh, batch)))

  run.jitted = jitted
  run.objective = objective
  return run
