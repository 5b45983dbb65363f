"""Shardings of the things a training step moves: parameters, optimizer state
and batches, all derived from the logical-axis rules in `rules.py`.

    p_sh = param_shardings(mesh, cfg)                 # tree like the params
    o_sh = opt_state_shardings(mesh, abstract_opt_state, abstract_params, p_sh)
    b_sh = batch_sharding(mesh)                       # [B, T] arrays

Optimizer states (optax) hold copies of the parameter tree (Adam's `mu`,
`nu`, ...) next to scalars (`count`). Each state leaf whose tree path *ends
with* a parameter's path and has that parameter's shape gets the parameter's
sharding; everything else (counts, schedule state, factored statistics)
is replicated. This works for any optax chain, `optax.masked` included,
without calling `init` on placeholders.
"""

from __future__ import annotations

from typing import Optional

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cwm_jax.model.config import ModelConfig
from cwm_jax.model.params import param_axes
from cwm_jax.sharding.rules import logical_to_spec, tree_shardings

BATCH_AXES = ("batch", "length")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def param_shardings(mesh: Mesh, cfg: ModelConfig, rules: Optional[dict] = None):
  """NamedSharding of every parameter, from `param_axes(cfg)` and the rules."""
  return tree_shardings(mesh, param_axes(cfg), rules)


def batch_sharding(mesh: Mesh, rules: Optional[dict] = None) -> NamedSharding:
  """Sharding of [B, T] input arrays: batch over data/fsdp, length over context."""
  return NamedSharding(mesh, logical_to_spec(BATCH_AXES, mesh, rules))


def batch_tree_sharding(mesh: Mesh, batch, rules: Optional[dict] = None):
  """Per array of a batch: [B, T] arrays as `batch_sharding`, [B] arrays split
  over the batch axes only."""
  two_d = batch_sharding(mesh, rules)
  one_d = NamedSharding(mesh, logical_to_spec(BATCH_AXES[:1], mesh, rules))
  return jax.tree.map(lambda x: one_d if len(x.shape) == 1 else two_d, batch)


def _key(k) -> object:
  # DictKey / GetAttrKey / SequenceKey -> a hashable, comparable value.
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return getattr(k, attr)
  return str(k)


def mirror_param_shardings(tree, abstract_params, shardings, mesh: Mesh):
  """Shardings for `tree` (e.g. an optimizer state, arrays or ShapeDtypeStructs):
  a leaf gets the sharding of the parameter whose path is the longest suffix of
  the leaf's path and whose shape equals the leaf's; other leaves are replicated."""
  by_path = {}
  for (path, p), (_, s) in zip(
      jax.tree_util.tree_flatten_with_path(abstract_params)[0],
      jax.tree_util.tree_flatten_with_path(shardings)[0]):
    by_path[tuple(_key(k) for k in path)] = (tuple(p.shape), s)
  lengths = sorted({len(k) for k in by_path}, reverse=True)
  rep = replicated(mesh)

  def pick(path, leaf):
    keys = tuple(_key(k) for k in path)
    shape = tuple(getattr(leaf, "shape", ()))
    for n in lengths:
      if n <= len(keys) and keys[len(keys) - n:] in by_path:
        p_shape, s = by_path[keys[len(keys) - n:]]
        if p_shape == shape:
          return s
    return rep

  return jax.tree_util.tree_map_with_path(pick, tree)


def opt_state_shardings(mesh: Mesh, abstract_opt_state, abstract_params, shardings=None,
                        cfg: Optional[ModelConfig] = None):
  """Shardings of an optimizer state that mirror the parameters' shardings.

  `shardings` defaults to `param_shardings(mesh, cfg)`."""
  if shardings is None:
    if cfg is None:
      raise ValueError("opt_state_shardings: pass the parameter shardings or the model cfg.")
    shardings = param_shardings(mesh, cfg)
  return mirror_param_shardings(abstract_opt_state, abstract_params, shardings, mesh)


def check_batch_shape(mesh: Mesh, shape, what: str = "batch") -> None:
  """A clear error when a [B, T] array cannot be split by `batch_sharding`."""
  spec = batch_sharding(mesh).spec
  for dim, size, axes in zip(("batch size", "sequence length"), shape, spec):
    names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    n = 1
    for a in names:
      n *= mesh.shape[a]
    if size % n:
      raise ValueError(f"{what}: {dim} {size} is not divisible by {n}, the number of "
                       f"shards over mesh axes {' x '.join(names)} ({dict(mesh.shape)}).")
