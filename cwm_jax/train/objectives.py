"""Objectives as values: what `train_step` minimises (nanodo's `get_loss_fn`, in spirit).

    objective = cross_entropy(model_cfg, loss_chunk=1024, z_loss=1e-4)
    new_state, metrics = train_step(state, batch, objective=objective, optimizer=opt)

An `Objective` maps (params, micro-batch) to `ObjectiveSums`: the loss *summed*
over tokens (or rows), its normaliser contribution (`weight`, e.g. the number of
target tokens) and metric sums. The step adds these over micro-batches and
divides once by the normaliser: the batch's total weight, or a constant
(CWM's RL divides by N = 131,072). Sums make gradient accumulation exact for
either, whatever the split.

A batch always has [B, T] `tokens` (and optionally `segment_ids`, `positions`,
`loss_mask`); an objective declares any other arrays it reads (advantages,
behaviour log-probs, ...) as `token_keys` ([B, T]) or `row_keys` ([B]), and a
batch carrying anything undeclared is refused with the keys named.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from cwm_jax.model import transformer
from cwm_jax.model.attention.context_parallel import inverse_permutation, zigzag_permutation
from cwm_jax.model.config import ModelConfig
from cwm_jax.sharding.rules import ambient_axis_size
from cwm_jax.train.loss import (LossSums, chunked_cross_entropy, chunked_token_logprobs,
                                next_token_targets, safe_weight)

BATCH_KEYS = ("tokens", "segment_ids", "positions", "loss_mask")
WEIGHT = "weight"  # normaliser: the batch's total loss weight
Normaliser = Union[str, float]


class ObjectiveSums(NamedTuple):
  """Per (micro-)batch: summed loss (what the gradient is taken of), its weight,
  and metric sums (added over micro-batches, reported by `Objective.report`)."""
  loss: jax.Array
  weight: jax.Array
  metrics: dict

  def __add__(self, other: "ObjectiveSums") -> "ObjectiveSums":  # type: ignore[override]
    return ObjectiveSums(self.loss + other.loss, self.weight + other.weight,
                         jax.tree.map(jnp.add, self.metrics, other.metrics))


def _default_report(metric_sums: dict, denominator, weight) -> dict:
  """Metric sums as means over the batch's weight; n_tokens is the weight."""
  return {**{k: v / safe_weight(weight) for k, v in metric_sums.items()}, "n_tokens": weight}


@dataclasses.dataclass(frozen=True)
class Objective:
  """`sums(params, batch) -> ObjectiveSums`; the extra batch arrays it reads; and
  `report(metric_sums, denominator, weight) -> metrics` (must hold "loss", the
  minimised quantity: loss sum / denominator)."""
  name: str
  sums: Callable[[dict, dict], ObjectiveSums]
  token_keys: tuple[str, ...] = ()
  row_keys: tuple[str, ...] = ()
  report: Callable[[dict, jax.Array, jax.Array], dict] = _default_report

  @property
  def batch_keys(self) -> tuple[str, ...]:
    return BATCH_KEYS + self.token_keys + self.row_keys


def denominator(normaliser: Normaliser, weight):
  """What the summed loss and gradients are divided by."""
  if normaliser == WEIGHT:
    return safe_weight(weight)
  return jnp.float32(normaliser)


def check_normaliser(normaliser) -> Normaliser:
  if normaliser == WEIGHT:
    return normaliser
  if isinstance(normaliser, bool) or not isinstance(normaliser, (int, float)) or \
      not normaliser > 0:
    raise ValueError(f"normaliser={normaliser!r}: expected {WEIGHT!r} (the batch's total loss "
                     "weight) or a positive number (a constant, e.g. 131072).")
  return float(normaliser)


# ---------------------------------------------------------------- the model's view of a batch


class ModelInputs(NamedTuple):
  """A batch as the model runs it: [B, T] tokens, true positions, segment ids,
  next-token targets and their weights, all in the model's token order, and
  `restore` mapping a [B, T] result back to the batch's order."""
  tokens: jax.Array
  positions: jax.Array
  segment_ids: Optional[jax.Array]
  targets: jax.Array
  weights: jax.Array
  restore: Callable


