import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from cwm_jax.model import PRESETS, get_preset, param_axes, param_specs
from cwm_jax.sharding import (LOGICAL_RULES, MESH_AXES, MeshConfig, constrain, logical_to_spec,
                              make_mesh, param_shardings)


def _leaves(tree):
  return jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, tuple))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_param_axis_has_a_rule(name):
  axes = {a for leaf in _leaves(param_axes(get_preset(name))) for a in leaf}
  assert axes <= set(LOGICAL_RULES), axes - set(LOGICAL_RULES)
  for target in LOGICAL_RULES.values():
    names = () if target is None else (target,) if isinstance(target, str) else target
    assert set(names) <= set(MESH_AXES)


# (data, fsdp, tensor, context) meshes over the 8 test devices; tensor only up
# to the preset's KV heads, which it must divide.
MESHES = [(8, 1, 1, 1), (1, 8, 1, 1), (2, 4, 1, 1), (2, 2, 2, 1), (1, 2, 2, 2),
          (1, 1, 8, 1), (1, 2, 4, 1)]


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_param_specs_divide_on_meshes(name, shape):
  cfg = get_preset(name)
  if cfg.n_kv_heads % shape[2]:
    pytest.skip(f"{name} has {cfg.n_kv_heads} KV heads: tensor={shape[2]} does not apply")
  mesh = make_mesh(MeshConfig(*shape))
  specs = param_specs(cfg)
  shardings = param_shardings(mesh, cfg)
  flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: hasattr(x, "axes"))
  for spec, sharding in zip(flat_specs, jax.tree.leaves(shardings)):
    sharding.shard_shape(spec.shape)  # raises if a dimension is not divisible
  # Weight matrices are really split when the mesh has fsdp or tensor axes.
  q_spec = shardings["layers"]["q"].spec
  assert q_spec[1] == ("fsdp" if shape[1] > 1 else None)
  assert q_spec[2] == ("tensor" if shape[2] > 1 else None)


def test_size_one_axes_are_dropped():
  mesh = make_mesh(MeshConfig(data=8))
  assert logical_to_spec(("vocab", "embed"), mesh) == P(None, None)
  assert logical_to_spec(("batch", "length"), mesh) == P("data", None)
  mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=1, context=2))
  assert logical_to_spec(("batch", "length", "act_heads", None), mesh) == \
      P(("data", "fsdp"), "context", None, None)
  # Without a mesh, every rule applies.
  assert logical_to_spec(("batch", "length")) == P(("data", "fsdp"), "context")


def test_a_mesh_axis_is_used_once_per_spec():
  mesh = make_mesh(MeshConfig(data=2, tensor=4))
  assert logical_to_spec(("q_heads", "kv_heads"), mesh) == P("tensor", None)


def test_unknown_logical_axis_is_a_clear_error():
  with pytest.raises(ValueError, match="'heads' has no sharding rule"):
    logical_to_spec(("batch", "heads"))


@pytest.mark.parametrize("config, expected", [
    (MeshConfig(), (8, 1, 1, 1)),
    (MeshConfig(data=-1, fsdp=2), (4, 2, 1, 1)),
    (MeshConfig(data=2, fsdp=-1, tensor=2), (2, 2, 2, 1)),
    (MeshConfig(data=1, tensor=2, context=-1), (1, 1, 2, 4)),
])
def test_make_mesh_resolves_minus_one(config, expected):
  mesh = make_mesh(config)
  assert mesh.axis_names == MESH_AXES
  assert tuple(mesh.shape[a] for a in MESH_AXES) == expected
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_make_mesh_on_a_subset_of_devices():
  mesh = make_mesh(MeshConfig(data=-1, tensor=2), devices=jax.devices()[:4])
  assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "tensor": 2, "context": 1}


@pytest.mark.parametrize("config, match", [
    (MeshConfig(data=-1, fsdp=-1), "at most one axis may be -1"),
    (MeshConfig(data=-1, fsdp=3), "not divisible by the fixed axes' product 3"),
    (MeshConfig(data=2, fsdp=2), "holds 4 devices, but 8 are available"),
    (MeshConfig(data=0), "sizes must be positive or -1"),
    (MeshConfig(dcn_data=2), "dcn mesh .* holds 2 devices, but 1 are available"),
])
def test_make_mesh_errors(config, match):
  with pytest.raises(ValueError, match=match):
    make_mesh(config)


def test_constrain_is_a_noop_without_a_mesh_and_shards_with_one():
  x = jnp.ones((8, 4, 6))
  assert constrain(x, ("batch", "length", "act_embed")) is x

  @jax.jit
  def f(x):
    return constrain(x * 2, ("batch", "length", "act_embed"))

  mesh = make_mesh(MeshConfig(data=2, fsdp=2, context=2))
  with jax.set_mesh(mesh):
    y = f(x)
  assert y.sharding.spec == P(("data", "fsdp"), "context")
