"""The CWM decoder forward pass as pure functions of a parameter tree.

Layers are applied in groups of `scan_period` (CWM: 1 global + 3 local) with
`jax.lax.scan`, so compile time does not grow with depth; layers past the last
whole group run unscanned. `remat` wraps each layer (or each group, by
`remat_scope`) in `jax.checkpoint`.
Activations carry logical sharding constraints (see `layers.py`).

Training (`hidden_states`, `forward`) and inference with a KV cache
(`cached_hidden_states`: prefill, decoding, extending a cache) run the same
scanned layer body, `layers.decoder_layer`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from cwm_jax.model.config import GLOBAL, LOCAL, ModelConfig
from cwm_jax.model.dense import project
from cwm_jax.model.kv_cache import KVCache, LayerKV, constrain_cache, type_indices
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


def _apply_layers(layers, x_BTD, cos_BTH, sin_BTH, segment_ids_BT, cfg: ModelConfig,
                  update: Optional["CacheUpdate"] = None):
  """Runs every decoder layer; returns (x_BTD, cache or None).

  Without `update` (training) layers may be rematerialised; with it, the cache
  rides in the scan carry and each layer reads/writes its own row of its type's
  stack (`kv_cache.LayerKV`)."""
  n_groups, tail_start = scan_plan(cfg)
  p = cfg.scan_period
  dtype = jnp.dtype(cfg.dtype)
  index = type_indices(cfg)

  def one_layer(lp, x_BTD, layer_type, cache=None, type_index=0):
    # Cast one layer's weights at a time: no compute-dtype copy of the whole stack.
    lp = jax.tree.map(lambda a: a.astype(dtype), lp)
    mask = layer_mask(layer_type, segment_ids_BT, cfg)
    if update is None:
      return decoder_layer(lp, x_BTD, cos_BTH, sin_BTH, mask, cfg)[0], None
    k_LBSKH, v_LBSKH = cache.stacks(layer_type)
    kv = LayerKV(k_LBSKH, v_LBSKH, type_index, update.start_B, update.count_B,
                 ring=layer_type != GLOBAL, fresh=update.fresh)
    x_BTD, stacks = decoder_layer(lp, x_BTD, cos_BTH, sin_BTH, mask, cfg, kv)
    return x_BTD, cache.with_stacks(layer_type, *stacks)

  layer_fn = one_layer
  if cfg.remat != "none" and update is None:
    # Tail layers are always checkpointed one by one; scanned layers per layer
    # or per group (`remat_scope`: saved inputs vs backward working set).
    remat = functools.partial(jax.checkpoint, policy=REMAT_POLICIES.get(cfg.remat))
    one_layer = remat(one_layer, static_argnums=(2,))
    if cfg.remat_scope == "layer":
      layer_fn = one_layer
  cache = None if update is None else update.cache

  if n_groups:
    per_group = {t: sum(cfg.layer_types[j] == t for j in range(p)) for t in (GLOBAL, LOCAL)}

    def group(carry, xs):
      x_BTD, cache = carry
      g, gp = xs
      for j, lp in enumerate(_unstack_layers(gp, p)):
        t = cfg.layer_types[j]
        # Layer g*p+j is row g*per_group[t] + index[j] of its type's cache stack.
        x_BTD, cache = layer_fn(lp, x_BTD, t, cache, g * per_group[t] + index[j])
      return (x_BTD, cache), None

    if cfg.remat != "none" and cfg.remat_scope == "group" and update is None:
      group = jax.checkpoint(group, policy=REMAT_POLICIES.get(cfg.remat))

    head, layers = _split_layers(layers, [tail_start, cfg.n_layers - tail_start])
    grouped = jax.tree.map(lambda a: a.reshape(n_groups, p, *a.shape[1:]), head)
    (x_BTD, cache), _ = jax.lax.scan(group, (x_BTD, cache), (jnp.arange(n_groups), grouped))

  tail = _unstack_layers(layers, cfg.n_layers - tail_start)
  for i, lp in zip(range(tail_start, cfg.n_layers), tail):
    x_BTD, cache = one_layer(lp, x_BTD, cfg.layer_types[i], cache, index[i])
  return x_BTD, cache


def _split_layers(layers, sizes: list[int]) -> list:
  """The stacked [L, ...] layer params cut along L into pieces of `sizes`, with one
  `lax.split` per weight: its transpose concatenates the pieces' gradients.
  Indexing `a[i]` per layer instead transposes to one zero-padded [L, ...] gradient
  per layer, summed: L adds of the whole stack (on CPU ~0.3% of the quickstart's
  unscanned step per stacked weight, issue 13)."""
  leaves, treedef = jax.tree.flatten(layers)
  parts = [jax.lax.split(a, sizes) for a in leaves]
  return [treedef.unflatten([ps[j] for ps in parts]) for j in range(len(sizes))]


def _unstack_layers(layers, n: int) -> list:
  """[layer i's params for i < n] of a stack of n layers (`_split_layers`)."""
  return [jax.tree.map(lambda a: a[0], piece) for piece in _split_layers(layers, [1] * n)]


class CacheUpdate(NamedTuple):
  """What a forward pass with a KV cache does to it: T new tokens per row start at
  `cache.positions`, the first `count_B` of them real; `fresh`: the cache is empty."""
  cache: KVCache
  count_B: jax.Array
  fresh: bool

  @property
  def start_B(self):
    return self.cache.positions


def _embed(params: dict, tokens_BT, positions_BT, cfg: ModelConfig):
  """Token embeddings in the compute dtype and RoPE tables of the positions."""
  if positions_BT is None:
    positions_BT = jnp.broadcast_to(jnp.arange(tokens_BT.shape[1]), tokens_BT.shape)
  inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
  cos_BTH, sin_BTH = rope_cos_sin(positions_BT, inv_freq)
  cos_BTH = constrain(cos_BTH, ("batch", "length", None))
  sin_BTH = constrain(sin_BTH, ("batch", "length", None))
  # Gather rows from a table split over vocab only (the FSDP all-gather of its
  # model dim happens here): a table also split on D makes XLA replicate it.
  embed_VD = constrain(params["embed"], ("vocab", None))
  x_BTD = constrain(jnp.take(embed_VD, tokens_BT, axis=0).astype(jnp.dtype(cfg.dtype)), X_AXES)
  return x_BTD, cos_BTH, sin_BTH


def _final_norm(params: dict, x_BTD, cfg: ModelConfig):
  final_norm_D = params["final_norm"].astype(jnp.dtype(cfg.dtype))
  return constrain(rms_norm(x_BTD, final_norm_D, cfg.rms_norm_eps), X_AXES)


def hidden_states(params: dict, tokens_BT, cfg: ModelConfig, positions_BT=None,
                  segment_ids_BT=None):
  """Final-normed hidden states [B, T, D] in the compute dtype."""
  if positions_BT is None and segment_ids_BT is not None:
    positions_BT = positions_from_segments(segment_ids_BT)
  x_BTD, cos_BTH, sin_BTH = _embed(params, tokens_BT, positions_BT, cfg)
  x_BTD, _ = _apply_layers(params["layers"], x_BTD, cos_BTH, sin_BTH, segment_ids_BT, cfg)
  return _final_norm(params, x_BTD, cfg)


def cached_hidden_states(params: dict, tokens_BT, cfg: ModelConfig, cache: KVCache, counts_B,
                         *, fresh: bool) -> tuple[jax.Array, KVCache]:
  """Hidden states [B, T, D] of T new tokens per row fed at `cache.positions`
  (the first `counts_B` real), and the cache holding them (positions + counts).
  `fresh`: the cache is empty (a prompt): attention runs within the tokens with
  the training backends; else they attend to the cached keys too."""
  T = tokens_BT.shape[1]
  counts_B = counts_B.astype(jnp.int32)
  positions_BT = cache.positions[:, None] + jnp.arange(T)[None, :]
  x_BTD, cos_BTH, sin_BTH = _embed(params, tokens_BT, positions_BT, cfg)
  update = CacheUpdate(cache, counts_B, fresh)
  x_BTD, cache = _apply_layers(params["layers"], x_BTD, cos_BTH, sin_BTH, None, cfg, update)
  cache = constrain_cache(cache._replace(positions=update.start_B + counts_B))
  return _final_norm(params, x_BTD, cfg), cache


def logits_from_hidden(params: dict, x_BTD, cfg: ModelConfig):
  head_DV = params["lm_head"].astype(jnp.dtype(cfg.dtype))
  logits_BTV = project("BTD,DV->BTV", x_BTD, head_DV, preferred_element_type=jnp.float32)
  return constrain(logits_BTV, ("batch", "length", "act_vocab"))


def forward(params: dict, tokens_BT, cfg: ModelConfig, positions_BT=None,
            segment_ids_BT=None):
  """Logits [B, T, V] in float32."""
  x_BTD = hidden_states(params, tokens_BT, cfg, positions_BT, segment_ids_BT)
  return logits_from_hidden(params, x_BTD, cfg)


jit_forward = jax.jit(forward, static_argnames=("cfg",))
