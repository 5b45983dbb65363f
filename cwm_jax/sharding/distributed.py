"""Multi-process start-up and process-local batches -> global arrays.

The same training code runs on one CPU and on a pod: every process calls
`initialize_distributed()` first (a no-op for a single process), builds the
same global mesh over `jax.devices()`, loads only its own rows of each batch
and turns them into global `jax.Array`s with `global_batch`.

    initialize_distributed()      # from flags or CWM_COORDINATOR, CWM_NUM_PROCESSES,
                                  # CWM_PROCESS_ID [, CWM_LOCAL_DEVICE_IDS]
    mesh = make_mesh(MeshConfig(data=-1, fsdp=8))
    sharding = batch_sharding(mesh)
    rows = local_rows(sharding, global_batch_size)   # which rows this process loads
    batch = global_batch(local_batch_dict, sharding)

On managed clusters (Cloud TPU pods, SLURM, ...) JAX can discover everything
itself: set CWM_DISTRIBUTED=auto (or pass auto=True) to call
`jax.distributed.initialize()` without arguments.
"""

from __future__ import annotations

import math
import os
from typing import Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding

ENV_COORDINATOR = "CWM_COORDINATOR"
ENV_NUM_PROCESSES = "CWM_NUM_PROCESSES"
ENV_PROCESS_ID = "CWM_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "CWM_LOCAL_DEVICE_IDS"
ENV_AUTO = "CWM_DISTRIBUTED"


def _int_env(env: Mapping[str, str], name: str) -> Optional[int]:
  raw = env.get(name)
  if raw is None or raw.strip() == "":
    return None
  try:
    return int(raw)
  except ValueError:
    raise ValueError(f"Environment variable {name}={raw!r}: expected an integer.") from None


def _ids_env(env: Mapping[str, str], name: str) -> Optional[list[int]]:
  raw = env.get(name)
  if raw is None or raw.strip() == "":
    return None
  try:
    return [int(x) for x in raw.split(",") if x.strip()]
  except ValueError:
    raise ValueError(f"Environment variable {name}={raw!r}: expected comma-separated device ids "
                     "such as '0,1,2,3'.") from None


def resolve_settings(coordinator_address: Optional[str] = None,
                     num_processes: Optional[int] = None,
                     process_id: Optional[int] = None,
                     local_device_ids: Optional[Sequence[int]] = None,
                     env: Optional[Mapping[str, str]] = None) -> Optional[dict]:
  """Arguments for `jax.distributed.initialize`, or None for a single process.

  Explicit arguments win over the CWM_* environment variables. Raises a
  ValueError naming what is missing or out of range when the settings are
  partial (e.g. a coordinator but no process id).
  """
  env = os.environ if env is None else env
  settings = {
      "coordinator_address": coordinator_address or env.get(ENV_COORDINATOR) or None,
      "num_processes": num_processes if num_processes is not None else _int_env(env, ENV_NUM_PROCESSES),
      "process_id": process_id if process_id is not None else _int_env(env, ENV_PROCESS_ID),
  }
  ids = list(local_device_ids) if local_device_ids is not None else _ids_env(env, ENV_LOCAL_DEVICE_IDS)
  names = {"coordinator_address": ENV_COORDINATOR, "num_processes": ENV_NUM_PROCESSES,
           "process_id": ENV_PROCESS_ID}
  given = {k for k, v in settings.items() if v is not None}
  if not given:
    if ids is not None:
      raise ValueError(f"local_device_ids ({ENV_LOCAL_DEVICE_IDS}) given without a multi-process "
                       f"setup: also set {', '.join(names.values())}.")
    return None
  n = settings["num_processes"]
  if n is not None and n < 1:
    raise ValueError(f"num_processes ({ENV_NUM_PROCESSES})={n}: expected >= 1.")
  if n == 1 and settings["process_id"] in (None, 0):
    return None  # one process: nothing to coordinate
  missing = [f"{k} ({names[k]})" for k in names if settings[k] is None]
  if missing:
    have = ", ".join(f"{k}={settings[k]!r}" for k in names if settings[k] is not None)
    raise ValueError(f"Partial multi-process settings ({have}): missing {', '.join(missing)}. "
                     "Give all three, or none for a single process.")
  pid = settings["process_id"]
  if not 0 <= pid < n:
    raise ValueError(f"process_id ({ENV_PROCESS_ID})={pid}: expected 0 <= process_id < "
                     f"num_processes={n}.")
  if ":" not in settings["coordinator_address"]:
    raise ValueError(f"coordinator_address ({ENV_COORDINATOR})={settings['coordinator_address']!r}: "
                     "expected host:port, e.g. 10.0.0.1:1234.")
  if ids is not None:
    settings["local_device_ids"] = ids
  return settings


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           local_device_ids: Optional[Sequence[int]] = None,
                           *, auto: Optional[bool] = None, cpu_collectives: str = "gloo",
                           env: Optional[Mapping[str, str]] = None) -> bool:
  """Joins this process to a multi-process JAX job; returns whether it did.

  Must run before anything touches a JAX device. Without settings (arguments
  or CWM_* variables) it does nothing, so single-process runs need no flags.
  CPU processes exchange collectives through `cpu_collectives` (gloo), which
  is switched on here before the backend starts; GPU/TPU ignore that option.
  """
  env = os.environ if env is None else env
  if jax.distributed.is_initialized():
    return True
  settings = resolve_settings(coordinator_address, num_processes, process_id,
                              local_device_ids, env)
  auto = (env.get(ENV_AUTO, "").lower() == "auto") if auto is None else auto
  if settings is None and not auto:
    return False
  jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  jax.distributed.initialize(**(settings or {}))
  return True


