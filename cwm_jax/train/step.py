"""One optimizer step: forward, chunked loss, backward (with gradient
accumulation over micro-batches), AdamW update, metrics.

A batch is a dict of [B, T] arrays:
    tokens       int32  token ids
    segment_ids  int32  document id per token in a packed row (optional)
    positions    int32  position within the document (optional: derived from
                        segment_ids, or 0..T-1)
    loss_mask    bool/int/float  1 where the token is a prediction target
                        (optional: all ones)
Position t predicts tokens[t + 1] and counts iff loss_mask[t + 1] and
segment_ids[t + 1] == segment_ids[t] (see `loss.next_token_targets`). The loss
is the token-weighted mean over the whole batch, whatever `accum_steps` is.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from cwm_jax.model import transformer
from cwm_jax.model.config import ModelConfig
from cwm_jax.model.params import param_axes
from cwm_jax.sharding import batch_sharding, check_batch_shape, constrain, replicated
from cwm_jax.train.loss import LossSums, chunked_cross_entropy, next_token_targets, safe_weight
from cwm_jax.train.state import TrainState

BATCH_KEYS = ("tokens", "segment_ids", "positions", "loss_mask")


def loss_sums(params, batch: dict, model_cfg: ModelConfig, loss_chunk: int = 1024) -> LossSums:
  """Token-weighted loss sums of one (micro-)batch."""
  tokens_BT, segment_ids_BT = batch["tokens"], batch.get("segment_ids")
  x_BTD = transformer.hidden_states(params, tokens_BT, model_cfg, batch.get("positions"),
                                    segment_ids_BT)
  targets_BT, weights_BT = next_token_targets(tokens_BT, batch.get("loss_mask"), segment_ids_BT)
  head_DV = params["lm_head"].astype(jnp.dtype(model_cfg.dtype))
  return chunked_cross_entropy(x_BTD, head_DV, targets_BT, weights_BT, chunk_size=loss_chunk)


def split_microbatches(batch: dict, accum_steps: int) -> dict:
  """[B, ...] -> [accum_steps, B / accum_steps, ...]; micro-batch i holds rows
  i, i + accum_steps, ... so each one stays spread over the batch shards."""
  def split(x):
    if x.shape[0] % accum_steps:
      raise ValueError(f"train_step: batch size {x.shape[0]} is not divisible by "
                       f"accum_steps={accum_steps}.")
    return jnp.swapaxes(x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]), 0, 1)
  return jax.tree.map(split, batch)


def check_batch(batch: dict) -> None:
  if not isinstance(batch, dict) or "tokens" not in batch:
    raise ValueError(f"train_step: batch must be a dict with 'tokens' (and optionally "
                     f"{BATCH_KEYS[1:]}); got {type(batch).__name__} "
                     f"{sorted(batch) if isinstance(batch, dict) else ''}.")
  unknown = sorted(set(batch) - set(BATCH_KEYS))
  shapes = {k: tuple(v.shape) for k, v in batch.items()}
  if unknown or len(set(shapes.values())) != 1 or len(shapes["tokens"]) != 2:
    raise ValueError(f"train_step: expected [B, T] arrays under keys {BATCH_KEYS}; got {shapes}.")


def train_step(state: TrainState, batch: dict, *, model_cfg: ModelConfig,
               optimizer: optax.GradientTransformation, accum_steps: int = 1,
               z_loss: float = 0.0, loss_chunk: int = 1024,
               lr_schedule: Optional[Callable] = None) -> tuple[TrainState, dict]:
  """Pure: the new state and metrics. Minimises the token mean of
  cross-entropy + z_loss * logsumexp**2 over the whole batch, split into
  `accum_steps` micro-batches. Metrics: loss (the cross-entropy part),
  z_loss (the z-loss part), grad_norm (before clipping), n_tokens (total
  loss weight) and, with `lr_schedule`, lr (the rate this update used)."""
  check_batch(batch)
  axes = param_axes(model_cfg)

  def objective(params, micro):
    sums = loss_sums(params, micro, model_cfg, loss_chunk)
    return sums.ce + z_loss * sums.z, sums

  def accumulate(carry, micro):
    grads, sums = carry
    (_, micro_sums), micro_grads = jax.value_and_grad(objective, has_aux=True)(state.params, micro)
    grads = jax.tree.map(lambda g, mg, ax: constrain(g + mg.astype(jnp.float32), ax),
                         grads, micro_grads, axes)
    return (grads, sums + micro_sums), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
  (grads, sums), _ = jax.lax.scan(accumulate, (zeros, LossSums.zeros()),
                                  split_microbatches(batch, accum_steps))
  n_tokens = safe_weight(sums.weight)
  grads = jax.tree.map(lambda g: g / n_tokens, grads)  # sum over tokens -> token mean
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, opt_state=opt_state,
                            params=optax.apply_updates(state.params, updates))
  metrics = {"loss": sums.ce / n_tokens, "z_loss": z_loss * sums.z / n_tokens,
             "grad_norm": optax.tree.norm(grads), "n_tokens": sums.weight}
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
                   state_shardings: TrainState, *, donate: bool = True,
                   compiler_options: Optional[dict] = None, nonfinite_guard: bool = False,
                   **step_kwargs):
  """`train_step` jitted for `mesh`: state in and out with `state_shardings`
  (see `state.train_state_shardings`), batch arrays placed by
  `sharding.batch_sharding`, metrics replicated, the input state donated.

  The returned function traces and runs under `jax.set_mesh(mesh)`, so the
  model's logical activation constraints apply. `step_kwargs` go to
  `train_step` (accum_steps, z_loss, loss_chunk, lr_schedule);
  `compiler_options` to XLA (e.g. {"xla_backend_optimization_level": 0}
  halves CPU compile time in tests). With `nonfinite_guard`, a step with a
  NaN/inf loss or gradient norm leaves params and optimizer state unchanged
  (`guard_nonfinite`)."""
  def step(state, batch):
    # Looked up at trace time (not bound at definition) so tests can wrap it.
    new_state, metrics = train_step(state, batch, model_cfg=model_cfg, optimizer=optimizer,
                                    **step_kwargs)
    return guard_nonfinite(state, new_state, metrics) if nonfinite_guard else (new_state, metrics)

  batch_sh = batch_sharding(mesh)
  jitted = jax.jit(step, in_shardings=(state_shardings, batch_sh),
                   out_shardings=(state_shardings, replicated(mesh)),
                   donate_argnums=(0,) if donate else (), compiler_options=compiler_options)

  def run(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    check_batch(batch)
    check_batch_shape(mesh, batch["tokens"].shape)
    with jax.set_mesh(mesh):
      # A no-op for global arrays already laid out so (multi-host input); moves
      # host or otherwise placed arrays.
      return jitted(state, jax.device_put(batch, batch_sh))

  run.jitted = jitted
  return run
