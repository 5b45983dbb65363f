"""The device mesh: axes `data`, `fsdp`, `tensor`, `context`, built from config.

Sizes are given per slice (`ici`, fast interconnect) and across slices (`dcn`);
one size of each may be -1, meaning "the devices that are left". On one host
(or CPU tests with fake devices) only `ici` matters.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor", "context")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh axis sizes within a slice (`ici_*`) and across slices (`dcn_*`)."""

  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  context: int = 1
  dcn_data: int = 1
  dcn_fsdp: int = 1
  dcn_tensor: int = 1
  dcn_context: int = 1

  def ici_shape(self) -> tuple[int, ...]:
    return (self.data, self.fsdp, self.tensor, self.context)

  def dcn_shape(self) -> tuple[int, ...]:
    return (self.dcn_data, self.dcn_fsdp, self.dcn_tensor, self.dcn_context)


def resolve_shape(shape: Sequence[int], n_devices: int, what: str) -> tuple[int, ...]:
  """Fills in the one -1 entry so that the product equals `n_devices`."""
  shape = list(shape)
  if any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"{what} mesh {dict(zip(MESH_AXES, shape))}: sizes must be positive or -1.")
  unknown = [i for i, s in enumerate(shape) if s == -1]
  if len(unknown) > 1:
    raise ValueError(f"{what} mesh {dict(zip(MESH_AXES, shape))}: at most one axis may be -1.")
  known = math.prod(s for s in shape if s != -1)
  if unknown:
    if n_devices % known:
      raise ValueError(f"{what} mesh {dict(zip(MESH_AXES, shape))}: {n_devices} devices are not "
                       f"divisible by the fixed axes' product {known}.")
    shape[unknown[0]] = n_devices // known
  if math.prod(shape) != n_devices:
    raise ValueError(f"{what} mesh {dict(zip(MESH_AXES, shape))} holds {math.prod(shape)} devices, "
                     f"but {n_devices} are available.")
  return tuple(shape)


def make_mesh(config: Optional[MeshConfig] = None, devices=None) -> Mesh:
  """A `Mesh` over all (or the given) devices with Auto axes named MESH_AXES."""
  config = config or MeshConfig()
  devices = list(jax.devices() if devices is None else devices)
  n_slices = len({getattr(d, "slice_index", 0) for d in devices})
  dcn = resolve_shape(config.dcn_shape(), n_slices, "dcn")
  ici = resolve_shape(config.ici_shape(), len(devices) // n_slices, "ici")
  if n_slices > 1:
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
  elif len(devices) == len(jax.devices()):
    grid = mesh_utils.create_device_mesh(ici, devices)
  else:
    grid = np.asarray(devices).reshape(ici)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
