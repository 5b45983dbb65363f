"""Device mesh, the logical-axis rules table and sharding helpers."""

from cwm_jax.sharding.mesh import MESH_AXES, MeshConfig, make_mesh
from cwm_jax.sharding.rules import LOGICAL_RULES, constrain, logical_to_spec, named_sharding, tree_shardings
from cwm_jax.sharding.partition import (batch_sharding, batch_tree_sharding, check_batch_shape, mirror_param_shardings, opt_state_shardings,
                                        param_shardings, replicated)
