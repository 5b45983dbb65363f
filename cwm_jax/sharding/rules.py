"""The one table from logical axis names to mesh axes. Parameters and
activations name logical axes only (see `cwm_jax/model/params.py`); nothing
outside this package names a mesh axis.

Defaults follow MaxText-style FSDP + tensor parallelism: weights are sharded
over `fsdp` on their model dimension and over `tensor` on heads / MLP / vocab;
the batch is split over `data` and `fsdp`; the sequence over `context`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# logical axis -> mesh axis, tuple of mesh axes, or None (replicated).
LOGICAL_RULES: dict[str, Optional[object]] = {
    # parameters
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "layers": None,
    "norm": None,
    # activations
    "batch": ("data", "fsdp"),
    "length": "context",
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_mlp": "tensor",
    "act_vocab": "tensor",
}


def logical_to_spec(axes: Sequence[Optional[str]], mesh: Optional[Mesh] = None,
                    rules: Optional[dict] = None) -> PartitionSpec:
  """PartitionSpec for logical `axes`. Mesh axes of size 1 or already used by
  an earlier dimension are dropped, so every spec is valid on every mesh."""
  rules = LOGICAL_RULES if rules is None else rules
  used, spec = set(), []
  for name in axes:
    if name is not None and name not in rules:
      raise ValueError(f"Logical axis {name!r} has no sharding rule; known: {sorted(rules)}.")
    target = None if name is None else rules[name]
    mesh_axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
    keep = tuple(a for a in mesh_axes if a not in used and
                 (mesh is None or mesh.shape.get(a, 1) > 1))
    used.update(keep)
    spec.append(None if not keep else keep[0] if len(keep) == 1 else keep)
  return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, axes: Sequence[Optional[str]], rules: Optional[dict] = None) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(axes, mesh, rules))


def tree_shardings(mesh: Mesh, axes_tree, rules: Optional[dict] = None):
  """NamedShardings for a tree whose leaves are tuples of logical axis names."""
  return jax.tree.map(lambda axes: named_sharding(mesh, axes, rules), axes_tree,
                      is_leaf=lambda x: isinstance(x, tuple))


def constrain(x: jax.Array, axes: Sequence[Optional[str]]) -> jax.Array:
  """`with_sharding_constraint` by logical axes under the current mesh; a no-op
  when no mesh is set (single-device code paths)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(axes, mesh))


def ambient_axis_size(logical: str) -> int:
  """How many shards the current mesh splits logical axis `logical` into (1
  without a mesh)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return 1
  spec = logical_to_spec((logical,), mesh)[0]
  names = () if spec is None else (spec,) if isinstance(spec, str) else spec
  size = 1
  for name in names:
    size *= mesh.shape[name]
  return size
