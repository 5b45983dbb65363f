"""Masked next-token cross-entropy and per-token log-probs, computed in chunks of
the sequence so the [B, T, V] float32 logits (V = 128k for CWM) never exist at once.

Target convention (packed rows, see `next_token_targets`): position t predicts
tokens[t + 1]; it counts iff loss_mask[t + 1] is set and tokens t and t + 1
belong to the same document (segment_ids equal). The last position of a row
has no target. The loss is returned as *sums* with their token weight, so
micro-batches of gradient accumulation (and data-parallel shards) combine by
tokens, not by rows.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from cwm_jax.model.dense import project
from cwm_jax.sharding.rules import constrain


class LossSums(NamedTuple):
  """Weighted sums over tokens: cross-entropy, logsumexp**2 (for z-loss), weight."""

  ce: jax.Array
  z: jax.Array
  weight: jax.Array

  def __add__(self, other: "LossSums") -> "LossSums":  # type: ignore[override]
    return LossSums(*(a + b for a, b in zip(self, other)))

  @classmethod
  def zeros(cls) -> "LossSums":
    return cls(*(jnp.zeros((), jnp.float32) for _ in range(3)))


def next_token_targets(tokens_BT, loss_mask_BT=None, segment_ids_BT=None):
  """(targets_BT, weights_BT float32): targets[t] = tokens[t + 1], weighted by
  loss_mask[t + 1] * (segment_ids[t + 1] == segment_ids[t]); 0 at t = T - 1.
  A float loss_mask acts as per-token weights; bool/int as 0/1."""
  def shift(a_BT):  # a[t] <- a[t + 1], 0 at the end
    return jnp.concatenate([a_BT[:, 1:], jnp.zeros_like(a_BT[:, :1])], axis=1)

  mask_BT = jnp.ones(tokens_BT.shape, jnp.float32) if loss_mask_BT is None else loss_mask_BT
  weights_BT = shift(mask_BT.astype(jnp.float32))
  if segment_ids_BT is not None:
    weights_BT = jnp.where(segment_ids_BT == shift(segment_ids_BT), weights_BT, 0.0)
  return shift(tokens_BT), weights_BT


def _chunk_sums(x_BCD, head_DV, targets_BC, weights_BC) -> LossSums:
  logits_BCV = project("BCD,DV->BCV", x_BCD, head_DV, preferred_element_type=jnp.float32)
  logits_BCV = constrain(logits_BCV, ("batch", "length", "act_vocab"))
  lse_BC = jax.nn.logsumexp(logits_BCV, axis=-1)
  # A masked sum instead of a gather, so a vocab-sharded chunk stays sharded.
  vocab_V = jnp.arange(logits_BCV.shape[-1], dtype=targets_BC.dtype)
  label_BC = jnp.sum(jnp.where(vocab_V == targets_BC[..., None], logits_BCV, 0.0), axis=-1)
  return LossSums(jnp.sum(weights_BC * (lse_BC - label_BC)),
                  jnp.sum(weights_BC * lse_BC * lse_BC),
                  jnp.sum(weights_BC))


def chunked_cross_entropy(x_BTD, head_DV, targets_BT, weights_BT, *,
                          chunk_size: int = 1024) -> LossSums:
  """Token-weighted cross-entropy sums of logits x @ head (f32 accumulation).

  The sequence is cut into n = ceil(T / chunk_size) strided slices (slice j
  holds positions j, j + n, j + 2n, ...), scanned one at a time under
  `jax.checkpoint`: forward and backward hold one [B, T / n, V] logits chunk.
  Strided (not contiguous) slices keep every slice spread over all devices
  when the sequence is sharded. Order does not matter: the result is a sum.
  """
  if chunk_size <= 0:
    raise ValueError(f"chunked_cross_entropy: chunk_size={chunk_size}, expected a positive int.")
  B, T, D = x_BTD.shape
  n, C = _strided_chunks(T, chunk_size)
  if C * n != T:  # pad with zero-weight positions
    pad = C * n - T
    x_BTD = jnp.pad(x_BTD, ((0, 0), (0, pad), (0, 0)))
    targets_BT = jnp.pad(targets_BT, ((0, 0), (0, pad)))
    weights_BT = jnp.pad(weights_BT, ((0, 0), (0, pad)))
  x_nBCD = jnp.moveaxis(x_BTD.reshape(B, C, n, D), 2, 0)
  targets_nBC = jnp.moveaxis(targets_BT.reshape(B, C, n), 2, 0)
  weights_nBC = jnp.moveaxis(weights_BT.astype(jnp.float32).reshape(B, C, n), 2, 0)
  chunk_sums = jax.checkpoint(_chunk_sums)

  def body(total, xs):
    x_BCD, targets_BC, weights_BC = xs
    x_BCD = constrain(x_BCD, ("batch", "length", "act_embed"))
    return total + chunk_sums(x_BCD, head_DV, targets_BC, weights_BC), None

  total, _ = jax.lax.scan(body, LossSums.zeros(), (x_nBCD, targets_nBC, weights_nBC))
  return total


def _chunk_logprobs(x_BCD, head_DV, targets_BC, *, temperature, with_entropy: bool, filter_fn):
  logits_BCV = project("BCD,DV->BCV", x_BCD, head_DV, preferred_element_type=jnp.float32)
  logits_BCV = constrain(logits_BCV, ("batch", "length", "act_vocab"))
  if not (isinstance(temperature, float) and temperature == 1.0):
    logits_BCV = logits_BCV / temperature
  if filter_fn is not None:
    B, C, V = logits_BCV.shape
    logits_BCV = filter_fn(logits_BCV.reshape(B * C, V)).reshape(B, C, V)
  lse_BC = jax.nn.logsumexp(logits_BCV, axis=-1)
  vocab_V = jnp.arange(logits_BCV.shape[-1], dtype=targets_BC.dtype)
  label_BC = jnp.sum(jnp.where(vocab_V == targets_BC[..., None], logits_BCV, 0.0), axis=-1)
  if not with_entropy:
    return label_BC - lse_BC
  probs_BCV = jnp.exp(logits_BCV - lse_BC[..., None])
  finite_BCV = jnp.where(probs_BCV > 0, logits_BCV, 0.0)  # truncated logits: 0 * -inf
  return label_BC - lse_BC, lse_BC - jnp.sum(probs_BCV * finite_BCV, axis=-1)


def _strided_chunks(T: int, chunk_size: int) -> tuple[int, int]:
  """(n, C): n strided slices of C positions covering T (padded to n * C)."""
  if chunk_size <= 0:
    raise ValueError(f"chunk_size={chunk_size}: expected a positive int.")
  n = -(-T // chunk_size)
  return n, -(-T // n)


def chunked_token_logprobs(x_BTD, head_DV, targets_BT, *, chunk_size: int = 1024,
                           temperature=1.0, with_entropy: bool = False, filter_fn=None):
  """Per-token log-probs [B, T] of `targets_BT` under softmax(x @ head / temperature),
  and with `with_entropy` also the entropy [B, T] of that distribution.
  `temperature` may be traced; `filter_fn` ([N, V] -> [N, V], e.g. top-k/top-p
  truncation to -inf) is applied to the scaled logits first.

  Chunked exactly like `chunked_cross_entropy` (strided slices scanned under
  `jax.checkpoint`), so forward and backward hold one [B, T / n, V] logits chunk and
  no [B, T, V] float32 array exists. Differentiable: policy-gradient losses are
  built on it.
  """
  B, T, D = x_BTD.shape
  n, C = _strided_chunks(T, chunk_size)
  if C * n != T:
    x_BTD = jnp.pad(x_BTD, ((0, 0), (0, C * n - T), (0, 0)))
    targets_BT = jnp.pad(targets_BT, ((0, 0), (0, C * n - T)))
  x_nBCD = jnp.moveaxis(x_BTD.reshape(B, C, n, D), 2, 0)
  targets_nBC = jnp.moveaxis(targets_BT.reshape(B, C, n), 2, 0)
  if isinstance(temperature, (int, float)):
    temperature = float(temperature)
  chunk = jax.checkpoint(functools.partial(_chunk_logprobs, with_entropy=with_entropy,
                                           filter_fn=filter_fn))

  def body(_, xs):
    x_BCD, targets_BC = xs
    return None, chunk(constrain(x_BCD, ("batch", "length", "act_embed")), head_DV, targets_BC,
                       temperature=temperature)

  _, out = jax.lax.scan(body, None, (x_nBCD, targets_nBC))
  # Slice j holds positions j, j + n, ...: [n, B, C] -> [B, C, n] -> [B, T].
  unstride = lambda a_nBC: jnp.moveaxis(a_nBC, 0, 2).reshape(B, C * n)[:, :T]
  return jax.tree.map(unstride, out)


def mean_loss(sums: LossSums, z_loss: float = 0.0) -> jax.Array:
  """(ce + z_loss * z) / weight: the objective of one batch (0 if no tokens)."""
  return (sums.ce + z_loss * sums.z) / safe_weight(sums.weight)


def safe_weight(weight):
  """The token weight to divide by: itself, or 1 when nothing was counted."""
  return jnp.where(weight > 0, weight, 1.0)