def _dim_split(sharding: NamedSharding, ndim: int) -> list[tuple[int, int]]:
  """Per dimension: (shards over the whole mesh, distinct shards on this process)."""
  mesh = sharding.mesh
  spec = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))
  names = list(mesh.axis_names)
  local = {d.id for d in mesh.local_devices}
  coords = [c for c, d in np.ndenumerate(mesh.devices) if d.id in local]
  out = []
  for entry in spec[:ndim]:
    axes = () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))
    total = math.prod(mesh.shape[a] for a in axes)
    distinct = len({tuple(c[names.index(a)] for a in axes) for c in coords})
    out.append((total, distinct))
  return out


def global_shape_of(local_shape: Sequence[int], sharding: NamedSharding,
                    what: str = "array") -> tuple[int, ...]:
  """The global shape whose process-local part has `local_shape` under `sharding`.

  A dimension sharded over mesh axes of which this process holds `m` of `n`
  shards grows by n / m; the local size must split evenly into its `m` shards.
  """
  shape = []
  for i, (size, (total, distinct)) in enumerate(zip(local_shape, _dim_split(sharding, len(local_shape)))):
    if size % distinct:
      raise ValueError(
          f"{what}: process-local dimension {i} has size {size}, which does not split evenly "
          f"over the {distinct} shard(s) this process holds of mesh axes "
          f"{sharding.spec[i] if i < len(sharding.spec) else None} (sharding {sharding.spec}); "
          f"use a multiple of {distinct}.")
    shape.append(size * total // distinct)
  return tuple(shape)


def local_rows(sharding: NamedSharding, global_batch_size: int) -> slice:
  """The rows [start, stop) of the global batch that this process must load."""
  ndim = max(len(sharding.spec), 1)
  split = _dim_split(sharding, ndim)
  total, distinct = split[0]
  if global_batch_size % total:
    raise ValueError(f"global batch size {global_batch_size} is not divisible by the {total} "
                     f"batch shards of sharding {sharding.spec}.")
  shape = (global_batch_size,) + tuple(t for t, _ in split[1:])
  index_map = sharding.addressable_devices_indices_map(shape)
  starts = sorted({idx[0].indices(global_batch_size)[0] for idx in index_map.values()})
  per_shard = global_batch_size // total
  start, stop = starts[0], starts[-1] + per_shard
  if stop - start != distinct * per_shard:
    raise ValueError(f"sharding {sharding.spec}: this process's batch shards are not contiguous "
                     f"(starts {starts}); order the mesh so each process holds adjacent rows.")
  return slice(start, stop)


def global_batch(local_batch, sharding, global_shapes=None):
  """Process-local arrays (a pytree of numpy/jax arrays) -> global `jax.Array`s.

  `sharding` is one NamedSharding for every leaf or a matching tree of them.
  Global shapes are inferred from the sharding (or given as a matching tree of
  tuples); shapes that do not split over the local devices raise a ValueError
  naming the leaf. With one process this is a plain `device_put`.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(local_batch)
  if isinstance(sharding, NamedSharding):
    shardings = [sharding] * len(leaves)
  else:
    shardings = treedef.flatten_up_to(sharding)
  shapes = [None] * len(leaves) if global_shapes is None else treedef.flatten_up_to(global_shapes)
  out = []
  for (path, x), s, shape in zip(leaves, shardings, shapes):
    name = "batch" + jax.tree_util.keystr(path)
    x = np.asarray(x)
    inferred = global_shape_of(x.shape, s, name)
    if shape is not None and tuple(shape) != inferred:
      raise ValueError(f"{name}: process-local shape {x.shape} under sharding {s.spec} makes a "
                       f"global shape {inferred}, but {tuple(shape)} was expected (each of the "
                       f"{jax.process_count()} processes must feed its own share).")
    out.append(jax.make_array_from_process_local_data(s, x, inferred))
  return jax.tree_util.tree_unflatten(treedef, out)
