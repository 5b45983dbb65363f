"""The CWM decoder forward pass as pure functions of a parameter tree.

Layers are applied in groups of `scan_period` (CWM: 1 global + 3 local) with
`jax.lax.scan`, so compile time does not grow with depth; layers past the last
whole group run unscanned. `remat` wraps each layer (or each group, by
`remat_scope`) in `jax.checkpoint`.
Activations carry logical sharding constraints (see `layers.py`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from cwm_jax.model.config import ModelConfig
from cwm_jax.model.layers import X_AXES, decoder_layer, layer_mask, rms_norm
from cwm_jax.model.rope import inverse_frequencies, rope_cos_sin
from cwm_jax.sharding.rules import constrain

REMAT_POLICIES = {
    "full": None,  # save only the checkpointed unit's input; recompute it in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def positions_from_segments(segment_ids_BT):
  """Positions that restart at 0 at every document boundary of a packed row."""
  T = segment_ids_BT.shape[1]
  t_BT = jnp.broadcast_to(jnp.arange(T), segment_ids_BT.shape)
  is_start_BT = jnp.concatenate(
      [jnp.ones_like(segment_ids_BT[:, :1], bool),
       segment_ids_BT[:, 1:] != segment_ids_BT[:, :-1]], axis=1)
  start_BT = jax.lax.cummax(jnp.where(is_start_BT, t_BT, 0), axis=1)
  return t_BT - start_BT


def scan_plan(cfg: ModelConfig) -> tuple[int, int]:
  """(number of scanned groups, index of the first unscanned layer)."""
  if not cfg.scan_layers:
    return 0, 0
  n_groups = cfg.n_layers // cfg.scan_period  # periodicity checked by ModelConfig
  return n_groups, n_groups * cfg.scan_period


def _apply_layers(layers, x_BTD, cos_BTH, sin_BTH, segment_ids_BT, cfg: ModelConfig):
  n_groups, tail_start = scan_plan(cfg)
  p = cfg.scan_period
  dtype = jnp.dtype(cfg.dtype)

  def one_layer(lp, x_BTD, layer_type):
    # Cast one layer's weights at a time: no compute-dtype copy of the whole stack.
    lp = jax.tree.map(lambda a: a.astype(dtype), lp)
    return decoder_layer(lp, x_BTD, cos_BTH, sin_BTH,
                         layer_mask(layer_type, segment_ids_BT, cfg), cfg)

  remat = functools.partial(jax.checkpoint, policy=REMAT_POLICIES.get(cfg.remat))
  layer_fn = one_layer
  if cfg.remat != "none":
    # Tail layers are always checkpointed one by one; scanned layers per layer
    # or per group (`remat_scope`: saved inputs vs backward working set).
    one_layer = remat(one_layer, static_argnums=(2,))
    if cfg.remat_scope == "layer":
      layer_fn = one_layer

  if n_groups:
    def group(x_BTD, gp):
      for j in range(p):
        x_BTD = layer_fn(jax.tree.map(lambda a: a[j], gp), x_BTD, cfg.layer_types[j])
      return x_BTD, None

    if cfg.remat != "none" and cfg.remat_scope == "group":
      group = remat(group)

    grouped = jax.tree.map(
        lambda a: a[:tail_start].reshape(n_groups, p, *a.shape[1:]), layers)
    x_BTD, _ = jax.lax.scan(group, x_BTD, grouped)

  for i in range(tail_start, cfg.n_layers):
    x_BTD = one_layer(jax.tree.map(lambda a: a[i], layers), x_BTD, cfg.layer_types[i])
  return x_BTD


def hidden_states(params: dict, tokens_BT, cfg: ModelConfig, positions_BT=None,
                  segment_ids_BT=None):
  """Final-normed hidden states [B, T, D] in the compute dtype."""
  dtype = jnp.dtype(cfg.dtype)
  if positions_BT is None:
    positions_BT = (positions_from_segments(segment_ids_BT) if segment_ids_BT is not None
                    else jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape))
  inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
  cos_BTH, sin_BTH = rope_cos_sin(positions_BT, inv_freq)
  cos_BTH = constrain(cos_BTH, ("batch", "length", None))
  sin_BTH = constrain(sin_BTH, ("batch", "length", None))
  # Gather rows from a table split over vocab only (the FSDP all-gather of its
  # model dim happens here): a table also split on D makes XLA replicate it.
  embed_VD = constrain(params["embed"], ("vocab", None))
  x_BTD = constrain(jnp.take(embed_VD, tokens_BT, axis=0).astype(dtype), X_AXES)
  x_BTD = _apply_layers(params["layers"], x_BTD, cos_BTH, sin_BTH, segment_ids_BT, cfg)
  final_norm_D = params["final_norm"].astype(dtype)
  return constrain(rms_norm(x_BTD, final_norm_D, cfg.rms_norm_eps), X_AXES)


def logits_from_hidden(params: dict, x_BTD, cfg: ModelConfig):
  head_DV = params["lm_head"].astype(jnp.dtype(cfg.dtype))
  logits_BTV = jnp.einsum("BTD,DV->BTV", x_BTD, head_DV, preferred_element_type=jnp.float32)
  return constrain(logits_BTV, ("batch", "length", "act_vocab"))


def forward(params: dict, tokens_BT, cfg: ModelConfig, positions_BT=None,
            segment_ids_BT=None):
  """Logits [B, T, V] in float32."""
  x_BTD = hidden_states(params, tokens_BT, cfg, positions_BT, segment_ids_BT)
  return logits_from_hidden(params, x_BTD, cfg)


jit_forward = jax.jit(forward, static_argnames=("cfg",))