def model_inputs(batch: dict, model_cfg: ModelConfig) -> ModelInputs:
  """Targets, weights and positions are computed in natural order; with zig-zag
  context load balance and the sequence split over C > 1 devices, every [B, T]
  array is then permuted to the zig-zag layout the attention expects (a loss summed
  over tokens does not depend on their order)."""
  tokens_BT, segment_ids_BT = batch["tokens"], batch.get("segment_ids")
  positions_BT = batch.get("positions")
  if positions_BT is None:
    positions_BT = (transformer.positions_from_segments(segment_ids_BT)
                    if segment_ids_BT is not None else
                    jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape))
  targets_BT, weights_BT = next_token_targets(tokens_BT, batch.get("loss_mask"), segment_ids_BT)
  arrays = [tokens_BT, positions_BT, segment_ids_BT, targets_BT, weights_BT]
  C = ambient_axis_size("length")
  if model_cfg.context_load_balance != "zigzag" or C == 1:
    return ModelInputs(*arrays, restore=lambda a_BT: a_BT)
  perm = zigzag_permutation(tokens_BT.shape[1], C)
  inverse = inverse_permutation(perm)
  permuted = [None if a is None else jnp.take(a, perm, axis=1) for a in arrays]
  return ModelInputs(*permuted, restore=lambda a_BT: jnp.take(a_BT, inverse, axis=1))


def _hidden(params, inputs: ModelInputs, model_cfg: ModelConfig):
  return transformer.hidden_states(params, inputs.tokens, model_cfg, inputs.positions,
                                   inputs.segment_ids)


# ---------------------------------------------------------------- next-token cross-entropy


def loss_sums(params, batch: dict, model_cfg: ModelConfig, loss_chunk: int = 1024) -> LossSums:
  """Token-weighted cross-entropy sums of one (micro-)batch."""
  inputs = model_inputs(batch, model_cfg)
  head_DV = params["lm_head"].astype(jnp.dtype(model_cfg.dtype))
  return chunked_cross_entropy(_hidden(params, inputs, model_cfg), head_DV, inputs.targets,
                               inputs.weights, chunk_size=loss_chunk)


def cross_entropy(model_cfg: ModelConfig, *, loss_chunk: int = 1024,
                  z_loss: float = 0.0) -> Objective:
  """Next-token cross-entropy + z_loss * logsumexp**2 (pretrain, midtrain, SFT).
  Metrics: loss (the cross-entropy part), z_loss, n_tokens."""
  def sums(params, batch):
    s = loss_sums(params, batch, model_cfg, loss_chunk)
    return ObjectiveSums(s.ce + z_loss * s.z, s.weight, {"ce": s.ce, "z": s.z})

  def report(m, denom, weight):
    return {"loss": m["ce"] / denom, "z_loss": z_loss * m["z"] / denom, "n_tokens": weight}

  return Objective("cross_entropy", sums, report=report)


# ---------------------------------------------------------------- per-token log-probs


def token_logprobs(params, batch: dict, model_cfg: ModelConfig, *, loss_chunk: int = 1024,
                   temperature: float = 1.0, with_entropy: bool = False):
  """(logp_BT, weights_BT[, entropy_BT]): log p(tokens[t + 1] | tokens[..t]) at each
  position t (0 where t has no target), its target weight as in the cross-entropy,
  and optionally the entropy of the predicted distribution. Differentiable,
  chunked over the sequence: no [B, T, V] float32 array exists."""
  inputs = model_inputs(batch, model_cfg)
  head_DV = params["lm_head"].astype(jnp.dtype(model_cfg.dtype))
  out = chunked_token_logprobs(_hidden(params, inputs, model_cfg), head_DV, inputs.targets,
                               chunk_size=loss_chunk, temperature=temperature,
                               with_entropy=with_entropy)
  weights_BT = inputs.restore(inputs.weights)
  if with_entropy:
    return inputs.restore(out[0]), weights_BT, inputs.restore(out[1])
  return inputs.restore(out), weights_BT


OBJECTIVES: dict[str, Callable[..., Objective]] = {"cross_entropy": cross_entropy}
